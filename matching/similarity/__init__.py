"""Similarity: scores of query x gallery pairs from features (pair head, cosine, keypoints) and their calibration."""

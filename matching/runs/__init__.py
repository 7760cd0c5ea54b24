"""Runs: trained (and untrained) members applied to a catalog, their cached features and score-matrix files."""

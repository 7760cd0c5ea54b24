"""Ranking: score matrices to five labels with new_whale, post-processing, blends, weights and pseudo-labels."""

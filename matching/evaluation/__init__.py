"""Evaluation: submissions and truth files, MAP@5 scorecards, baselines and the one-shot protocol."""

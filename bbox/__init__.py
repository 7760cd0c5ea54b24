"""The fluke box detector: k-fold training, prediction with flip TTA and fold averaging, boxes.csv."""

"""Review: the static match-review page (rows, plots, thumbnails, its script and style in static/)."""

"""The competition's tables: image ids, labels, folds, the metric and submissions (pandas, no torch)."""

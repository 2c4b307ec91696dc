"""Accuracy and robustness: confusion-matrix metrics, seg-eval, the corruptions and seg-robustness, plots."""

"""Offline training: augmentation, losses, metrics and the training command."""

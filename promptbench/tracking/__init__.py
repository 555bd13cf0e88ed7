"""Experiment tracking: Lightning loggers (CSV, TensorBoard, W&B) for a cell and syncing offline W&B runs."""

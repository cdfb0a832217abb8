"""Training: the Lightning task, checkpoints and the train/evaluate/predict API."""

"""Training: the shared loop, checkpoints, cached features, and the models' training tasks."""

"""Training engine: optimizers, learning-rate schedules and the training loop."""

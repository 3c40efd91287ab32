"""Training: the step, the loop, the optimizer, training checkpoints and progress reporting."""

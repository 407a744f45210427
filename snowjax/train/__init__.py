"""Training: learning-rate schedules, the optimizer, metrics (tokens/s, MFU), the step and the loop."""

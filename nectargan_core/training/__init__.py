"""Training schedules (and, in later issues, the training loop)."""

"""MLflow tracking and the model registry (attached to the trainer through its callbacks)."""

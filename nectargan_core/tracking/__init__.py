"""MLflow: one Tracker per process, the training callback, the model registry, provenance and run comparison."""

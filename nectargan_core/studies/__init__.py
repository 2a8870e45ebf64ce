"""Studies over settings: sweeps of a grid or of named weightings, trained as MLflow child runs."""

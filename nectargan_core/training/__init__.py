"""The training engine: the optimisation step, the epoch loop, checkpoints, records and schedules."""

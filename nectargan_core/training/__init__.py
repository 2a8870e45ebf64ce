"""The training engine: the optimisation step, the epoch loop, where a run starts, records and schedules."""

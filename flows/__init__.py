"""Prefect orchestration of the nectargan_core stages: the pipeline flow (`pipeline.py`), its
deployments (`serve.py`) and a one-off run (`python -m flows`)."""

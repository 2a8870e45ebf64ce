"""`python -m flows`: one run of the pipeline flow with params.yaml (Prefect starts a temporary
local server when PREFECT_API_URL is not set)."""

from flows.pipeline import pipeline

if __name__ == "__main__":
    pipeline()

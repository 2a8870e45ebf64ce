"""Serve the deployments of the pipeline flow from this machine (needs a Prefect server).

    make serve     # starts `prefect server start` on 127.0.0.1:4200, then this script

Deployments (one flow run at a time each: one GPU):
  nectargan-pipeline/train             on demand, defaults = params.yaml
  nectargan-pipeline/nightly-continue  02:00 every night: continue models:/NAME@latest for more epochs
  nectargan-sweep/sweep                on demand: a grid of settings as MLflow child runs under a parent
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from pathlib import Path

from prefect import serve
from prefect.settings import PREFECT_API_URL

from flows.pipeline import pipeline, sweep_flow
from nectargan_core.settings import load_settings


def deployments(params_file: Path, nightly_cron: str = "0 2 * * *", nightly_epochs: int = 5) -> list:
    """The deployments, with the settings of ``params_file`` as default parameters."""
    settings = load_settings(params_file)
    defaults = {"settings": settings.model_dump(mode="json"), "project_dir": str(params_file.resolve().parent)}
    train = pipeline.to_deployment(
        name="train",
        parameters=defaults,
        concurrency_limit=1,
        description="Validate, train, export examples and evaluate with the given settings.",
        tags=["nectargan"],
    )
    nightly = pipeline.to_deployment(
        name="nightly-continue",
        cron=nightly_cron,
        parameters={
            **defaults,
            "continue_from": f"models:/{settings.tracking.registered_model}@latest",
            "more_epochs": nightly_epochs,
        },
        concurrency_limit=1,
        description="Every night: continue the newest registered checkpoint for more epochs.",
        tags=["nectargan", "scheduled"],
    )
    sweep = sweep_flow.to_deployment(
        name="sweep",
        parameters={"grid": ["train.loss.l1=50,100"], "project_dir": defaults["project_dir"]},
        concurrency_limit=1,
        description="Train each combination of the grid (one after another) and report them on a parent run.",
        tags=["nectargan", "sweep"],
    )
    return [train, nightly, sweep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--nightly-cron", default="0 2 * * *")
    parser.add_argument("--nightly-epochs", type=int, default=5)
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for the Prefect API to answer")
    args = parser.parse_args()
    if args.wait:
        _wait_for_api(args.wait)
    serve(*deployments(args.params, args.nightly_cron, args.nightly_epochs))


def _wait_for_api(seconds: float) -> None:
    """`make serve` starts the server in the background; serve once its API answers."""
    url = PREFECT_API_URL.value()
    if not url:
        raise SystemExit("PREFECT_API_URL is not set: start `prefect server start` and point it there")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=2):
                print(f"Prefect API at {url}; UI at {url.removesuffix('/api')}")
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"no Prefect API at {url} after {seconds:.0f}s; see prefect-server.log")


if __name__ == "__main__":
    main()

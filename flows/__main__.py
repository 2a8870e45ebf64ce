"""`python -m flows`: one run of the pipeline flow with params.yaml (with a temporary local Prefect
server, in a session of its own, when PREFECT_API_URL is not set).

A failure ends with one line (the traceback with --debug). Ctrl+C or SIGTERM stops training after its
step (outside training SIGTERM unwinds at once); either way the training run is marked KILLED and the
temporary server is stopped on the way out.
"""

import argparse
import signal
import sys

from nectargan_core.errors import exit_code


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM outside training (which stops after its step) unwinds at once, like Ctrl+C twice."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__.splitlines()[0])
    parser.add_argument("--continue-from", default=None, help="a checkpoint path or models:/NAME@ALIAS to continue")
    parser.add_argument("--project-dir", default=".", help="the project folder holding params.yaml")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)

    from flows.pipeline import pipeline
    from flows.temporary_server import temporary_server
    from nectargan_core.training.interrupt import stop_at_step_boundary

    def run() -> int:  # Ctrl+C (SIGINT to the terminal's process group) stops training after a step
        with stop_at_step_boundary(signals=(signal.SIGINT,)), temporary_server():
            pipeline(continue_from=args.continue_from, project_dir=args.project_dir)
        return 0

    return exit_code(
        run,
        args.debug,
        "the MLflow run is marked KILLED; continue with `python -m flows --continue-from "
        "<train.output_dir>/checkpoints` or `nectargan train -s train.continue_train=true`",
    )


if __name__ == "__main__":
    sys.exit(main())

"""`nectargan train` with train.nproc_per_node > 1: start that many training processes on this
machine through torchrun's own launcher (torch.distributed.run), each running the same command.

The processes find rank 0 through a local rendezvous (--standalone). For several machines, run
torchrun yourself on each (the README has the commands); a process under torchrun never launches again.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from nectargan_core.distributed import DistributedError
from nectargan_core.layout import RunPaths
from nectargan_core.settings import Settings


def _failure(exc: Exception) -> str:
    """One line for torchrun's ChildFailedError: which process ended how, the first to fail first."""
    failures = getattr(exc, "failures", {}) or {}
    parts = []
    # The processes torchrun stopped itself (SIGTERM) come after the one that failed on its own.
    first = lambda item: (item[1].exitcode == -signal.SIGTERM, item[1].timestamp, item[0])  # noqa: E731
    for rank, failure in sorted(failures.items(), key=first):
        code = failure.exitcode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        parts.append(f"rank {rank} (pid {failure.pid}) ended with {how}")
    return "; ".join(parts) or str(exc)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``nectargan <argv>`` in ``nproc`` processes; returns the exit code for the launcher."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "nectargan_core.cli", *argv]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        raise DistributedError(
            f"a training process failed: {_failure(exc)}; the others were stopped. The first error above "
            "says why; continue with -s train.continue_train=true once it is fixed"
        ) from None
    except SignalException as exc:
        print(f"interrupted ({exc.sigval.name}): the training processes were stopped", file=sys.stderr)
        raise KeyboardInterrupt from None
    return 0


def train_in_processes(settings: Settings, project_dir: Path, tags: dict[str, str], register: bool = True) -> Path:
    """A host that trains in-process (the Prefect train task) hands a multi-process training to
    `nectargan train` in ``project_dir``, which launches torchrun; returns the run's summary.

    The settings travel as a params file, so the processes train exactly what the host was given;
    stopping the host stops them.
    """
    with tempfile.TemporaryDirectory(prefix="nectargan-launch-") as folder:
        params = Path(folder) / "params.json"
        params.write_text(json.dumps(settings.model_dump(mode="json")))
        command = [sys.executable, "-m", "nectargan_core.cli", "train", "--params", str(params)]
        command += [arg for key, value in tags.items() for arg in ("--tag", f"{key}={value}")]
        command += [] if register else ["--no-register"]
        process = subprocess.Popen(command, cwd=project_dir)
        try:
            code = process.wait()
        except BaseException:
            process.terminate()  # its launcher stops the training processes at a step boundary
            process.wait()
            raise
    if code != 0:
        raise DistributedError(
            f"`nectargan train` with train.nproc_per_node={settings.train.nproc_per_node} failed (exit code "
            f"{code}); its error is in the log above"
        )
    return RunPaths.of(settings).summary

"""One way to start a training, for the CLI, the DVC stage, the Prefect tasks and sweeps.

``start_training`` trains in this process, or with train.nproc_per_node > 1 launches that many
processes on this machine through torchrun's own launcher (a local rendezvous, --standalone); each
of them runs this module. ``spawn`` trains in a child process (a sweep's children side by side)
and returns its typed result. Both hand the training over as a request file and read the result
file rank 0 writes, so the processes train exactly what the host was given. For several machines,
run torchrun yourself on each (docs/gpus.md has the commands); a process under torchrun never
launches again.

Run as ``python -m nectargan_core.launch REQUEST RESULT``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nectargan_core.device import resolve_device
from nectargan_core.distributed import DistributedError, World, process_group
from nectargan_core.errors import describe_failure, show_logs
from nectargan_core.files import write_json_atomic
from nectargan_core.settings import Settings
from nectargan_core.stages import TrainStageResult, train_stage
from nectargan_core.tracking.registry import RegisteredCheckpoint
from nectargan_core.tracking.tracker import Tracker
from nectargan_core.training.callbacks import ConsoleReporter, TrainingCallback
from nectargan_core.training.interrupt import stop_at_step_boundary


class TrainingFailed(RuntimeError):
    """A training in other processes failed; the message is its own one-line error."""


@dataclass(frozen=True)
class TrainRequest:
    """What to train: the settings, extra tags of the MLflow run, whether to register (sweep children
    do not)."""

    settings: Settings
    tags: dict[str, str] = field(default_factory=dict)
    register: bool = True

    def write(self, path: Path, project_dir: Path) -> Path:
        """The hand-over file of the processes that train it in ``project_dir``."""
        settings = self.settings.model_dump(mode="json")
        payload = {"settings": settings, "tags": self.tags, "register": self.register, "project": str(project_dir)}
        return write_json_atomic(path, payload)

    @classmethod
    def read(cls, path: Path) -> tuple[TrainRequest, Path]:
        payload = json.loads(path.read_text())
        request = cls(Settings.model_validate(payload["settings"]), payload["tags"], payload["register"])
        return request, Path(payload["project"])


def start_training(
    request: TrainRequest,
    project_dir: Path,
    tracker: Tracker | None = None,
    callbacks: Sequence[TrainingCallback] = (),
    parent: RegisteredCheckpoint | None = None,
) -> TrainStageResult | None:
    """Train as requested: in this process, or through torchrun when train.nproc_per_node > 1 (its
    processes fetch a registered parent themselves). Under torchrun every process calls this; rank 0
    returns the result, the others None. ``tracker`` (rank 0's) is connected here when not given."""
    settings = request.settings
    world = World.from_env()  # torchrun's variables, read once, here
    if settings.train.nproc_per_node > 1 and not world.launched:
        return _torchrun(request, project_dir)
    with process_group(world, resolve_device(settings.train, world)):
        if not world.is_main:  # the other ranks never touch the tracking store
            train_stage(settings, None, project_dir, tags=request.tags, register=request.register, world=world)
            return None
        tracker = tracker or Tracker.connect(settings.tracking, project_dir)
        return train_stage(settings, tracker, project_dir, callbacks, request.tags, parent, request.register, world)


def spawn(request: TrainRequest, project_dir: Path) -> TrainStageResult:
    """Train in a child process (which launches torchrun itself when asked); raises ``TrainingFailed``
    with the child's own error. Stopping this process stops the child at a step boundary."""
    with tempfile.TemporaryDirectory(prefix="nectargan-spawn-") as folder:
        request_file = request.write(Path(folder) / "request.json", project_dir)
        result_file = Path(folder) / "result.json"
        command = [sys.executable, "-m", __name__, str(request_file), str(result_file)]
        process = subprocess.Popen(command, cwd=project_dir)
        try:
            code = process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
        return _read_result(result_file, f"the training process ended with exit code {code}")


def _torchrun(request: TrainRequest, project_dir: Path) -> TrainStageResult:
    """train.nproc_per_node processes of this module, under torchrun's launcher in this process."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    nproc = request.settings.train.nproc_per_node
    with tempfile.TemporaryDirectory(prefix="nectargan-launch-") as folder:
        request_file = request.write(Path(folder) / "request.json", project_dir)
        result_file = Path(folder) / "result.json"
        args = get_args_parser().parse_args(
            ["--standalone", f"--nproc-per-node={nproc}", "--module", __name__, str(request_file), str(result_file)]
        )
        try:
            run(args)
        except ChildFailedError as exc:
            raise DistributedError(
                f"a training process failed: {_failures(exc)}; the others were stopped. The first error above "
                "says why; continue with -s train.continue_train=true once it is fixed"
            ) from None
        except SignalException as exc:
            print(f"interrupted ({exc.sigval.name}): the training processes were stopped", file=sys.stderr)
            raise KeyboardInterrupt from None
        return _read_result(result_file, f"torchrun with train.nproc_per_node={nproc} ended")


def _failures(exc: Exception) -> str:
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


def _write_result(path: Path, result: TrainStageResult | None = None, error: str | None = None) -> None:
    fields = dataclasses.asdict(result) if result else None
    if fields:
        fields = {key: str(value) if isinstance(value, Path) else value for key, value in fields.items()}
    write_json_atomic(path, {"result": fields, "error": error})


def _read_result(path: Path, ended: str) -> TrainStageResult:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        raise TrainingFailed(f"{ended} without a result; its log above says why") from None
    if payload["error"] is not None:
        raise TrainingFailed(payload["error"])
    fields = payload["result"]
    checkpoint = fields["checkpoint"]
    return TrainStageResult(
        run_id=fields["run_id"],
        checkpoint=Path(checkpoint) if checkpoint else None,
        last_epoch=fields["last_epoch"],
        model_version=fields["model_version"],
        summary=Path(fields["summary"]),
    )


def main(argv: list[str] | None = None) -> int:
    """A spawned or torchrun-started training process: train the request, write the result."""
    request_file, result_file = (Path(arg) for arg in (argv or sys.argv[1:]))
    show_logs()
    try:
        with stop_at_step_boundary(follow_launcher=True):  # also when the launching process dies
            request, project_dir = TrainRequest.read(request_file)
            result = start_training(request, project_dir, callbacks=[ConsoleReporter()])
    except Exception as exc:
        message = describe_failure(exc)
        _write_result(result_file, error=message)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result is not None:
        _write_result(result_file, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

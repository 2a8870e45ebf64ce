"""Where a training run starts: fresh (setting an earlier run aside) or continued from a checkpoint.

Continuing restores the full state and goes on at the next epoch; a changed architecture is
refused, other changed settings are listed. A fresh run never builds on persisted outputs: it
moves them to ``previous/``, so a forgotten ``continue_train`` costs nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nectargan_core.checkpoint import (
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    require_full_state,
)
from nectargan_core.files import write_atomic
from nectargan_core.layout import RunPaths, strip_key
from nectargan_core.settings import Settings, flatten_dotted
from nectargan_core.training.records import truncate_after
from nectargan_core.training.saving import after_full_state
from nectargan_core.training.summary import registered_versions

log = logging.getLogger(__name__)


def architecture(settings: Settings) -> dict[str, Any]:
    """The settings a checkpoint's tensors depend on; continuing with others is refused."""
    return {
        "model": settings.model.model_dump(mode="json"),
        "data.input_channels": settings.data.input_channels,
        "data.output_channels": settings.data.output_channels,
        "data.crop_size": settings.data.crop_size,
    }


def architecture_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: checkpoint X, settings Y' for every architecture key that differs."""
    old, new = flatten_dotted(saved), flatten_dotted(current)
    return [
        f"{key}: checkpoint {old.get(key)!r}, settings {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings (other than the continue keys themselves) that differ from the checkpoint's run."""
    ignore = ("train.continue_train", "train.load_epoch", "train.continue_from")
    old, new = flatten_dotted(saved), flatten_dotted(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in ignore and old.get(key) != new.get(key)
    ]


@dataclass(frozen=True)
class StartPoint:
    """The first epoch to train, and the state and checkpoint it continues from (None when fresh).

    ``warm_start`` holds the network weights a fresh run starts from (``train.warm_start``).
    """

    epoch: int
    state: dict[str, Any] | None = None
    checkpoint: Path | None = None
    changed: list[str] = field(default_factory=list)
    warm_start: dict[str, Any] | None = None


def _check_architecture(path: Path, state: dict[str, Any], settings: Settings, what: str) -> None:
    mismatch = architecture_mismatch(state["architecture"], architecture(settings))
    if mismatch:
        raise CheckpointError(
            f"{path} was trained with another architecture, so it cannot {what}:\n  "
            + "\n  ".join(mismatch)
            + "\nRestore these settings, or start a fresh run with train.continue_train: false."
        )


def _load_resume_state(settings: Settings, paths: RunPaths) -> tuple[dict[str, Any], Path]:
    cfg = settings.train
    source = cfg.continue_from or str(paths.checkpoints)
    if source.startswith("models:/"):
        raise CheckpointError(
            f"train.continue_from={source}: registered models are resolved by the pipeline (MLflow registry); "
            "the training engine takes a local checkpoint path"
        )
    path = find_checkpoint(Path(source), cfg.load_epoch)
    state = load_checkpoint(path)
    require_full_state(path, state)
    _check_architecture(path, state, settings, "continue")
    return state, path


def set_aside_previous_run(paths: RunPaths) -> Path | None:
    """Move an earlier run's outputs to ``output_dir/previous/``.

    An older run already there is replaced only when it was registered (its final state lives in
    the registry); otherwise nothing is moved and the error names it, so no run is ever lost.
    """
    present = [p for p in paths.records if p.exists()]
    if not present:
        return None
    occupied = paths.previous.is_dir() and any(paths.previous.iterdir())
    if occupied and not registered_versions(RunPaths(paths.previous).summary):
        raise CheckpointError(
            f"{paths.previous} holds an earlier run that was never registered, and this fresh run would "
            f"replace it with the run now in {paths.root}: move {paths.previous} out of {paths.root} (or "
            "delete it), or continue the run with train.continue_train: true. Nothing was moved."
        )
    shutil.rmtree(paths.previous, ignore_errors=True)
    paths.previous.mkdir(parents=True)
    for path in present:
        os.replace(path, paths.previous / path.name)
    return paths.previous


def drop_epochs_after(paths: RunPaths, epoch: int) -> None:
    """Continuing this run from an earlier epoch: the later records belong to the branch it replaces."""
    for number, path in list_checkpoints(paths.snapshots).items():
        if number > epoch:
            path.unlink()
    for number, path in paths.best_candidates().items():
        if number > epoch:
            path.unlink()  # a best of an epoch after the full state: the continue validates it again
    if paths.best.exists() and load_checkpoint(paths.best, mmap=True)["epoch"] > epoch:
        paths.best.unlink()  # chosen on the branch being replaced; the continue chooses again
    if paths.examples.is_dir():
        for path in paths.examples.iterdir():
            key = strip_key(path.name)
            if key is not None and key[0] > epoch:
                path.unlink()
    truncate_after(paths.loss_log, epoch)
    truncate_after(paths.epochs, epoch)


def remove_stale_temp_files(paths: RunPaths) -> list[Path]:
    """Temp files a killed run left behind (an atomic write that never got to its rename)."""
    folders = (paths.root, paths.checkpoints, paths.snapshots, paths.examples)
    stale = [p for folder in folders if folder.is_dir() for p in folder.glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink()
    return stale


def start_point(settings: Settings, paths: RunPaths, started_before: bool = False) -> StartPoint:
    """Decide where training starts and make the output folder agree with it.

    Continuing in the run's own folder drops the records of later epochs; anything else (a fresh
    run, or continuing from a checkpoint elsewhere) sets the folder's earlier run aside. A run
    killed before its first checkpoint (``started_before``: its lock file was there) continues
    from epoch 1, which is the same as the run that never stopped.
    """
    remove_stale_temp_files(paths)
    cfg = settings.train
    nothing_saved = not paths.latest.exists() and not list_checkpoints(paths.snapshots)
    if cfg.continue_train and cfg.continue_from is None and nothing_saved and started_before:
        log.warning("%s: the run stopped before its first checkpoint; training it from epoch 1", paths.root)
        drop_epochs_after(paths, 0)
        return StartPoint(1)
    start = StartPoint(1)
    if settings.train.warm_start is not None:
        path = Path(settings.train.warm_start)
        if paths.previous.resolve() in path.resolve().parents:
            raise CheckpointError(
                f"train.warm_start={path} lies in {paths.previous}, which this run would replace; copy it out of "
                f"{paths.root} first"
            )
        state = load_checkpoint(find_checkpoint(path, "latest"))
        _check_architecture(path, state, settings, "warm-start this run")
        start = StartPoint(1, warm_start=state)
    if settings.train.continue_train:
        state, path = _load_resume_state(settings, paths)
        start = StartPoint(
            int(state["epoch"]) + 1, state, path, changed_settings(state["settings"], settings.model_dump(mode="json"))
        )
        if start.epoch > settings.train.total_epochs + 1:  # at the total exactly: nothing to train, only finish
            raise CheckpointError(
                f"{path} is at epoch {state['epoch']}, past the configured total of {settings.train.total_epochs} "
                "(train.generator.epochs + epochs_decay): raise the total to train on from it"
            )
    own_folders = (paths.checkpoints.resolve(), paths.snapshots.resolve())
    if start.checkpoint is not None and start.checkpoint.parent.resolve() in own_folders:
        drop_epochs_after(paths, start.epoch - 1)
        if start.checkpoint.resolve() != paths.latest.resolve():  # a full snapshot: it is the latest state now
            write_atomic(paths.latest, lambda tmp: shutil.copyfile(start.checkpoint, tmp), durable=True)
        after_full_state(settings, paths, start.state, paths.latest, rewrite=False)  # a kill may have cut them
        return start
    if start.checkpoint is not None and paths.previous.resolve() in start.checkpoint.resolve().parents:
        raise CheckpointError(
            f"{start.checkpoint} lies in {paths.previous}, which this run would replace; copy it out of "
            f"{paths.root} first, or continue in another train.output_dir"
        )
    if (previous := set_aside_previous_run(paths)) is not None:
        log.warning(
            "moved the earlier run's outputs in %s to %s (a fresh run never builds on them; set "
            "train.continue_train: true to continue a run)",
            paths.root,
            previous,
        )
    return start

"""Where a training run starts: fresh (setting an earlier run aside) or continued from a checkpoint.

Continuing restores the full state and goes on at the next epoch; a changed architecture is
refused, other changed settings are listed. A fresh run never builds on persisted outputs: it
moves them to ``previous/``, so a forgotten ``continue_train`` costs nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nectargan_core.checkpoint import (
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    require_full_state,
)
from nectargan_core.files import remove_stale_temp_files, write_atomic
from nectargan_core.layout import LOCK_NAME, RunPaths, strip_key
from nectargan_core.settings import Settings, flatten_dotted
from nectargan_core.training.records import truncate_after
from nectargan_core.training.saving import after_full_state
from nectargan_core.training.summary import RunSummary, registered_versions

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
    ``kept`` is where the earlier complete run is, so a fresh run that fails can say so.
    """

    epoch: int
    state: dict[str, Any] | None = None
    checkpoint: Path | None = None
    changed: list[str] = field(default_factory=list)
    warm_start: dict[str, Any] | None = None
    kept: Path | None = None  # where the folder's earlier complete run is kept (a fresh run's previous/)


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


def _worth(paths: RunPaths) -> int:
    """How much a run folder's records are worth keeping: 2 complete (a full state and a summary that
    does not say it diverged), 1 a full state of a run that never completed (killed or diverged: it can
    still be continued), 0 leftovers without a full state (nothing to continue), -1 nothing."""
    if paths.latest.is_file():
        summary = RunSummary.read(paths.summary)
        return 2 if summary is not None and summary.not_registered is None else 1
    return 0 if any(p.exists() for p in paths.records) else -1


def set_aside_previous_run(paths: RunPaths) -> Path | None:
    """Clear the folder for a fresh run: its earlier run goes to ``output_dir/previous/``.

    Every complete run is kept until a newer one completes, so a chain of failed fresh runs never
    loses the good run before them. A complete run in ``previous/`` is replaced only by a complete
    one, and only when it was registered (its final state lives in the registry); leftovers without a
    full state never replace a run with one (they are dropped, with a warning), and a run with a full
    state that would be lost stops the fresh run with nothing moved. Returns ``previous/`` when it
    holds a complete run afterwards (the fresh run's errors say where it is), else None.
    """
    earlier = RunPaths(paths.previous)
    here, there = _worth(paths), _worth(earlier)
    kept = paths.previous if there == 2 else None
    if here == -1:
        return kept
    present = [p for p in paths.records if p.exists()]
    if here == 0 and there >= 1:
        for path in present:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        log.warning(
            "dropped %s of a run in %s that stopped before its first checkpoint; the earlier run in %s is kept",
            ", ".join(p.name for p in present),
            paths.root,
            paths.previous,
        )
        return kept
    if here == 1 and there == 2:
        summary = RunSummary.read(paths.summary)
        if summary is not None and summary.not_registered:
            why, fix = "diverged", ""  # nothing worth continuing
        else:
            why, fix = "stopped before its end", "continue it with train.continue_train: true, or "
        raise CheckpointError(
            f"{paths.root} holds a run that never completed (it {why}) and {paths.previous} the earlier complete "
            f"run, which this fresh run must not replace: {fix}delete {paths.checkpoints} to start afresh. "
            "Nothing was moved."
        )
    if there >= 1 and not (here == 2 and registered_versions(earlier.summary)):
        raise CheckpointError(
            f"{paths.previous} holds an earlier run that was never registered, and this fresh run would "
            f"replace it with the run now in {paths.root}: move {paths.previous} out of {paths.root} (or "
            "delete it), or continue the run with train.continue_train: true. Nothing was moved."
        )
    shutil.rmtree(paths.previous, ignore_errors=True)
    paths.previous.mkdir(parents=True)
    for path in present:
        os.replace(path, paths.previous / path.name)
    log.warning(
        "moved the earlier run's outputs in %s to %s (a fresh run never builds on them; set "
        "train.continue_train: true to continue a run)",
        paths.root,
        paths.previous,
    )
    return paths.previous if here == 2 else None


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


def remove_run_temp_files(paths: RunPaths) -> list[Path]:
    """Temp files a killed run left behind (an atomic write that never got to its rename)."""
    folders = (paths.root, paths.checkpoints, paths.snapshots, paths.examples)
    return [p for folder in folders if folder.is_dir() for p in remove_stale_temp_files(folder)]


def refuse_nothing_to_continue(settings: Settings, paths: RunPaths, started_before: bool) -> None:
    """``continue_train`` on a folder with no checkpoint where no run ever began (no lock file): a
    mistyped folder would otherwise train a fresh run that looks continued. Call it before the lock."""
    cfg = settings.train
    if not cfg.continue_train or cfg.continue_from is not None or started_before:
        return
    if paths.latest.exists() or list_checkpoints(paths.snapshots):
        return
    raise CheckpointError(
        f"{paths.root} holds no checkpoint to continue ({_holding(paths)}): train without train.continue_train, "
        "or point train.output_dir at the run to continue"
    )


def _holding(paths: RunPaths) -> str:
    if not paths.root.is_dir():
        return "it does not exist"
    if _worth(RunPaths(paths.previous)) >= 1:
        return f"its earlier run is in {paths.previous}: continue it with train.continue_from={paths.previous}"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in paths.root.iterdir() if p.name != LOCK_NAME)
    if not names:
        return "it is empty"
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"it holds {shown}, but no {paths.latest.relative_to(paths.root)}"


def start_point(settings: Settings, paths: RunPaths, started_before: bool = False) -> StartPoint:
    """Decide where training starts and make the output folder agree with it.

    Continuing in the run's own folder drops the records of later epochs; anything else (a fresh
    run, or continuing from a checkpoint elsewhere) sets the folder's earlier run aside. A run
    killed before its first checkpoint (``started_before``: its lock file was there) continues
    from epoch 1, which is the same as the run that never stopped.
    """
    remove_run_temp_files(paths)
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
    return replace(start, kept=set_aside_previous_run(paths))

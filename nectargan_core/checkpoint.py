"""Checkpoint files: written atomically, read with ``weights_only=True``, found by epoch, pruned.

Two kinds (``contents``): the full state (G, D, both optimisers, the epoch, the seed and every
setting; what training continues from, exactly) and snapshots that hold network weights only
(the generator, or both networks), optionally in a lower precision. RNG states are not stored:
every epoch reseeds from (seed, epoch), so the state at an epoch boundary is a function of what
is stored. Mixed precision is bf16, which needs no grad scaler.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from nectargan_core.files import write_atomic
from nectargan_core.layout import CHECKPOINT_PATTERN, RunPaths, checkpoint_epoch

FORMAT_VERSION = 2
Contents = Literal["full", "networks", "generator"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_META = ("epoch", "seed", "settings", "architecture")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, of another architecture, or the wrong kind."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    try:
        return write_atomic(
            path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp), durable=True
        )
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError of its zip writer
        free = shutil.disk_usage(path.parent).free / 2**20 if path.parent.is_dir() else 0.0
        kept = "the previous file there is kept" if path.exists() else "nothing was written"
        raise CheckpointError(
            f"{path}: writing the checkpoint failed ({exc.__class__.__name__}); {free:,.0f} MiB are free in "
            f"{path.parent}: free space (or point train.output_dir elsewhere) and continue; {kept}"
        ) from None


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Load safely (tensors and plain containers only) and check the format version.

    ``mmap`` maps the file instead of reading it: cheap when only the small entries are wanted.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: holds Python objects other than tensors and plain data, so it was not loaded (loading "
            f"it could run code); use a checkpoint nectargan wrote. {_others(path)}"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or of another kind ({exc.__class__.__name__}: {exc}). "
            f"{_others(path)}"
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        keys = ", ".join(list(state)[:3]) + ", ..." if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a nectargan checkpoint (no format_version; it holds {keys}, like a bare state_dict). "
            f"{_others(path)}"
        )
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']!r}, this version reads {FORMAT_VERSION}"
        )
    return state


def _others(path: Path) -> str:
    """What else a user could load instead of a bad file: the other checkpoints beside it, and for a
    run's rolling full state, that run's epoch snapshots."""
    others = sorted(p.name for p in path.parent.glob("*.pt") if p != path) if path.parent.is_dir() else []
    run = RunPaths(path.parent.parent)
    if path.parent.name == run.checkpoints.name and run.snapshots.is_dir():
        snapshots = sorted(p.name for p in run.snapshots.glob("*.pt"))
        if snapshots:
            return (
                f"The run's snapshots: {', '.join(snapshots)} in {run.snapshots}; continue from one with "
                f"-s train.load_epoch=N (a full snapshot), or point train.continue_from (or --model) at one."
            )
    if not others:
        return "No other checkpoint is beside it; retrain, or point at a good file."
    return f"Beside it: {', '.join(others)}; point train.continue_from (or --model) at one of them."


def snapshot_of(state: dict[str, Any], kind: Contents, precision: str = "fp32") -> dict[str, Any]:
    """What a snapshot of ``kind`` keeps of a full state, network weights cast to ``precision``."""
    if kind == "full":
        return {**state, "contents": "full"}
    dtype = _DTYPES[precision]
    networks = ("generator",) if kind == "generator" else ("generator", "discriminator")
    weights = {
        net: {key: value.to(dtype) if value.is_floating_point() else value for key, value in state[net].items()}
        for net in networks
    }
    return {**{key: state[key] for key in _META}, "contents": kind, "precision": precision, **weights}


def require_full_state(path: Path, state: dict[str, Any]) -> None:
    """Continuing needs the optimisers; say what the file holds and what to use instead."""
    if state["contents"] == "full":
        return
    raise CheckpointError(
        f"{path} is a snapshot holding {state['contents']} weights of epoch {state['epoch']}, without the "
        "optimiser state that continuing needs. Continue from the run's checkpoints/latest.pt "
        "(train.load_epoch: latest), start a new run from these weights with train.warm_start, or keep "
        "full snapshots with train.snapshot: full."
    )


def list_checkpoints(folder: Path) -> dict[int, Path]:
    """Epoch -> checkpoint file (epoch_NNNN.pt) in ``folder``, oldest first."""
    if not folder.is_dir():
        return {}
    found = {epoch: p for p in folder.iterdir() if (epoch := checkpoint_epoch(p.name)) is not None}
    return dict(sorted(found.items()))


def checkpoint_epoch_of(path: Path) -> int:
    return int(load_checkpoint(path, mmap=True)["epoch"])


def find_checkpoint(source: Path, epoch: int | str) -> Path:
    """A checkpoint file given directly; or, in a run folder (or its checkpoints/ folder), the full
    state ``latest.pt`` for 'latest' or its own epoch, else the snapshot of ``epoch``."""
    if source.is_file():
        return source
    run = RunPaths(source.parent if source.name == RunPaths(source).checkpoints.name else source)
    latest = run.latest if run.latest.is_file() else None
    # Snapshots of the run; or epoch files right in the folder given (a bare folder of them).
    snapshots = list_checkpoints(run.snapshots) or list_checkpoints(source)
    if latest is None and not snapshots:
        raise CheckpointError(
            f"{source}: no checkpoints ({run.latest.relative_to(run.root)} or "
            f"{run.snapshots.relative_to(run.root)}/{CHECKPOINT_PATTERN}); "
            "train first or point train.continue_from at a checkpoint file or a run folder"
        )
    if epoch == "latest":
        return latest or snapshots[max(snapshots)]
    if latest is not None and checkpoint_epoch_of(latest) == epoch:
        return latest
    if epoch not in snapshots:
        available = sorted({*snapshots, *([checkpoint_epoch_of(latest)] if latest else [])})
        raise CheckpointError(
            f"{source}: no checkpoint for epoch {epoch}; available epochs: {', '.join(map(str, available))}"
        )
    return snapshots[epoch]  # type: ignore[index]


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest epoch_NNNN.pt files; returns what was deleted."""
    available = list(list_checkpoints(folder).values())
    doomed = available[:-keep] if keep else available
    for path in doomed:
        path.unlink()
    return doomed

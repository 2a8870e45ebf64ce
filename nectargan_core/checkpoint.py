"""The checkpoint file: written atomically, read with ``weights_only=True``, listed and pruned by epoch.

A checkpoint holds G, D, both optimisers, the epoch, the seed and every setting. RNG states
are not stored: every epoch reseeds from (seed, epoch), so the state at an epoch boundary is a
function of what is stored. Mixed precision is bf16, which needs no grad scaler. Training
writes them; training (to continue) and inference (to generate) read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nectargan_core.files import write_atomic
from nectargan_core.layout import CHECKPOINT_PATTERN, checkpoint_epoch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another architecture."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    return write_atomic(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp), durable=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load safely (tensors and plain containers only) and check the format version."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this version reads {FORMAT_VERSION}")
    return state


def list_checkpoints(folder: Path) -> dict[int, Path]:
    """Epoch -> checkpoint file in ``folder``, oldest first."""
    if not folder.is_dir():
        return {}
    found = {epoch: p for p in folder.iterdir() if (epoch := checkpoint_epoch(p.name)) is not None}
    return dict(sorted(found.items()))


def find_checkpoint(source: Path, epoch: int | str) -> Path:
    """A checkpoint file given directly, or the one for ``epoch`` ('latest' = newest) in a folder."""
    if source.is_file():
        return source
    available = list_checkpoints(source)
    if not available:
        raise CheckpointError(
            f"{source}: no checkpoints ({CHECKPOINT_PATTERN}) to continue from; train first or point "
            "train.continue_from at a checkpoint"
        )
    if epoch == "latest":
        return available[max(available)]
    if epoch not in available:
        raise CheckpointError(
            f"{source}: no checkpoint for epoch {epoch}; available epochs: {', '.join(map(str, available))}"
        )
    return available[epoch]  # type: ignore[index]


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; returns what was deleted."""
    available = list(list_checkpoints(folder).values())
    doomed = available[:-keep] if keep else available
    for path in doomed:
        path.unlink()
    return doomed

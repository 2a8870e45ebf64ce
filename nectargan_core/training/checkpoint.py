"""Full-state checkpoints: written atomically, read with ``weights_only=True``, pruned to a budget.

A checkpoint holds G, D, both optimisers, the epoch, the seed and every setting. RNG states
are not stored: every epoch reseeds from (seed, epoch), so the state at an epoch boundary is a
function of what is stored. Mixed precision is bf16, which needs no grad scaler.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from nectargan_core.models import build_generator
from nectargan_core.models.generator import UNetGenerator
from nectargan_core.settings import DataSettings, Settings, flatten_dotted

FORMAT_VERSION = 1
_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another architecture."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


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


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; checkpoints are shared like any output
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format_version": FORMAT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := _NAME.match(p.name))}
    return dict(sorted(found.items()))


def find_checkpoint(source: Path, epoch: int | str) -> Path:
    """A checkpoint file given directly, or the one for ``epoch`` ('latest' = newest) in a folder."""
    if source.is_file():
        return source
    available = list_checkpoints(source)
    if not available:
        raise CheckpointError(
            f"{source}: no checkpoints (epoch_NNNN.pt) to continue from; train first or point "
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


def load_generator(path: Path, device: torch.device) -> tuple[UNetGenerator, Settings, int]:
    """The generator of a checkpoint in eval mode, built from the checkpoint's own settings."""
    state = load_checkpoint(path)
    settings = Settings.model_validate(state["settings"])
    generator = build_generator(settings)
    generator.load_state_dict(state["generator"])
    return generator.to(device).eval(), settings, int(state["epoch"])


def data_for_checkpoint(data: DataSettings, trained: Settings) -> DataSettings:
    """The data settings with the channels and crop the checkpoint was trained on (the rest as configured)."""
    return data.model_copy(
        update={key: getattr(trained.data, key) for key in ("input_channels", "output_channels", "crop_size")}
    )

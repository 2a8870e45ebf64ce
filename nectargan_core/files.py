"""File and image helpers every stage shares: atomic writes, image listing, example strips.

An atomic write goes to a temp file in the target's folder and is renamed over it, so a reader
(or a run killed mid-write) never sees half a file, and a failed write leaves no temp file.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nectargan_core.metric_names import LOSS_D, LOSS_G, LR_D, LR_G

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it, process-wide


# ---------------------------------------------------------------- atomic writes


_TEMP_SUFFIX = ".tmp"  # atomic_path's temp file for NAME: .NAME.<random>.tmp


def remove_stale_temp_files(folder: Path, of_suffix: str = "") -> list[Path]:
    """Remove the temp files a killed process left in ``folder`` (an atomic write that never got to
    its rename; only those for targets ending in ``of_suffix`` if given) and return them. Scans
    lazily: the folder may hold many thousand outputs."""
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            parts = entry.name[1:].rsplit(".", 2)  # NAME, <random>, tmp
            if (
                entry.name.startswith(".")
                and entry.name.endswith(_TEMP_SUFFIX)
                and len(parts) == 3
                and parts[0].endswith(of_suffix)
                and entry.is_file(follow_symlinks=False)
            ):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


@contextmanager
def naming(path: Path, *stand_ins: Path) -> Iterator[None]:
    """Name ``path`` in an OSError raised while the block writes it: a full disk reports no file name,
    and a write through a temp file (a stand-in) names the temp file, gone by the time the user reads it."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or (exc.filename is not None and str(exc.filename) not in map(str, stand_ins)):
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


@contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``durable`` fsyncs the file before the rename (checkpoints: survive a power cut, not just a kill).
    The file gets the permissions of a plain new file (umask), not mkstemp's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    try:
        with naming(path, tmp):
            yield tmp
            if durable:
                with tmp.open("rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        if durable:  # the rename itself reaches the disk with the folder's entry
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[Path], object], durable: bool = False) -> Path:
    """``write(tmp)`` then rename over ``path``; returns ``path``."""
    with atomic_path(path, durable) as tmp:
        write(tmp)
    return path


def own_copy(path: Path) -> Path:
    """Before changing ``path`` in place: if it is shared (a hard link into the DVC cache) or read-only,
    replace it with a private, writable copy, so the cache is never written through."""
    if path.exists() and (path.stat().st_nlink > 1 or not os.access(path, os.W_OK)):
        write_atomic(path, lambda tmp: shutil.copyfile(path, tmp))
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_image_atomic(image: Image.Image | np.ndarray, path: Path) -> Path:
    """A PNG (or the suffix's format) written atomically."""
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return write_atomic(path, lambda tmp: pil.save(tmp, format=fmt))


# ---------------------------------------------------------------- locks


class Locked(RuntimeError):
    """Another process holds the lock; the message names it."""


@contextmanager
def held_lock(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """An exclusive lock on ``path`` for as long as the block runs (``fcntl.flock``: the system
    releases it when its process dies, so a killed holder never leaves a stale lock).

    Without ``wait`` a held lock raises ``Locked`` naming the holder (pid, host, since when, command).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise Locked(
                f"{what} is in use by {holder} (lock {path}); wait for it to finish, or use another folder"
            ) from None
        with naming(path):
            handle.seek(0)
            handle.truncate()
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}: {' '.join(sys.argv)}")
            handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- image files


def iter_images(folder: Path) -> Iterator[Path]:
    """Plain files with an image suffix, lazily in directory order: a folder to predict may hold more
    names than are worth listing at once."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                yield Path(entry.path)


def list_images(folder: Path) -> list[Path]:
    """Plain files with an image suffix, sorted by name: what the dataset loads. Missing folder = []."""
    if not folder.is_dir():
        return []
    return sorted(iter_images(folder))


# 16-bit modes (as ``image_mode`` names them): read as 8 bits per channel by keeping each value's high
# byte, v >> 8 (0x1234 -> 0x12), as PIL itself decodes 16-bit colour PNGs; scanners write these.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "RGB;16", "RGBA;16", "LA;16"})
# 32-bit integer and float images: no known range to scale from, so they are refused.
HIGH_DEPTH_MODES = frozenset({"I", "F"})
EIGHT_BIT_NOTE = "16-bit image, read as 8 bits per channel (value >> 8)"


def image_mode(image: Image.Image) -> str:
    """The mode, with ``;16`` for a 16-bit colour PNG (PIL opens those as plain 8-bit RGB, keeping the
    high byte). Call it before the image is loaded: the file's raw mode is read."""
    raw = image.tile[0].args if image.tile else ""
    raw = raw if isinstance(raw, str) else (raw[0] if raw and isinstance(raw[0], str) else "")
    return f"{image.mode};16" if ";16" in raw and image.mode in ("RGB", "RGBA", "LA") else image.mode


def eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey image as 8-bit L (v >> 8); any other image as it is (16-bit colour PNGs are
    decoded to their high byte by PIL already)."""
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))  # 2-D uint8: mode L
    return image


def printable(text: str) -> str:
    """A file named with a newline or another control character stays on its one line (escaped as Python does)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def read_image(path: Path) -> Image.Image:
    """The decoded image at 8 bits per channel (16-bit ones scaled, see ``eight_bit``), or a ValueError
    that names the file and what to do (never PIL's traceback)."""
    try:
        with Image.open(path) as image:
            mode = image_mode(image)
            loaded = eight_bit(image.copy())
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # PIL reports bad files in all
        raise ValueError(
            f"{printable(str(path))}: not a readable image ({exc.__class__.__name__}: {exc}); replace or remove it "
            "(nectargan validate lists every such file)"
        ) from None
    if mode in HIGH_DEPTH_MODES:
        raise ValueError(
            f"{printable(str(path))}: a {mode} image (32-bit integer or float) has no 8-bit scale; "
            "convert it to an 8-bit PNG or JPEG"
        )
    return loaded


# ---------------------------------------------------------------- the epoch table


def read_epochs(epochs_csv: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of the epoch table, sorted by epoch; torn rows of a killed run are skipped."""
    epochs_csv = Path(epochs_csv)
    if not epochs_csv.is_file():
        raise FileNotFoundError(
            f"epoch table {epochs_csv} does not exist: pass the run's epochs.csv (train.output_dir/epochs.csv)"
        )
    with epochs_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if None not in row and None not in row.values() and row["epoch"].isdigit()]
    if not rows:
        raise ValueError(f"{epochs_csv} has no epoch rows: nothing to plot until at least one epoch has finished")
    missing = [c for c in ("epoch", LR_G.column, LR_D.column, LOSS_D.column, LOSS_G.column) if c not in header]
    if missing:
        raise ValueError(f"{epochs_csv} lacks column(s) {missing}: is it a NectarGAN epochs.csv?")
    rows.sort(key=lambda row: int(row["epoch"]))
    return header, rows


# ---------------------------------------------------------------- example strips


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """C x H x W in [-1, 1] -> H x W x 3 uint8 (grey images are repeated to RGB)."""
    image = image.detach().float().cpu().clamp(-1, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def compose_strip(x: torch.Tensor, generated: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """One sample as input | generated | target, side by side."""
    return np.concatenate([to_uint8_rgb(x), to_uint8_rgb(generated), to_uint8_rgb(y)], axis=1)


def image_grid(
    cells: Sequence[Sequence[Image.Image | None]],
    cell: tuple[int, int],
    origin: tuple[int, int] = (0, 0),
    background: str | tuple[int, int, int] = "white",
    blank: tuple[int, int, int] | None = None,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """Cells row by row on one RGB canvas, each resized to ``cell`` when it differs. ``origin`` (left,
    top) leaves room for the caller's labels; a None cell shows ``blank`` (the background if None)."""
    width, height = cell
    left, top = origin
    columns = max((len(row) for row in cells), default=0)
    canvas = Image.new("RGB", (left + columns * width, top + len(cells) * height), background)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            x, y = left + c * width, top + r * height
            if image is None:
                if blank is not None:
                    canvas.paste(blank, (x, y, x + width, y + height))
            else:
                canvas.paste(image if image.size == cell else image.resize(cell, resample), (x, y))
    return canvas


def split_strip(path: Path) -> tuple[Image.Image, Image.Image, Image.Image]:
    """The (input, generated, target) thirds of a strip file."""
    with Image.open(path) as image:
        strip = image.convert("RGB")
    side, height = strip.width // 3, strip.height
    return (
        strip.crop((0, 0, side, height)),
        strip.crop((side, 0, 2 * side, height)),
        strip.crop((2 * side, 0, 3 * side, height)),
    )

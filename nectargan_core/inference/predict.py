"""Run a checkpoint, a registered model (its MLflow pyfunc) or an ONNX file over images of any size.

Two ways to meet the generator's size rules (documented in docs/pipeline.md):
  resize  resize to the trained crop size, generate, resize back (what the model saw in training)
  pad     pad (edge-replicate) right and bottom to the next multiple of 2^(n_downs+2), generate at
          full resolution, crop back (the UNet is fully convolutional)

A folder is streamed: its file names are read lazily, threads decode the images a few ahead, the
model runs on batches and each output is written atomically, so memory stays flat however many
images the folder holds. An output already present is complete (atomic writes) and is skipped, so
a rerun after a kill continues where it stopped; the temp files a killed run left are removed.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nectargan_core.files import (
    IMAGE_SUFFIXES,
    Locked,
    iter_images,
    printable,
    read_image,
    remove_stale_temp_files,
    save_image_atomic,
    to_uint8_rgb,
)
from nectargan_core.inference.generator import load_generator
from nectargan_core.models import ModelInfo

Runner = Callable[[torch.Tensor], torch.Tensor]  # N x C x H x W in [-1, 1] -> N x C' x H x W


def _from_checkpoint(path: Path, device: torch.device) -> tuple[Runner, ModelInfo]:
    trained = load_generator(path, device)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        return trained.generator(x.to(device)).float().cpu()

    return run, trained.info


def _from_onnx(path: Path) -> tuple[Runner, ModelInfo]:
    from nectargan_core.inference.onnx import onnx_metadata, onnx_session  # onnx: only for an ONNX file

    meta = onnx_metadata(path)
    session = onnx_session(path)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    return run, ModelInfo.from_metadata(meta)


def pyfunc_runner(model: Any, info: dict[str, int]) -> tuple[Runner, ModelInfo]:
    """A registered model's MLflow pyfunc (float32 N x C x H x W in [-1, 1] in and out)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(model.predict(x.numpy()))

    return run, ModelInfo.from_metadata(info)


def load_runner(path: Path, device: torch.device) -> tuple[Runner, ModelInfo]:
    """``path``: a checkpoint file or a ``.onnx`` file (registered models are downloaded by the caller)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint or ONNX file (or use models:/NAME@ALIAS)")
    if path.suffix == ".onnx":
        return _from_onnx(path)
    return _from_checkpoint(path, device)


Mode = Literal["resize", "pad"]
Pairs = Literal["auto", "a", "b", "whole"]
PAIR_SAMPLE = 32  # pair detection looks at the headers of this many images (the first in directory order)


def default_workers() -> int:
    """Decoding threads when not given: one core is left to the model, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def default_batch_size(mode: Mode) -> int:
    """8 images of the trained crop; 1 in pad mode, where an image runs at its full size."""
    return 8 if mode == "resize" else 1


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class PredictSummary:
    """What a run over a folder did: outputs written now, outputs already there (skipped), bad inputs."""

    out_dir: Path
    written: int
    present: int
    bad: tuple[str, ...] = ()
    removed_temp: int = 0

    def line(self) -> str:
        parts = [f"{_count(self.written, 'image')} written to {self.out_dir}"]
        if self.present:
            parts.append(f"{self.present} already there (skipped)")
        if self.bad:
            parts.append(f"{_count(len(self.bad), 'bad image')} skipped (listed above)")
        if self.removed_temp:
            parts.append(f"{_count(self.removed_temp, 'temp file')} of an interrupted run removed")
        return "; ".join(parts)


def _output_of(path: Path, out_dir: Path) -> Path:
    return out_dir / f"{path.stem}.png"


@contextmanager
def _sole_writer(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the output folder for the run: two predicts into one folder would
    take each other's temp files for a killed run's."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Locked(
                f"{out_dir}: another nectargan predict is writing into it; wait for it, or use another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _pair_shaped(input_dir: Path) -> tuple[int, str] | None:
    """(count, an example) when the first PAIR_SAMPLE readable images are all twice as wide as tall."""
    seen, example = 0, ""
    for path in iter_images(input_dir):
        try:
            with Image.open(path) as image:  # the header only: nothing is decoded
                width, height = image.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # the stream lists it as bad
        if width != 2 * height:
            return None
        seen += 1
        example = example or f"{printable(path.name)} is {width}x{height}"
        if seen == PAIR_SAMPLE:
            break
    return (seen, example) if seen else None


def _input_half(direction: str) -> str:
    return "a" if direction == "AtoB" else "b"


def _to_array(image: Image.Image, channels: int) -> np.ndarray:
    return np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)


def _to_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """H x W (x C) uint8 arrays of one size -> N x C x H x W float32 in [-1, 1]."""
    batch = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1.0
    return batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2)


def _prepare(image: Image.Image, info: ModelInfo, mode: Mode) -> np.ndarray:
    """The model's input for one image: resized to the crop, or edge-padded to the size multiple."""
    if mode == "resize":
        return _to_array(image.resize((info.crop_size, info.crop_size), Image.Resampling.BICUBIC), info.input_channels)
    array = _to_array(image, info.input_channels)
    m = info.side_multiple
    pad = [(0, -image.height % m), (0, -image.width % m)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="edge")


def _finish(generated: torch.Tensor, size: tuple[int, int], mode: Mode) -> Image.Image:
    """One generated C x H x W tensor back to the input's size."""
    width, height = size
    if mode == "resize":
        return Image.fromarray(to_uint8_rgb(generated)).resize((width, height), Image.Resampling.BICUBIC)
    return Image.fromarray(to_uint8_rgb(generated[:, :height, :width]))


def predict_image(image: Image.Image, run: Runner, info: ModelInfo, mode: Mode) -> Image.Image:
    return _finish(run(_to_batch([_prepare(image, info, mode)]))[0], image.size, mode)


@dataclass(frozen=True)
class _Decoded:
    path: Path
    array: np.ndarray | None  # None: a bad image, ``error`` says why
    size: tuple[int, int] = (0, 0)
    error: str = ""


class _Decoder:
    """Decodes one image file into the model's input, or says why it cannot."""

    def __init__(self, info: ModelInfo, mode: Mode, half: str | None) -> None:
        self.info, self.mode, self.half = info, mode, half

    def __call__(self, path: Path) -> _Decoded:
        try:
            image = read_image(path)
        except ValueError as exc:  # unreadable, truncated, or a mode with no 8-bit scale
            return _Decoded(path, None, error=str(exc))
        if self.half is not None:
            w = image.width // 2
            image = image.crop((0, 0, w, image.height) if self.half == "a" else (w, 0, 2 * w, image.height))
        return _Decoded(path, _prepare(image, self.info, self.mode), image.size)


def _decoded(decode: _Decoder, paths: Iterable[Path], workers: int, ahead: int) -> Iterator[_Decoded]:
    """``decode`` over ``paths`` in order, ``workers`` threads at most ``ahead`` images ahead (PIL and
    numpy release the GIL while they decode and resize). Threads, not processes: a process forked
    from one that runs other threads (an MLflow client, a Prefect flow run) can die before it says
    why, and a killed predict leaves no orphan behind."""
    if not workers:
        yield from map(decode, paths)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict-decode")
    pending: deque[Future[_Decoded]] = deque()
    try:
        for path in paths:
            pending.append(pool.submit(decode, path))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def predict_folder(
    runner: tuple[Runner, ModelInfo],
    input_dir: Path,
    out_dir: Path,
    mode: Mode = "resize",
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    strict: bool = False,
    pairs: Pairs = "auto",
    direction: str = "AtoB",
    notice: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Generate one output PNG per input image (same stem) into ``out_dir``, streaming the folder.

    Outputs already in ``out_dir`` are skipped. Bad images are reported through ``notice`` (one line
    each) and skipped, or with ``strict`` the first one stops the run with a ValueError naming it.
    ``pairs``: auto refuses a folder whose images look like aligned A|B pairs; a or b takes that half
    of each image as the input; whole feeds whole images without looking. Batches hold images of one
    input size: in pad mode images of different sizes wait in per-size groups (at most 2 x batch_size
    images in all; past that the fullest group runs, even if not full).
    """
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if out_dir.resolve() == input_dir.resolve():
        raise ValueError(f"--out {out_dir} is the input folder: the outputs would replace the inputs; choose another")
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    total = present = 0
    for path in iter_images(input_dir):
        total += 1
        present += _output_of(path, out_dir).exists()
    if not total:
        raise ValueError(f"{input_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) to predict")
    if pairs == "auto" and (shaped := _pair_shaped(input_dir)):
        half = _input_half(direction)
        raise ValueError(
            f"{input_dir}: looks like aligned A|B pairs (the first {shaped[0]} images are twice as wide as tall; "
            f"{shaped[1]}), not model inputs: pass --pairs {half} to predict from the {half.upper()} half "
            f"(data.direction {direction}), or --pairs whole to use whole images"
        )
    run, info = runner
    batch_size = batch_size or default_batch_size(mode)
    workers = default_workers() if workers is None else workers
    notice = notice or (lambda line: tqdm.write(line, file=sys.stderr))
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = (p for p in iter_images(input_dir) if not _output_of(p, out_dir).exists())
    decode = _Decoder(info, mode, None if pairs in ("auto", "whole") else pairs)
    with _sole_writer(out_dir):
        decoded = _decoded(decode, todo, workers, ahead=2 * batch_size)
        removed = len(remove_stale_temp_files(out_dir, ".png"))  # a killed run's, never complete
        written, bad = 0, []
        groups: dict[tuple[int, ...], list[_Decoded]] = {}
        progress = tqdm(total=total - present, desc="predict", unit="image", disable=None)

        def flush(key: tuple[int, ...]) -> None:
            nonlocal written
            items = groups.pop(key)
            generated = run(_to_batch([item.array for item in items]))  # type: ignore[misc]
            for item, image in zip(items, generated, strict=True):
                save_image_atomic(_finish(image, item.size, mode), _output_of(item.path, out_dir))
            written += len(items)
            progress.update(len(items))

        try:
            for item in decoded:
                if item.array is None:
                    if strict:
                        for key in list(groups):
                            flush(key)
                        raise ValueError(
                            f"{item.error} (--strict: stopped at the first bad image, {_count(written, 'output')} "
                            "written by this run kept; drop --strict to list and skip bad images)"
                        )
                    bad.append(str(item.path))
                    notice(f"skipped: {item.error}")
                    progress.update(1)
                    continue
                key = item.array.shape
                groups.setdefault(key, []).append(item)
                if len(groups[key]) >= batch_size:
                    flush(key)
                elif sum(map(len, groups.values())) >= 2 * batch_size:
                    flush(max(groups, key=lambda k: len(groups[k])))
            for key in list(groups):
                flush(key)
        finally:
            decoded.close()  # stops the decoding threads now, not when the generator is collected
            progress.close()
    return PredictSummary(out_dir, written, present, tuple(bad), removed)

"""Run a checkpoint, a registered model or an ONNX file over a folder of images of any size.

Two ways to meet the generator's size rules (documented in the README):
  resize  resize to the trained crop size, generate, resize back (what the model saw in training)
  pad     pad (edge-replicate) right and bottom to the next multiple of 2^(n_downs+2), generate at
          full resolution, crop back (the UNet is fully convolutional)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from nectargan_core.data.dataset import IMAGE_SUFFIXES
from nectargan_core.export.onnx import onnx_metadata, side_multiple
from nectargan_core.settings import Settings
from nectargan_core.training.checkpoint import load_generator
from nectargan_core.training.examples import to_uint8_rgb

Runner = Callable[[torch.Tensor], torch.Tensor]  # 1 x C x H x W in [-1, 1] -> 1 x C' x H x W


@dataclass(frozen=True)
class ModelInfo:
    input_channels: int
    output_channels: int
    crop_size: int
    side_multiple: int


def _from_checkpoint(path: Path, device: torch.device) -> tuple[Runner, ModelInfo]:
    generator, trained, _ = load_generator(path, device)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        return generator(x.to(device)).float().cpu()

    data = trained.data
    return run, ModelInfo(data.input_channels, data.output_channels, data.crop_size, side_multiple(trained))


def _from_onnx(path: Path) -> tuple[Runner, ModelInfo]:
    import onnxruntime as ort

    meta = onnx_metadata(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    info = ModelInfo(meta["input_channels"], meta["output_channels"], meta["crop_size"], meta["side_multiple"])
    return run, info


def load_runner(source: str, settings: Settings, project_dir: Path, scratch: Path) -> tuple[Runner, ModelInfo]:
    """``source``: a checkpoint file, ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``, or a ``.onnx`` file."""
    from nectargan_core.training.step import resolve_device

    if source.startswith("models:/"):
        from nectargan_core.tracking.mlflow_run import connect
        from nectargan_core.tracking.registry import download_checkpoint

        client, _ = connect(settings.tracking, project_dir)
        return _from_checkpoint(download_checkpoint(client, source, scratch).checkpoint, resolve_device(settings.train))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint or ONNX file (or use models:/NAME@ALIAS)")
    if path.suffix == ".onnx":
        return _from_onnx(path)
    return _from_checkpoint(path, resolve_device(settings.train))


def _to_input(image: Image.Image, channels: int) -> torch.Tensor:
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array)
    return (tensor[None] if channels == 1 else tensor.permute(2, 0, 1))[None]


def predict_image(image: Image.Image, run: Runner, info: ModelInfo, mode: Literal["resize", "pad"]) -> Image.Image:
    width, height = image.size
    if mode == "resize":
        x = _to_input(image.resize((info.crop_size, info.crop_size), Image.Resampling.BICUBIC), info.input_channels)
        out = Image.fromarray(to_uint8_rgb(run(x)[0]))
        return out.resize((width, height), Image.Resampling.BICUBIC)
    m = info.side_multiple
    x = _to_input(image, info.input_channels)
    x = F.pad(x, (0, -width % m, 0, -height % m), mode="replicate")
    return Image.fromarray(to_uint8_rgb(run(x)[0][:, :height, :width]))


def predict_folder(
    source: str,
    input_dir: Path,
    out_dir: Path,
    settings: Settings,
    project_dir: Path,
    mode: Literal["resize", "pad"] = "resize",
) -> list[Path]:
    """Generate one output PNG per input image (same stem) into ``out_dir``."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{input_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) to predict")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        run, info = load_runner(source, settings, project_dir, Path(scratch))
        for path in tqdm(files, desc="predict", unit="image", disable=None):
            with Image.open(path) as image:
                result = predict_image(image, run, info, mode)
            target = out_dir / f"{path.stem}.png"
            result.save(target)
            written.append(target)
    return written

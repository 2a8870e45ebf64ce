"""Run a checkpoint, a registered model (its MLflow pyfunc) or an ONNX file over images of any size.

Two ways to meet the generator's size rules (documented in docs/pipeline.md):
  resize  resize to the trained crop size, generate, resize back (what the model saw in training)
  pad     pad (edge-replicate) right and bottom to the next multiple of 2^(n_downs+2), generate at
          full resolution, crop back (the UNet is fully convolutional)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from nectargan_core.files import IMAGE_SUFFIXES, list_images, read_image, save_image_atomic, to_uint8_rgb
from nectargan_core.inference.generator import load_generator
from nectargan_core.inference.onnx import onnx_metadata, onnx_session
from nectargan_core.models import ModelInfo

Runner = Callable[[torch.Tensor], torch.Tensor]  # 1 x C x H x W in [-1, 1] -> 1 x C' x H x W


def _from_checkpoint(path: Path, device: torch.device) -> tuple[Runner, ModelInfo]:
    trained = load_generator(path, device)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        return trained.generator(x.to(device)).float().cpu()

    return run, trained.info


def _from_onnx(path: Path) -> tuple[Runner, ModelInfo]:
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
    runner: tuple[Runner, ModelInfo], input_dir: Path, out_dir: Path, mode: Literal["resize", "pad"] = "resize"
) -> list[Path]:
    """Generate one output PNG per input image (same stem) into ``out_dir``."""
    if Path(out_dir).resolve() == Path(input_dir).resolve():
        raise ValueError(f"--out {out_dir} is the input folder: the outputs would replace the inputs; choose another")
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    files = list_images(input_dir)
    if not files:
        raise ValueError(f"{input_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) to predict")
    run, info = runner
    written = []
    for path in tqdm(files, desc="predict", unit="image", disable=None):
        result = predict_image(read_image(path), run, info, mode)
        written.append(save_image_atomic(result, out_dir / f"{path.stem}.png"))
    return written

"""The generator as ONNX, with dynamic batch and spatial axes, checked against PyTorch.

The model's metadata records what a caller needs to feed it: channels, the trained crop size
and the multiple that any input side must be (2^(n_downs + 2)).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import torch
from torch.export import Dim

from nectargan_core.data.dataset import first_val_pairs
from nectargan_core.files import write_atomic, write_json_atomic
from nectargan_core.inference.generator import TrainedGenerator, load_generator
from nectargan_core.layout import parity_path
from nectargan_core.models import ModelInfo
from nectargan_core.settings import Settings

PARITY_TOLERANCE = 1e-4  # max |onnxruntime - torch| on [-1, 1] outputs, fp32


@dataclass(frozen=True)
class ExportResult:
    path: Path
    epoch: int
    max_abs_diff: dict[str, float]  # per parity case
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(value <= self.tolerance for value in self.max_abs_diff.values())


def cpu_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's FMA units)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(psutil.cpu_count(logical=False) or allowed, allowed))


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The CPU session settings of every ONNX consumer (predict, the parity check, the benchmark).

    Measured with benchmarks/inference.py (docs/performance.md): one sequential intra-op pool of
    ``threads`` (default: the physical cores) whose idle threads sleep instead of spinning. With
    onnxruntime's defaults (spinning threads pinned to cores) a busy machine loses its time to
    threads that wait for a preempted sibling. The graph is optimised fully at load (ORT_ENABLE_ALL,
    onnxruntime's NCHWc convolution layout on x86), not saved: a saved NCHWc graph is tied to the
    CPU that wrote it and loads only about 50 ms faster.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or cpu_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnx_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``path`` with :func:`session_options`."""
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def onnx_metadata(path: Path) -> dict[str, int]:
    """The metadata written at export (channels, crop size, side multiple)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is no ONNX model
        raise ValueError(
            f"{path}: not a readable ONNX file ({exc.__class__.__name__}); export it again with `nectargan export`"
        ) from None
    props = {p.key: p.value for p in model.metadata_props}
    if "nectargan" not in props:
        raise ValueError(
            f"{path}: not exported by nectargan (no 'nectargan' metadata); export it with `nectargan export`"
        )
    return json.loads(props["nectargan"])


def write_generator_onnx(
    generator: torch.nn.Module, info: ModelInfo, epoch: int, out_path: Path, opset: int = 18
) -> Path:
    """``generator`` (in eval mode) as ONNX with dynamic batch, height and width and nectargan's metadata.

    The exporter's own graph optimisation (on by default) already folds the constants: the graph is
    one ONNX node per layer (Conv, ConvTranspose, InstanceNormalization, activations, Concat).
    """
    example = torch.zeros(1, info.input_channels, info.crop_size, info.crop_size)
    dynamic = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    meta = info.metadata(epoch)

    def write(tmp: Path) -> None:  # a new file renamed into place: never written through a DVC cache link
        torch.onnx.export(
            generator,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamic_shapes={"x": dynamic},
            dynamo=True,
            external_data=False,
            verbose=False,  # no progress lines: the export command prints its own summary
        )
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {"nectargan": json.dumps(meta)})
        onnx.save(model, str(tmp))

    return write_atomic(out_path, write)


def export_onnx(checkpoint: Path, out_path: Path, opset: int = 18) -> tuple[Path, TrainedGenerator]:
    """Export the checkpoint's generator (eval mode) with dynamic batch, height and width."""
    trained = load_generator(checkpoint, torch.device("cpu"))
    write_generator_onnx(trained.generator, trained.info, trained.epoch, out_path, opset)
    return out_path, trained


def parity_check(
    checkpoint: Path, onnx_path: Path, settings: Settings, tolerance: float = PARITY_TOLERANCE
) -> dict[str, float]:
    """Max |onnxruntime - torch| on random inputs (other batch and sizes) and on real validation images."""
    trained = load_generator(checkpoint, torch.device("cpu"))
    session = onnx_session(onnx_path)
    info = trained.info
    size, channels, multiple = info.crop_size, info.input_channels, info.side_multiple
    torch.manual_seed(0)
    cases = {
        f"random 1x{size}x{size}": torch.rand(1, channels, size, size) * 2 - 1,
        f"random 3x{size + multiple}x{2 * size}": torch.rand(3, channels, size + multiple, 2 * size) * 2 - 1,
    }
    val_inputs, _ = first_val_pairs(trained.info.data(settings.data), 4)
    cases[f"validation x{len(val_inputs)}"] = val_inputs
    result = {}
    with torch.no_grad():
        for name, batch in cases.items():
            expected = trained.generator(batch).numpy()
            got = session.run(None, {"input": batch.numpy()})[0]
            result[name] = float(np.abs(got - expected).max())
    return result


def export_and_check(settings: Settings, checkpoint: Path, out_path: Path, opset: int = 18) -> ExportResult:
    path, trained = export_onnx(checkpoint, out_path, opset)
    diffs = parity_check(checkpoint, path, settings)
    result = ExportResult(path, trained.epoch, diffs, PARITY_TOLERANCE)
    report = {
        "onnx": str(path),
        "epoch": trained.epoch,
        "opset": opset,
        "tolerance": PARITY_TOLERANCE,
        "max_abs_diff": diffs,
    }
    write_json_atomic(parity_path(path), report)
    if not result.ok:
        raise RuntimeError(f"{path}: ONNX output differs from PyTorch beyond {PARITY_TOLERANCE}: {diffs}")
    return result

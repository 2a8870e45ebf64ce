"""What a default run (256 px, the default networks, 200 epochs) leaves on disk, per store, under the
checkpoint policy of this version and under the one before it (every checkpoint a full state,
each logged to MLflow).

It trains one real step of the default networks at 256 px (so the optimiser state exists), writes
each kind of file once with the project's own code (the full state, which is also the registered
model's artifact; a snapshot; an example strip; the ONNX generator) and multiplies the measured
sizes by how many of each the run keeps. Nothing is trained for 200 epochs.

    .venv/bin/python benchmarks/disk_usage.py [--epochs 200] [--no-onnx]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from nectargan_core.checkpoint import save_checkpoint, snapshot_of
from nectargan_core.data.sample import render_pair
from nectargan_core.files import save_image_atomic
from nectargan_core.settings import Settings, load_settings, with_changes
from nectargan_core.training.resume import architecture
from nectargan_core.training.step import GANStep

ROOT = Path(__file__).resolve().parents[1]


def default_settings() -> Settings:
    """params.yaml with the model's own defaults (the demo values of params.yaml are small)."""
    defaults = Settings()
    return with_changes(
        load_settings(ROOT / "params.yaml"),
        {
            "data": defaults.data.model_dump(mode="json"),
            "model": defaults.model.model_dump(mode="json"),
            "train": {**defaults.train.model_dump(mode="json"), "device": "cpu"},
        },
    )


def measured_sizes(settings: Settings, folder: Path, onnx: bool) -> dict[str, int]:
    step = GANStep(settings, torch.device("cpu"), None)
    size = settings.data.crop_size
    x, y = torch.rand(1, 3, size, size) * 2 - 1, torch.rand(1, 3, size, size) * 2 - 1
    step(x, y)  # Adam's moments now exist, as in every checkpoint after the first step
    state = {
        "epoch": 1,
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json"),
        "architecture": architecture(settings),
        **step.state_dict(),
    }
    files = {
        "full state": save_checkpoint(folder / "latest.pt", snapshot_of(state, "full")),
        "snapshot": save_checkpoint(
            folder / "snapshot.pt",
            snapshot_of(state, settings.train.snapshot, settings.train.snapshot_precision),
        ),
    }
    # An example strip: a label map | a rendered facade | the same facade (a realistic PNG to compress).
    a, b = render_pair(np.random.default_rng(0), size)
    files["example strip"] = save_image_atomic(np.concatenate([a, b, b], axis=1), folder / "strip.png")
    if onnx:
        from nectargan_core.inference.onnx import export_onnx

        files["onnx"] = export_onnx(files["full state"], folder / "generator.onnx")[0]
    return {name: path.stat().st_size for name, path in files.items()}


def plan(settings: Settings, sizes: dict[str, int], epochs: int) -> dict[str, dict[str, int]]:
    """Bytes per store for this policy and the one before (DVC cache entries hard-linked now: counted once)."""
    cfg = settings.train
    saves = -(-epochs // cfg.checkpoint_every)  # every N epochs and the last
    kept = min(cfg.keep_checkpoints, saves)
    strips = (epochs // cfg.examples_every) * cfg.num_examples * sizes["example strip"]
    full, onnx = sizes["full state"], sizes.get("onnx", 0)
    now = {
        "outputs/ (run and stages)": full + kept * sizes["snapshot"] + strips + onnx,
        "DVC cache": 0,  # hard links to the outputs above
        "mlruns/ (model = the full state, images)": full + strips,
    }
    before = {  # every checkpoint a full state; the cache copied; log_checkpoints: true
        "outputs/ (run and stages)": kept * full + strips + onnx,
        "DVC cache": kept * full + strips + onnx,
        "mlruns/ (model = the full state, images)": (saves + 1) * full + strips + onnx,
    }
    return {"this version": now, "before": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export (slow on a small CPU)")
    args = parser.parse_args()
    settings = default_settings()
    with tempfile.TemporaryDirectory() as scratch:
        sizes = measured_sizes(settings, Path(scratch), onnx=not args.no_onnx)
    print("measured file sizes (MB):", ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sizes.items()))
    cfg = settings.train
    print(
        f"run: {args.epochs} epochs at {settings.data.crop_size} px; checkpoint_every {cfg.checkpoint_every}, "
        f"keep_checkpoints {cfg.keep_checkpoints}, snapshot {cfg.snapshot} {cfg.snapshot_precision}, "
        f"examples_every {cfg.examples_every} x {cfg.num_examples}"
    )
    table = plan(settings, sizes, args.epochs)
    print("\n| store | this version (GB) | before (GB) |\n|---|---:|---:|")
    for store in table["this version"]:
        print(f"| {store} | {table['this version'][store] / 1e9:.2f} | {table['before'][store] / 1e9:.2f} |")
    totals = {name: sum(stores.values()) for name, stores in table.items()}
    print(f"| **total** | **{totals['this version'] / 1e9:.2f}** | **{totals['before'] / 1e9:.2f}** |")


if __name__ == "__main__":
    main()

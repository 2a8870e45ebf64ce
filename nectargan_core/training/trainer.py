"""The epoch loop: seeding, schedules, records, examples, checkpoints and continue training.

Pure library: progress goes out through ``TrainingCallback`` hooks, files go under
``train.output_dir``:

    checkpoints/epoch_NNNN.pt   full state, every ``checkpoint_every`` epochs and the last
    examples/epoch_NNNN_sample_KK.png
    loss_log.csv                per-iteration losses (appended every ``dump_frequency`` epochs)
    epochs.csv                  one row per epoch (a DVC plot)
    summary.json                where things are and the final losses
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from nectargan_core.data.dataset import PairedImageDataset
from nectargan_core.data.transforms import PairTransform
from nectargan_core.settings import Settings
from nectargan_core.training.callbacks import EpochSummary, TrainingCallback
from nectargan_core.training.checkpoint import (
    CheckpointError,
    architecture,
    architecture_mismatch,
    changed_settings,
    checkpoint_name,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from nectargan_core.training.examples import save_strips
from nectargan_core.training.records import LossLog, append_epoch_row, truncate_after
from nectargan_core.training.step import GANStep, autocast_dtype, resolve_device

log = logging.getLogger(__name__)
_EXAMPLE_NAME = re.compile(r"^epoch_(\d+)_sample_\d+\.png$")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


@dataclass
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def examples(self) -> Path:
        return self.root / "examples"

    @property
    def loss_log(self) -> Path:
        return self.root / "loss_log.csv"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def previous(self) -> Path:
        return self.root / "previous"


@dataclass
class TrainResult:
    output_dir: Path
    start_epoch: int
    last_epoch: int
    checkpoint: Path | None
    history: list[EpochSummary] = field(default_factory=list)
    changed_settings: list[str] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch: all randomness of epoch e depends on (seed, e) only, so resuming is exact."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _set_aside_previous_run(paths: RunPaths) -> Path | None:
    """Move an earlier run's outputs to ``output_dir/previous/`` (replacing an older one there).

    A fresh run must not build on them, and a forgotten ``continue_train`` must not destroy them.
    """
    managed = (paths.checkpoints, paths.examples, paths.loss_log, paths.epochs, paths.summary)
    present = [p for p in managed if p.exists()]
    if not present:
        return None
    shutil.rmtree(paths.previous, ignore_errors=True)
    paths.previous.mkdir(parents=True)
    for path in present:
        os.replace(path, paths.previous / path.name)
    return paths.previous


def _drop_epochs_after(paths: RunPaths, epoch: int) -> None:
    """Continuing this run from an earlier epoch: the later records belong to the branch it replaces."""
    for number, path in list_checkpoints(paths.checkpoints).items():
        if number > epoch:
            path.unlink()
    if paths.examples.is_dir():
        for path in paths.examples.iterdir():
            match = _EXAMPLE_NAME.match(path.name)
            if match and int(match.group(1)) > epoch:
                path.unlink()
    truncate_after(paths.loss_log, epoch)
    truncate_after(paths.epochs, epoch)


def _resume_state(settings: Settings, paths: RunPaths) -> tuple[dict, Path] | None:
    cfg = settings.train
    if not cfg.continue_train:
        return None
    source = cfg.continue_from or str(paths.checkpoints)
    if source.startswith("models:/"):
        raise CheckpointError(
            f"train.continue_from={source}: registered models are resolved by the pipeline (MLflow registry); "
            "the training engine takes a local checkpoint path"
        )
    path = find_checkpoint(Path(source), cfg.load_epoch)
    state = load_checkpoint(path)
    mismatch = architecture_mismatch(state["architecture"], architecture(settings))
    if mismatch:
        raise CheckpointError(
            f"{path} was trained with another architecture, so it cannot continue:\n  "
            + "\n  ".join(mismatch)
            + "\nRestore these settings, or start a fresh run with train.continue_train: false."
        )
    return state, path


def _fixed_examples(settings: Settings) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``num_examples`` validation pairs, eval-preprocessed: the same ones every epoch."""
    count = settings.train.num_examples
    if count == 0:
        return None
    val = PairedImageDataset(settings.data, "val", PairTransform(settings.data, train=False))
    pairs = [val[i] for i in range(min(count, len(val)))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _check_finite(
    names: Sequence[str],
    means: Sequence[float],
    per_step: list[torch.Tensor],
    epoch: int,
    step: int,
    last: Path | None,
) -> None:
    """Raise if a loss went NaN/inf, naming the loss and step where it first did (if steps are kept)."""
    if all(math.isfinite(v) for v in means):
        return
    values, where = list(means), f"detected by step {step}"
    for index, row in enumerate(per_step, start=1):
        if not torch.isfinite(row).all():
            values, where = row.tolist(), f"step {index}"
            break
    name, value = next((n, v) for n, v in zip(names, values, strict=True) if not math.isfinite(v))
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
    raise NonFiniteLossError(
        f"loss '{name}' became {value} in epoch {epoch} ({where}); training stopped and {kept}. "
        f"Lower the learning rates or the weight of '{name}', or check the data."
    )


def _check_finite_weights(step: GANStep, epoch: int, last: Path | None) -> None:
    """Finite losses can still come with overflowing gradients; never checkpoint NaN weights."""
    params = [*step.generator.parameters(), *step.discriminator.parameters()]
    if not torch.stack([p.isfinite().all() for p in params]).all().item():
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"the network weights became NaN or infinite in epoch {epoch}; training stopped without saving and "
            f"{kept}. Lower the learning rates or the loss weights, or use fp32."
        )


def _write_summary(paths: RunPaths, result: TrainResult, settings: Settings, device: torch.device) -> None:
    last = result.history[-1] if result.history else None
    summary = {
        "output_dir": str(result.output_dir),
        "start_epoch": result.start_epoch,
        "last_epoch": result.last_epoch,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "device": str(device),
        "precision": str(autocast_dtype(settings.train, device) or torch.float32).removeprefix("torch."),
        "changed_settings": result.changed_settings,
        "final_epoch": asdict(last) if last else None,
    }
    tmp = paths.summary.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, paths.summary)


def _worker_context() -> multiprocessing.context.BaseContext:
    """A forkserver that has imported the data pipeline once, so per-epoch workers start fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "torchvision", "nectargan_core.data.dataset", "nectargan_core.data.transforms"]
    )
    return context


def train(settings: Settings, callbacks: Sequence[TrainingCallback] = ()) -> TrainResult:
    """Train (or continue) as configured; returns where the outputs are and the per-epoch history."""
    cfg = settings.train
    paths = RunPaths(Path(cfg.output_dir))
    device = resolve_device(cfg)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(settings.seed)
    step = GANStep(settings, device, autocast_dtype(cfg, device))
    dataset = PairedImageDataset(settings.data, "train", PairTransform(settings.data, train=True))
    examples = _fixed_examples(settings)

    resumed = _resume_state(settings, paths)
    start, changed, last_checkpoint = 1, [], None
    if resumed is not None:
        state, last_checkpoint = resumed
        step.load_state_dict(state)
        start = state["epoch"] + 1
        if start > cfg.total_epochs:
            raise CheckpointError(
                f"{last_checkpoint} is at epoch {state['epoch']} and the configured total is {cfg.total_epochs} "
                "(train.generator.epochs + epochs_decay): raise the total to train on"
            )
        changed = changed_settings(state["settings"], settings.model_dump(mode="json"))
    if last_checkpoint is not None and last_checkpoint.parent.resolve() == paths.checkpoints.resolve():
        _drop_epochs_after(paths, start - 1)
    else:
        if last_checkpoint is not None and paths.previous.resolve() in last_checkpoint.resolve().parents:
            raise CheckpointError(
                f"{last_checkpoint} lies in {paths.previous}, which this run would replace; copy it out of "
                f"{paths.root} first, or continue in another train.output_dir"
            )
        if (previous := _set_aside_previous_run(paths)) is not None:
            log.warning(
                "moved the earlier run's outputs in %s to %s (a fresh run never builds on them; set "
                "train.continue_train: true to continue a run)",
                paths.root,
                previous,
            )

    generator = torch.Generator()
    loader = DataLoader(
        dataset,
        batch_size=settings.data.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=settings.data.num_workers,
        pin_memory=device.type == "cuda",
        # Workers start from a clean forkserver, not a fork of this process: a fork inherits the
        # threads of whatever hosts training (Prefect, MLflow's system metrics) and can hang or die.
        multiprocessing_context=_worker_context() if settings.data.num_workers > 0 else None,
    )
    loss_log = LossLog(paths.loss_log) if settings.logging.log_losses else None
    total = cfg.total_epochs
    result = TrainResult(paths.root, start, start - 1, last_checkpoint, changed_settings=changed)
    for cb in callbacks:
        cb.on_train_start(start, total, changed)

    try:
        for epoch in range(start, total + 1):
            seed = epoch_seed(settings.seed, epoch)
            torch.manual_seed(seed)
            generator.manual_seed(seed)
            summary = _run_epoch(step, loader, epoch, total, loss_log, callbacks, last_checkpoint)
            if loss_log is not None and epoch % settings.logging.dump_frequency == 0:
                loss_log.flush()
            append_epoch_row(paths.epochs, summary.as_row())
            result.history.append(summary)
            result.last_epoch = epoch
            for cb in callbacks:
                cb.on_epoch_end(summary)

            final = epoch == total
            if examples is not None and (epoch % cfg.examples_every == 0 or final):
                strips = _save_examples(step, examples, paths.examples, epoch)
                for cb in callbacks:
                    cb.on_examples(epoch, strips)
            if epoch % cfg.checkpoint_every == 0 or final:
                if loss_log is not None:
                    loss_log.flush()  # the log always reaches the newest checkpoint, even if killed later
                _check_finite_weights(step, epoch, last_checkpoint)
                last_checkpoint = _save(step, settings, epoch, paths)
                result.checkpoint = last_checkpoint
                for cb in callbacks:
                    cb.on_checkpoint(epoch, last_checkpoint)
    finally:
        if loss_log is not None:
            loss_log.flush()  # whatever is cached is written, also on error or Ctrl+C

    _write_summary(paths, result, settings, device)
    for cb in callbacks:
        cb.on_train_end(result.last_epoch, result.checkpoint)
    return result


def _run_epoch(
    step: GANStep,
    loader: DataLoader,
    epoch: int,
    total: int,
    loss_log: LossLog | None,
    callbacks: Sequence[TrainingCallback],
    last_checkpoint: Path | None,
) -> EpochSummary:
    lr_g, lr_d = step.set_epoch(epoch)
    names = step.value_names
    device = step.device
    running = torch.zeros(len(names), device=device)
    per_step: list[torch.Tensor] = []
    every = step.settings.logging.progress_every
    for cb in callbacks:
        cb.on_epoch_start(epoch, len(loader))

    step.generator.train()
    step.discriminator.train()
    images = 0
    started = time.perf_counter()
    try:
        for index, (x, y) in enumerate(loader, start=1):
            x = x.to(device, non_blocking=True).contiguous(memory_format=step.memory_format)
            y = y.to(device, non_blocking=True).contiguous(memory_format=step.memory_format)
            values = step(x, y)
            running += values
            if loss_log is not None:
                per_step.append(values)
            images += x.shape[0]
            if index % every == 0:  # the only device sync inside the epoch
                live = (running / index).tolist()
                _check_finite(names, live, per_step, epoch, index, last_checkpoint)
                for cb in callbacks:
                    cb.on_progress(epoch, index, dict(zip(names, live, strict=True)))
        steps = len(loader)
        means = (running / steps).tolist()
        seconds = time.perf_counter() - started
        _check_finite(names, means, per_step, epoch, steps, last_checkpoint)
    finally:  # the epoch's rows reach the cache also when it fails or is interrupted
        if loss_log is not None and per_step:
            weights = [1.0, 1.0, *(step.weights[n] for n in names[2:])]
            try:
                loss_log.add_epoch(epoch, names, weights, torch.stack(per_step).cpu().tolist())
            except RuntimeError:  # e.g. a broken CUDA context: keep the original error visible
                log.exception("could not read the losses of epoch %d back from the device", epoch)
    return EpochSummary(
        epoch=epoch,
        total_epochs=total,
        seconds=seconds,
        images_per_s=images / seconds,
        lr_g=lr_g,
        lr_d=lr_d,
        loss_d=means[0],
        loss_g=means[1],
        losses=dict(zip(names[2:], means[2:], strict=True)),
        weights=dict(step.weights),
    )


@torch.no_grad()
def _save_examples(step: GANStep, examples: tuple[torch.Tensor, torch.Tensor], folder: Path, epoch: int) -> list[Path]:
    inputs, targets = examples
    step.generator.eval()
    with step.autocast():
        generated = step.generator(inputs.to(step.device).contiguous(memory_format=step.memory_format))
    step.generator.train()
    return save_strips(inputs, generated, targets, folder, epoch)


def _save(step: GANStep, settings: Settings, epoch: int, paths: RunPaths) -> Path:
    path = save_checkpoint(
        paths.checkpoints / checkpoint_name(epoch),
        {
            "epoch": epoch,
            "seed": settings.seed,
            "settings": settings.model_dump(mode="json"),
            "architecture": architecture(settings),
            **step.state_dict(),
        },
    )
    prune_checkpoints(paths.checkpoints, settings.train.keep_checkpoints)
    return path

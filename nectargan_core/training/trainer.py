"""The epoch loop: seeding, schedules, records, examples and checkpoints, read top to bottom in ``train``.

Pure library: progress goes out through ``TrainingCallback`` hooks, files go under
``train.output_dir`` as ``nectargan_core.layout.RunPaths`` lays them out. Where a run starts
(fresh or continued) is decided in ``training.resume``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from nectargan_core.checkpoint import save_checkpoint, snapshot_of
from nectargan_core.data.dataset import first_val_pairs
from nectargan_core.data.loaders import train_loader
from nectargan_core.device import autocast_dtype, resolve_device
from nectargan_core.distributed import (
    SINGLE,
    DistributedError,
    World,
    any_rank,
    broadcast,
    mean_over_ranks,
    rank_seed,
)
from nectargan_core.files import compose_strip, held_lock, save_image_atomic
from nectargan_core.layout import RunPaths, strip_name
from nectargan_core.metric_names import val_name
from nectargan_core.settings import Settings, divergence_changes
from nectargan_core.training import interrupt
from nectargan_core.training.callbacks import EpochSummary, TrainingCallback
from nectargan_core.training.records import LossLog, append_epoch_row
from nectargan_core.training.resume import architecture, refuse_nothing_to_continue, start_point
from nectargan_core.training.saving import after_full_state
from nectargan_core.training.selection import Selection
from nectargan_core.training.step import GANStep, Losses, LossLayout
from nectargan_core.training.summary import RunSummary
from nectargan_core.training.validation import ValidationPairs, validate

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


@dataclass
class TrainResult:
    output_dir: Path
    start_epoch: int
    last_epoch: int
    checkpoint: Path | None
    history: list[EpochSummary] = field(default_factory=list)
    changed_settings: list[str] = field(default_factory=list)
    stopped_early: str | None = None
    selected_epoch: int | None = None  # the best validated epoch (train.select_by), and why
    selected_why: str | None = None


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch: all randomness of epoch e depends on (seed, e) only, so resuming is exact."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _fixed_examples(settings: Settings) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``num_examples`` validation pairs, eval-preprocessed: the same ones every epoch."""
    count = settings.train.num_examples
    if count == 0:
        return None
    return first_val_pairs(settings.data, count)


def _kept(last: Path | None, earlier: Path | None) -> str:
    """What a failed run leaves to fall back on: its newest checkpoint, or the earlier complete run."""
    if last is not None:
        return f"the last good checkpoint is {last}"
    fallback = f"; the earlier complete run is kept in {earlier}" if earlier else ""
    return f"no checkpoint had been written yet{fallback}"


def _check_finite(
    mean: Losses, layout: LossLayout, per_step: list[torch.Tensor], epoch: int, step: int, kept: str, settings: Settings
) -> None:
    """Raise if a loss went NaN/inf, naming the loss and step where it first did (if steps are kept),
    and the learning rates and loss weights changed from the defaults."""
    bad = mean.first_non_finite()
    if bad is None:
        return
    where = f"detected by step {step}"
    for index, losses in enumerate(_read_steps(layout, per_step), start=1):
        if (first := losses.first_non_finite()) is not None:
            bad, where = first, f"step {index}"
            break
    name, value = bad
    raise NonFiniteLossError(
        f"loss '{name}' became {value} in epoch {epoch} ({where}); training stopped and {kept}. "
        f"Lower the learning rates or the weight of '{name}', or check the data.{divergence_changes(settings)}"
    )


def _check_finite_weights(step: GANStep, epoch: int, kept: str) -> None:
    """Finite losses can still come with overflowing gradients; never checkpoint NaN weights."""
    params = [*step.generator.parameters(), *step.discriminator.parameters()]
    if not torch.stack([p.isfinite().all() for p in params]).all().item():
        raise NonFiniteLossError(
            f"the network weights became NaN or infinite in epoch {epoch}; training stopped without saving and "
            f"{kept}. Lower the learning rates or the loss weights, or use fp32.{divergence_changes(step.settings)}"
        )


def _write_summary(paths: RunPaths, result: TrainResult, settings: Settings, device: torch.device) -> None:
    last = result.history[-1] if result.history else None
    RunSummary(
        output_dir=str(result.output_dir),
        start_epoch=result.start_epoch,
        last_epoch=result.last_epoch,
        checkpoint=str(result.checkpoint) if result.checkpoint else None,
        device=str(device),
        precision=str(autocast_dtype(settings.train, device) or torch.float32).removeprefix("torch."),
        changed_settings=result.changed_settings,
        final_epoch=asdict(last) if last else None,
        selected_epoch=result.selected_epoch,
        selected_why=result.selected_why,
        stopped_early=result.stopped_early,
    ).write(paths.summary)


def train(
    settings: Settings,
    callbacks: Sequence[TrainingCallback] = (),
    run: dict[str, str] | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train (or continue) as configured; returns where the outputs are and the per-epoch history.

    ``run`` (e.g. the tracking run's id) is stored in every full state, so a continue can find the
    run it continues. A run already at its total trains nothing and only finishes (summary, the
    caller's registration). One process at a time trains into an output folder (a lock that names
    its holder).

    Under torchrun every process calls this with its ``world``, inside the process group its caller
    opened; rank 0 alone decides where training starts, holds the lock and writes files (the
    callbacks are rank 0's), and the others train their share of each global batch.
    """
    paths = RunPaths.of(settings)
    started_before = paths.lock.exists()  # a run began here (its lock file stays after a kill)
    if world.is_main:
        refuse_nothing_to_continue(settings, paths, started_before)  # before the lock file marks a start
    lock = held_lock(paths.lock, f"train.output_dir {paths.root}") if world.is_main else nullcontext()
    with lock:
        return _train(settings, paths, callbacks, run or {}, world, started_before)


def _train(
    settings: Settings,
    paths: RunPaths,
    callbacks: Sequence[TrainingCallback],
    run: dict[str, str],
    world: World,
    started_before: bool = False,
) -> TrainResult:
    cfg = settings.train
    device = resolve_device(cfg, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True

    torch.manual_seed(settings.seed)
    step = GANStep(settings, device, autocast_dtype(cfg, device), world)
    examples = _fixed_examples(settings) if world.is_main else None
    val_pairs = ValidationPairs.load(settings, device) if cfg.validate_every and world.is_main else None

    # Rank 0 moves, trims and reads the run's files; the others get the state it loaded.
    start = broadcast(start_point(settings, paths, started_before) if world.is_main else None, world)
    if start.state is not None:
        step.load_state_dict(start.state)
    if start.warm_start is not None:
        step.load_weights(start.warm_start)
    last_checkpoint = start.checkpoint

    generator = torch.Generator()
    loader = train_loader(settings, device, world, generator)
    loss_log = LossLog(paths.loss_log) if settings.logging.log_losses and world.is_main else None
    keep_steps = settings.logging.log_losses
    total = cfg.total_epochs
    result = TrainResult(paths.root, start.epoch, start.epoch - 1, last_checkpoint, changed_settings=start.changed)
    selection = None
    if cfg.select_by:
        saved = start.state.get("selection") if start.state else None
        metric = val_name(cfg.select_by)
        selection = Selection.restore(metric, cfg.early_stop_patience, cfg.early_stop_window, saved)
        # A run that stopped early and is continued only finishes, as the run that never stopped did.
        result.stopped_early = selection.stop_reason(start.epoch - 1) if start.epoch > 1 else None
    for cb in callbacks:
        cb.on_train_start(start.epoch, total, start.changed)

    try:
        for epoch in range(start.epoch, total + 1):
            if result.stopped_early:
                break
            seed = epoch_seed(settings.seed, epoch)
            torch.manual_seed(rank_seed(seed, world))  # augmentation and dropout: a stream per process
            generator.manual_seed(seed)  # the order of the samples: the same in every process
            kept = _kept(last_checkpoint, start.kept)
            summary = _run_epoch(step, loader, epoch, total, loss_log, keep_steps, callbacks, kept)
            if val_pairs is not None and (epoch % cfg.validate_every == 0 or epoch == total):
                scores = validate(step.generator, val_pairs, device, step.autocast)
                summary = replace(summary, val=scores)
                if selection is not None and selection.update(epoch, scores[selection.metric]):
                    _save_best(step, settings, epoch, paths, run)
            # Rank 0 validated and holds the callbacks; every rank stops after the same epoch.
            reason = _stop_reason(selection, callbacks, summary) if world.is_main else None
            result.stopped_early = broadcast(reason, world)
            if result.stopped_early and world.is_main:
                log.info("%s", result.stopped_early)
            if loss_log is not None and epoch % settings.logging.dump_frequency == 0:
                loss_log.flush()
            if world.is_main:
                append_epoch_row(paths.epochs, summary.as_row())
            result.history.append(summary)
            result.last_epoch = epoch
            for cb in callbacks:
                cb.on_epoch_end(summary)

            final = epoch == total or bool(result.stopped_early)
            if examples is not None and (epoch % cfg.examples_every == 0 or final):
                strips = _save_examples(step, examples, paths.examples, epoch)
                for cb in callbacks:
                    cb.on_examples(epoch, strips)
            if epoch % cfg.checkpoint_every == 0 or final:
                if loss_log is not None:
                    loss_log.flush()  # the log always reaches the newest checkpoint, even if killed later
                _check_finite_weights(step, epoch, kept)
                if world.is_main:
                    last_checkpoint, snapshot = _save(step, settings, epoch, paths, run, selection)
                    result.checkpoint = last_checkpoint
                    for cb in callbacks:
                        cb.on_checkpoint(epoch, last_checkpoint, snapshot)
    except torch.distributed.DistError as exc:
        raise DistributedError(
            f"rank {world.rank} lost contact with another training process ({exc}); the other process died "
            "or hangs: its own error says why. Continue with -s train.continue_train=true"
        ) from None
    finally:
        if loss_log is not None:
            loss_log.flush()  # whatever is cached is written, also on error or Ctrl+C

    if selection is not None and selection.best_epoch is not None:
        result.selected_epoch, result.selected_why = selection.best_epoch, selection.why()
    if world.is_main:
        _write_summary(paths, result, settings, device)
    for cb in callbacks:
        cb.on_train_end(result.last_epoch, result.checkpoint)
    return result


def _stop_reason(
    selection: Selection | None, callbacks: Sequence[TrainingCallback], summary: EpochSummary
) -> str | None:
    """Why training stops after this epoch: early stopping, else the first callback that asks (a pruned
    search trial); the epoch is then the last one, checkpointed and summarised like any final epoch."""
    if selection is not None and (reason := selection.stop_reason(summary.epoch)):
        return reason
    return next(filter(None, (cb.stop_after(summary) for cb in callbacks)), None)


def _run_epoch(
    step: GANStep,
    loader: DataLoader,
    epoch: int,
    total: int,
    loss_log: LossLog | None,
    keep_steps: bool,
    callbacks: Sequence[TrainingCallback],
    kept: str,
) -> EpochSummary:
    """One epoch; under torchrun the losses shown, checked and logged are the means over the processes."""
    lr_g, lr_d = step.set_epoch(epoch)
    layout, device, world = step.layout, step.device, step.world
    running = torch.zeros(2 + len(layout.terms), device=device)
    per_step: list[torch.Tensor] = []
    every = step.settings.logging.progress_every
    for cb in callbacks:
        cb.on_epoch_start(epoch, len(loader))

    step.generator.train()
    step.discriminator.train()
    images = 0
    complete = False
    started = time.perf_counter()
    try:
        for index, (x, y) in enumerate(loader, start=1):
            x = x.to(device, non_blocking=True).contiguous(memory_format=step.memory_format)
            y = y.to(device, non_blocking=True).contiguous(memory_format=step.memory_format)
            values = step(x, y)
            if not world.distributed:
                interrupt.check()  # a SIGTERM or Ctrl+C stops here, between steps
            running += values
            if keep_steps:
                per_step.append(values)
            images += x.shape[0] * world.size
            if index % every == 0:  # the only device sync inside the epoch
                if any_rank(interrupt.requested(), world, device):  # every process stops at this step
                    raise KeyboardInterrupt
                live = layout.unpack((mean_over_ranks(running, world) / index).tolist())
                _check_finite(live, layout, per_step, epoch, index, kept, step.settings)
                for cb in callbacks:
                    cb.on_progress(epoch, index, dict(live.items()))
        steps = len(loader)
        if any_rank(interrupt.requested(), world, device):
            raise KeyboardInterrupt
        mean = layout.unpack((mean_over_ranks(running, world) / steps).tolist())
        if world.distributed and per_step:
            per_step = list(mean_over_ranks(torch.stack(per_step), world).unbind())
        seconds = time.perf_counter() - started
        _check_finite(mean, layout, per_step, epoch, steps, kept, step.settings)
        complete = True
    finally:  # the epoch's rows reach the cache also when it fails or is interrupted (one process:
        # under torchrun a torn epoch's rows, of rank 0 alone, would be dropped by the continue anyway)
        if loss_log is not None and per_step and (complete or not world.distributed):
            try:
                loss_log.add_epoch(epoch, _read_steps(layout, per_step), step.weights)
            except RuntimeError:  # e.g. a broken CUDA context: keep the original error visible
                log.exception("could not read the losses of epoch %d back from the device", epoch)
    return EpochSummary(
        epoch=epoch,
        total_epochs=total,
        seconds=seconds,
        images_per_s=images / seconds,
        lr_g=lr_g,
        lr_d=lr_d,
        loss_d=mean.d,
        loss_g=mean.g,
        losses=mean.terms,
        weights=dict(step.weights),
    )


def _read_steps(layout: LossLayout, per_step: list[torch.Tensor]) -> list[Losses]:
    """The kept per-step loss vectors, read back from the device in one transfer."""
    if not per_step:
        return []
    return [layout.unpack(row) for row in torch.stack(per_step).cpu().tolist()]


@torch.no_grad()
def _save_examples(step: GANStep, examples: tuple[torch.Tensor, torch.Tensor], folder: Path, epoch: int) -> list[Path]:
    inputs, targets = examples
    step.generator.eval()
    with step.autocast():
        generated = step.generator(inputs.to(step.device).contiguous(memory_format=step.memory_format))
    step.generator.train()
    return [
        save_image_atomic(compose_strip(x, fake, y), folder / strip_name(epoch, index))
        for index, (x, fake, y) in enumerate(zip(inputs, generated, targets, strict=True))
    ]


def _state(step: GANStep, settings: Settings, epoch: int, run: dict[str, str]) -> dict[str, object]:
    return {
        "run": run,
        "epoch": epoch,
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json"),
        "architecture": architecture(settings),
        **step.state_dict(),
    }


def _save_best(step: GANStep, settings: Settings, epoch: int, paths: RunPaths, run: dict[str, str]) -> Path:
    """The generator of a new best validated epoch (fp32: it is what gets evaluated and exported)."""
    return save_checkpoint(paths.best_candidate(epoch), snapshot_of(_state(step, settings, epoch, run), "generator"))


def _save(
    step: GANStep, settings: Settings, epoch: int, paths: RunPaths, run: dict[str, str], selection: Selection | None
) -> tuple[Path, Path]:
    """Replace the rolling full state, then what follows it (best epoch, snapshot, pruning)."""
    state = {**_state(step, settings, epoch, run), "selection": selection.state_dict() if selection else None}
    latest = save_checkpoint(paths.latest, snapshot_of(state, "full"))
    return latest, after_full_state(settings, paths, state, latest)

"""`nectargan sweep`: train every combination of a grid (or a file of named weightings) as MLflow child
runs under one parent run, then report them side by side on the parent.

Children do not move the registry alias; ``register_best`` registers the best child. A rerun of the
same sweep reuses its parent and skips the children that finished. ``sweep`` is the whole study
(train, pick the best, register, report), as the CLI and the Prefect sweep flow run it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nectargan_core.files import write_text_atomic
from nectargan_core.layout import RunPaths, SweepPaths
from nectargan_core.losses.metrics import HIGHER_IS_BETTER
from nectargan_core.metric_names import VAL_METRICS, VAL_PREFIX, val_metric
from nectargan_core.studies.grid import ChildResult, Combination
from nectargan_core.tracking import studies as records
from nectargan_core.tracking.tracker import Tracker

log = logging.getLogger(__name__)

TrainChild = Callable[[ChildResult, dict[str, str]], object]


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    children: list[ChildResult]
    best: ChildResult | None
    model_version: str | None
    report: Path


def sweep(
    tracker: Tracker,
    project_dir: Path,
    name: str,
    paths: SweepPaths,
    children: list[ChildResult],
    select_by: str,
    register: bool = False,
    jobs: int = 1,
    train_child: TrainChild | None = None,
) -> SweepOutcome:
    """Train the children, pick the best by ``select_by``, register it when asked, write the report."""
    parent, children = run_children(tracker, project_dir, name, children, jobs, train_child)
    best = best_child(children, select_by)
    version = register_best(tracker, parent, best, project_dir) if register and best else None
    report = write_report(tracker, parent, paths, children, best)
    return SweepOutcome(parent, children, best, version, report)


def _train_default(tracker: Tracker, project_dir: Path, jobs: int) -> TrainChild:
    """In this process (or torchrun from it), or a process of its own when children run side by side."""
    from nectargan_core.launch import TrainRequest, spawn, start_training
    from nectargan_core.training.callbacks import ConsoleReporter

    def train(child: ChildResult, tags: dict[str, str]) -> object:
        request = TrainRequest(child.settings, tags, register=False)
        if jobs > 1:
            return spawn(request, project_dir)
        return start_training(request, project_dir, tracker, [ConsoleReporter()])

    return train


def run_children(
    tracker: Tracker,
    project_dir: Path,
    name: str,
    children: list[ChildResult],
    jobs: int = 1,
    train_child: TrainChild | None = None,
) -> tuple[str, list[ChildResult]]:
    """Train the children (one after another, or ``jobs`` at a time in processes of their own); a child
    that fails is marked failed and the sweep goes on. Returns the parent run id and the results.

    ``train_child(child, tags)`` trains one child (the Prefect sweep flow passes its train task, so
    each child is a task run)."""
    from nectargan_core.errors import describe_failure

    train_child = train_child or _train_default(tracker, project_dir, jobs)
    parent = records.open_parent(tracker, name, [c.combination.name for c in children])

    def one(child: ChildResult) -> None:
        if (done := records.finished_child(tracker, parent, child.settings)) is not None:
            child.run_id, child.status = done, "skipped"
            log.info("sweep %s: %s finished before (MLflow run %s), skipped", name, child.combination.name, done)
            return
        try:
            train_child(child, records.child_tags(parent, name, child.combination.name))
            child.status = "finished"
        except Exception as exc:  # one child failing (NaN, say) does not stop the others
            child.status, child.error = "failed", describe_failure(exc)
            log.error("sweep %s: %s failed: %s", name, child.combination.name, child.error)
        child.run_id = child.run_id or records.child_run_id(tracker, parent, child.combination.name)

    try:
        if jobs == 1:
            for child in children:
                one(child)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(one, children))
    except BaseException:
        records.end_parent(tracker, parent, "KILLED")
        raise
    records.end_parent(tracker, parent, "FAILED" if all(c.status == "failed" for c in children) else "FINISHED")
    for child in children:
        if child.run_id:
            record = records.child_record(tracker, child.run_id, child.combination.name, child.status)
            child.metrics, child.best = record.final, record.best
    return parent, children


def recorded_children(tracker: Tracker, name: str) -> list[ChildResult]:
    """A sweep's children as MLflow holds them (for `nectargan compare --sweep`), oldest first."""
    return [
        ChildResult(Combination(r.name, ()), None, r.run_id, r.status, metrics=r.final, best=r.best)
        for r in records.recorded_children(tracker, name)
    ]


def selected_metric(select_by: str) -> str:
    """The val metric ``--select-by`` names (``val/psnr`` -> ``psnr``), or a ValueError listing them."""
    metric = select_by.removeprefix(VAL_PREFIX)
    if metric not in VAL_METRICS:
        raise ValueError(f"--select-by {select_by!r}: use one of {', '.join(val_metric(m).key for m in VAL_METRICS)}")
    return metric


def best_child(children: Sequence[ChildResult], select_by: str) -> ChildResult | None:
    """The child with the best final ``select_by`` (``val/psnr``: highest; ``val/l1``: lowest)."""
    metric = selected_metric(select_by)
    scored = [c for c in children if c.status != "failed" and select_by in c.metrics]
    if not scored:
        return None
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return max(scored, key=lambda c: sign * c.metrics[select_by])


def table(children: Sequence[ChildResult]) -> str:
    """Markdown: a row per child with its status, and per val metric its best (epoch) and final value."""
    keys = [val_metric(m).key for m in VAL_METRICS]
    header = "| weighting | status | " + " | ".join(f"best {k} (epoch) | final {k}" for k in keys) + " | MLflow run |"
    lines = [header, "|---|---|" + "---:|---:|" * len(keys) + "---|"]
    for child in children:
        cells = []
        for k in keys:
            cells.append(f"{child.best[k][0]:.4f} ({child.best[k][1]})" if k in child.best else "–")
            cells.append(f"{child.metrics[k]:.4f}" if k in child.metrics else "–")
        status = child.status if not child.error else f"failed: {child.error[:80]}"
        lines.append(f"| {child.combination.name} | {status} | " + " | ".join(cells) + f" | {child.run_id or '–'} |")
    return "\n".join(lines) + "\n"


def write_report(
    tracker: Tracker, parent: str, paths: SweepPaths, children: Sequence[ChildResult], best: ChildResult | None
) -> Path:
    """report.md, val_curves.png (every child overlaid) and grid.png (the same val inputs across the
    children) in the sweep folder, logged to the parent run; returns the report."""
    from nectargan_core.reports.studies import val_curves, weightings_grid

    paths.root.mkdir(parents=True, exist_ok=True)
    trained = [c for c in children if c.run_id and c.status != "failed"]
    runs = {c.combination.name: RunPaths.of(c.settings) for c in trained}
    images = [val_curves({k: v.epochs for k, v in runs.items() if v.epochs.exists()}, paths.val_curves)]
    if (grid_png := weightings_grid({k: v.examples for k, v in runs.items()}, paths.grid)) is not None:
        images.append(grid_png)
    chosen = f"\nBest by the selected metric: **{best.combination.name}** (MLflow run {best.run_id})\n" if best else ""
    shown = "".join(f"\n![{p.stem}]({p.name})\n" for p in images)
    write_text_atomic(paths.report, f"# Sweep {paths.root.name}\n\n{table(children)}{chosen}{shown}")
    records.log_report(tracker, parent, [paths.report, *images])
    return paths.report


def register_best(tracker: Tracker, parent: str, best: ChildResult, project_dir: Path) -> str | None:
    """Register the best child's final full state (this moves the alias) and tag the parent with it."""
    from nectargan_core.tracking.runs import reopened

    assert best.run_id is not None
    with reopened(tracker, best.run_id, RunPaths.of(best.settings)) as run:
        version = run.register(RunPaths.of(best.settings).latest, best.settings, project_dir, None)
    records.tag_best(tracker, parent, f"{best.combination.name} (run {best.run_id}, version {version})")
    return version

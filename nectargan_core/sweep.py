"""`nectargan sweep`: train every combination of a grid of settings (or a file of named weightings)
as MLflow child runs under one parent run, then report them side by side on the parent.

Each child trains into its own folder under ``outputs.sweeps/NAME/runs/`` (never into
``train.output_dir``), is tagged with the parent (``mlflow.parentRunId``) and its params hash,
and does not move the registry alias; ``register_best`` registers the best child. A rerun of
the same sweep reuses its parent and skips the children that finished. Every combination is
validated before anything trains.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nectargan_core.layout import RunPaths, SweepPaths
from nectargan_core.losses.metrics import HIGHER_IS_BETTER
from nectargan_core.settings import Settings, SettingsError, load_settings
from nectargan_core.tracking.provenance import params_hash
from nectargan_core.tracking.tracker import SWEEP_ARTIFACT, Tracker
from nectargan_core.training.validation import VAL_METRICS, val_key

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "nectargan.sweep"
CHILD_TAG = "nectargan.sweep_child"
ROLE_TAG = "nectargan.sweep_role"
HASH_TAG = "params_hash"


@dataclass(frozen=True)
class Combination:
    name: str
    overrides: tuple[str, ...]  # "dotted.key=value", as -s takes them


@dataclass
class ChildResult:
    combination: Combination
    settings: Settings | None  # None for a child read back from MLflow
    run_id: str | None = None
    status: str = "pending"  # finished | skipped (finished before) | failed
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # final val metrics
    best: dict[str, tuple[float, int]] = field(default_factory=dict)  # best val value and its epoch


def split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes: ``50,[1,4],'a,b'`` is three values."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def combine(named: Sequence[Combination], axes: Sequence[Combination]) -> list[Combination]:
    """Every named weighting with every grid point (either may be absent)."""
    named, axes = named or [Combination("", ())], axes or [Combination("", ())]
    return [
        Combination(",".join(filter(None, (n.name, g.name))), (*n.overrides, *g.overrides)) for n in named for g in axes
    ]


def grid(specs: Sequence[str]) -> list[Combination]:
    """Every combination of ``key=v1,v2`` specs (in the order given), named ``l1=50,sobel=0``."""
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError("sweep", [f"-s {spec!r} must look like key.sub=value1,value2"])
        choices = [value for value in split_top_level(values) if value]
        if not choices:
            raise SettingsError("sweep", [f"{key}: the list of values is empty; give at least one (key=v1,v2)"])
        axes.append((key, choices))
    if not axes:
        return []
    return [
        Combination(
            ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for (key, _), value in zip(axes, values, strict=True)),
            tuple(f"{key}={value}" for (key, _), value in zip(axes, values, strict=True)),
        )
        for values in itertools.product(*(choices for _, choices in axes))
    ]


def named_weightings(path: Path) -> list[Combination]:
    """A YAML file ``{name: {dotted.key: value, ...}, ...}``."""
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(str(path), [f"not a readable YAML file of named weightings ({exc})"]) from None
    if not isinstance(tree, dict) or not tree or not all(isinstance(v, dict) and v for v in tree.values()):
        raise SettingsError(str(path), ["expected {name: {dotted.key: value, ...}, ...} with at least one entry"])
    return [
        Combination(str(name), tuple(f"{key}={json.dumps(value)}" for key, value in changes.items()))
        for name, changes in tree.items()
    ]


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name).replace("=", "-")


def sweep_name(combinations: Sequence[Combination]) -> str:
    """The same grid gets the same name, so a rerun finds its parent and finished children."""
    digest = hashlib.sha256(json.dumps([c.overrides for c in combinations]).encode()).hexdigest()[:8]
    return f"sweep-{digest}"


def plan(
    params: Path, base_overrides: Sequence[str], combinations: Sequence[Combination], name: str
) -> tuple[Settings, SweepPaths, list[ChildResult]]:
    """Validate every combination before anything runs; each child gets its own training folder."""
    settings = load_settings(params, base_overrides)
    paths = SweepPaths(Path(settings.outputs.sweeps) / name)
    children, problems = [], []
    for combination in combinations:
        folder = paths.child(_folder_name(combination.name))
        try:
            child = load_settings(params, [*base_overrides, *combination.overrides, f"train.output_dir={folder}"])
        except SettingsError as exc:
            problems.append(f"{combination.name}: {exc}")
            continue
        children.append(ChildResult(combination, child))
    if problems:
        raise SettingsError("sweep", problems)
    return settings, paths, children


def _parent_run(tracker: Tracker, name: str, combinations: Sequence[Combination]) -> str:
    client = tracker.client
    query = f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'parent'"
    found = client.search_runs([tracker.experiment_id], query, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, "RUNNING")
        return found[0].info.run_id
    run = client.create_run(tracker.experiment_id, tags={SWEEP_TAG: name, ROLE_TAG: "parent"}, run_name=name)
    client.log_param(run.info.run_id, "sweep.combinations", json.dumps([c.name for c in combinations])[:6000])
    return run.info.run_id


def children_filter(name: str) -> str:
    """The MLflow filter that finds a sweep's children."""
    return f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'child'"


def recorded_children(tracker: Tracker, name: str) -> list[ChildResult]:
    """A sweep's children as MLflow holds them (for `nectargan compare --sweep`), oldest first."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], children_filter(name), order_by=["attributes.start_time ASC"]
    )
    if not runs:
        raise ValueError(f"no child runs of a sweep named {name!r} in experiment {tracker.experiment!r}")
    children = []
    for run in runs:
        status = {"FINISHED": "finished", "FAILED": "failed"}.get(run.info.status, run.info.status.lower())
        combination = Combination(run.data.tags.get(CHILD_TAG, run.info.run_name), ())
        child = ChildResult(combination, None, run.info.run_id, status)
        collect_metrics(tracker, child)
        children.append(child)
    return children


def _finished_child(tracker: Tracker, parent: str, child: Settings) -> str | None:
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{HASH_TAG}` = '{params_hash(child)}' and "
        "attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _train_in_process(child: ChildResult, tracker: Tracker, project_dir: Path, tags: dict[str, str]) -> str:
    from nectargan_core.stages import train_stage
    from nectargan_core.training.callbacks import ConsoleReporter

    return train_stage(child.settings, tracker, project_dir, [ConsoleReporter()], tags=tags, register=False).run_id


def _train_in_subprocess(child: ChildResult, project_dir: Path, tags: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="nectargan-sweep-") as folder:
        params = Path(folder) / "params.json"
        params.write_text(json.dumps(child.settings.model_dump(mode="json")))
        command = [sys.executable, "-m", "nectargan_core.cli", "train", "--params", str(params), "--no-register"]
        command += [arg for key, value in tags.items() for arg in ("--tag", f"{key}={value}")]
        done = subprocess.run(command, cwd=project_dir, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        raise RuntimeError(lines[-1].removeprefix("error: ") if lines else f"exit code {done.returncode}")


TrainChild = Callable[[ChildResult, dict[str, str]], object]


def run_sweep(
    tracker: Tracker,
    project_dir: Path,
    name: str,
    children: list[ChildResult],
    jobs: int = 1,
    train_child: TrainChild | None = None,
) -> tuple[str, list[ChildResult]]:
    """Train the children (one after another, or ``jobs`` at a time in processes of their own); a child
    that fails is marked failed and the sweep goes on. Returns the parent run id and the results.

    ``train_child(child, tags)`` trains one child one after another (default: in this process; the
    Prefect sweep flow passes its train task, so each child is a task run)."""
    from nectargan_core.errors import describe_failure

    def default(child: ChildResult, tags: dict[str, str]) -> object:
        # In this process, unless children run side by side or each launches torchrun on its GPUs.
        if jobs == 1 and child.settings.train.nproc_per_node == 1:
            return _train_in_process(child, tracker, project_dir, tags)
        return _train_in_subprocess(child, project_dir, tags)

    train_child = train_child or default

    parent = _parent_run(tracker, name, [c.combination for c in children])

    def one(child: ChildResult) -> None:
        tags = {PARENT_TAG: parent, SWEEP_TAG: name, ROLE_TAG: "child", CHILD_TAG: child.combination.name}
        if (done := _finished_child(tracker, parent, child.settings)) is not None:
            child.run_id, child.status = done, "skipped"
            log.info("sweep %s: %s finished before (MLflow run %s), skipped", name, child.combination.name, done)
            return
        try:
            train_child(child, tags)
            child.status = "finished"
        except Exception as exc:  # one child failing (NaN, say) does not stop the others
            child.status, child.error = "failed", describe_failure(exc)
            log.error("sweep %s: %s failed: %s", name, child.combination.name, child.error)
        child.run_id = child.run_id or _child_run_id(tracker, parent, child)

    try:
        if jobs == 1:
            for child in children:
                one(child)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(one, children))
    except BaseException:
        tracker.client.set_terminated(parent, "KILLED")
        raise
    failed = all(child.status == "failed" for child in children)
    tracker.client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    for child in children:
        if child.run_id:
            collect_metrics(tracker, child)
    return parent, children


def collect_metrics(tracker: Tracker, child: ChildResult) -> None:
    """The child's final and best val metrics, from its MLflow run."""
    metrics = tracker.client.get_run(child.run_id).data.metrics
    child.metrics = {val_key(m): metrics[val_key(m)] for m in VAL_METRICS if val_key(m) in metrics}
    for metric in VAL_METRICS:
        history = tracker.client.get_metric_history(child.run_id, val_key(metric))
        if history:
            sign = 1 if HIGHER_IS_BETTER[metric] else -1
            top = max(history, key=lambda m: (sign * m.value, -m.step))
            child.best[val_key(metric)] = (top.value, top.step)


def _child_run_id(tracker: Tracker, parent: str, child: ChildResult) -> str | None:
    return tracker.newest_run(f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{CHILD_TAG}` = '{child.combination.name}'")


def best_child(children: Sequence[ChildResult], select_by: str) -> ChildResult | None:
    """The child with the best final ``select_by`` (``val/psnr``: highest; ``val/l1``: lowest)."""
    metric = select_by.removeprefix("val/")
    if metric not in VAL_METRICS:
        raise ValueError(f"--select-by {select_by!r}: use one of {', '.join(val_key(m) for m in VAL_METRICS)}")
    scored = [c for c in children if c.status != "failed" and select_by in c.metrics]
    if not scored:
        return None
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return max(scored, key=lambda c: sign * c.metrics[select_by])


def table(children: Sequence[ChildResult]) -> str:
    """Markdown: a row per child with its status, and per val metric its best (epoch) and final value."""
    keys = [val_key(m) for m in VAL_METRICS]
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
) -> list[Path]:
    """report.md, val_curves.png (every child overlaid) and grid.png (the same val inputs across the
    children) in the sweep folder, logged to the parent run."""
    from nectargan_core.reports.studies import val_curves, weightings_grid

    paths.root.mkdir(parents=True, exist_ok=True)
    trained = [c for c in children if c.run_id and c.status != "failed"]
    runs = {c.combination.name: RunPaths.of(c.settings) for c in trained}
    written = [val_curves({k: v.epochs for k, v in runs.items() if v.epochs.exists()}, paths.val_curves)]
    if (grid_png := weightings_grid({k: v.examples for k, v in runs.items()}, paths.grid)) is not None:
        written.append(grid_png)
    chosen = f"\nBest by the selected metric: **{best.combination.name}** (MLflow run {best.run_id})\n" if best else ""
    images = "".join(f"\n![{p.stem}]({p.name})\n" for p in written)
    paths.report.write_text(f"# Sweep {paths.root.name}\n\n{table(children)}{chosen}{images}")
    written.insert(0, paths.report)
    for path in written:
        tracker.client.log_artifact(parent, str(path), SWEEP_ARTIFACT)
    return written


def register_best(tracker: Tracker, parent: str, best: ChildResult, project_dir: Path) -> str:
    """Register the best child's final full state (this moves the alias) and tag the parent with it."""
    from nectargan_core.tracking.registry import register_model

    assert best.run_id is not None
    with tracker.start_run({}, system_metrics=False, run_id=best.run_id) as run_id:
        version = register_model(tracker, run_id, RunPaths.of(best.settings).latest, best.settings, project_dir)
    tracker.client.set_tag(parent, "best_child", f"{best.combination.name} (run {best.run_id}, version {version})")
    return version

"""A study's combinations of settings: a grid of ``key=v1,v2`` axes and/or a file of named
weightings, each validated into the settings of one child before anything trains. Each child
trains into its own folder under ``outputs.sweeps/NAME/runs/`` (never into ``train.output_dir``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nectargan_core.layout import SweepPaths
from nectargan_core.settings import Settings, SettingsError, changes_label, load_settings


@dataclass(frozen=True)
class Combination:
    name: str
    overrides: tuple[str, ...]  # "dotted.key=value", as -s takes them


@dataclass
class ChildResult:
    """One child of a study: what it trains, and how it went (val metrics from its MLflow run)."""

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
        Combination(" ".join(filter(None, (n.name, g.name))), (*n.overrides, *g.overrides)) for n in named for g in axes
    ]


def grid(specs: Sequence[str]) -> list[Combination]:
    """Every combination of ``key=v1,v2`` specs (in the order given), named for the settings that
    differ between them (``l1=50 sobel=0``: its MLflow run's name, its row in the report)."""
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
    varied = {key for key, choices in axes if len(choices) > 1} or {key for key, _ in axes}
    combinations = []
    for values in itertools.product(*(choices for _, choices in axes)):
        point = dict(zip((key for key, _ in axes), values, strict=True))
        label = changes_label({key: value for key, value in point.items() if key in varied})
        combinations.append(Combination(label, tuple(f"{key}={value}" for key, value in point.items())))
    return combinations


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

"""A search's space: per setting a range (``low:high``, ``low:high:log`` for a log scale; an int
setting gets an int range) or choices (``a,b,c``), from ``-s KEY=SPEC`` or a YAML file of
``KEY: SPEC``. Every axis is checked against the settings (its key, each bound, each choice) before
anything trains, so a bad space costs no trial.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import yaml

from nectargan_core.params_yaml import ParamsLoader, yaml_problem
from nectargan_core.settings import Settings, SettingsError, leaf_setting, with_changes
from nectargan_core.studies.grid import split_top_level

if TYPE_CHECKING:
    import optuna

Choice = None | bool | int | float | str  # what Optuna's categorical distribution holds
_RANGE = re.compile(r"([^:]+):([^:]+?)(?::(log))?")


@dataclass(frozen=True)
class Axis:
    """One setting's range (``low``..``high``, maybe log, maybe int) or its ``choices``."""

    key: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Choice, ...] = ()

    @property
    def spec(self) -> str:
        """As -s takes it."""
        if self.choices:
            return f"{self.key}={','.join(map(str, self.choices))}"
        return f"{self.key}={self.low:g}:{self.high:g}{':log' if self.log else ''}"

    def suggest(self, trial: optuna.Trial) -> Choice:
        """The trial's value of this setting (Optuna's param is named by the setting's key)."""
        if self.choices:
            return trial.suggest_categorical(self.key, self.choices)
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def _number_type(annotation: Any) -> type | None:
    """float or int for a number setting (optional ones too), None for anything else (bool included)."""
    kinds = {kind for kind in (annotation, *get_args(annotation)) if kind in (int, float)}
    return float if float in kinds else int if int in kinds else None


def _value(key: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=ParamsLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{key}: the value {text!r} is {yaml_problem(exc, text)}") from None


def _range(key: str, spec: str, kind: type | None) -> Axis:
    found = _RANGE.fullmatch(spec.strip())
    bounds = [_value(key, found[1]), _value(key, found[2])] if found else []
    if not found or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise ValueError(f"{key}: the range {spec!r} must look like low:high or low:high:log with numbers")
    if kind is None:
        raise ValueError(f"{key}: not a number setting, so it takes choices (a,b,c), not a range")
    low, high = bounds
    if kind is int and not all(float(b).is_integer() for b in bounds):
        raise ValueError(f"{key}: an int setting takes an int range (got {spec!r})")
    if low >= high:
        raise ValueError(f"{key}: the range {spec!r} is empty or inverted; low must be below high")
    if found[3] and low <= 0:
        raise ValueError(f"{key}: the log range {spec!r} needs low > 0")
    if kind is int:
        return Axis(key, int(low), int(high), bool(found[3]), integer=True)
    return Axis(key, float(low), float(high), bool(found[3]))


def _choices(key: str, values: Sequence[str]) -> Axis:
    parsed = [_value(key, text) for text in values if text]
    if len(parsed) < 2:
        raise ValueError(f"{key}: give a range low:high or at least two choices a,b (a fixed value goes in --base)")
    for value in parsed:
        if not isinstance(value, Choice):
            raise ValueError(f"{key}: the choice {value!r} is not a single number, text, true/false or null")
    return Axis(key, choices=tuple(parsed))


def parse_axis(key: str, spec: str | list[str], base: Settings) -> Axis:
    """One axis, its bounds or choices applied to ``base`` (ValueError naming the key otherwise)."""
    kind = _number_type(leaf_setting(key))
    if key == "train.output_dir":
        raise ValueError(f"{key}: every trial trains in a folder of its own, so it is no search axis")
    if isinstance(spec, list):
        axis = _choices(key, spec)
    elif len(values := split_top_level(spec)) > 1 or ":" not in spec:
        axis = _choices(key, values)
    else:
        axis = _range(key, spec, kind)
    for value in axis.choices or (axis.low, axis.high):
        try:
            with_changes(base, {key: value}, key)
        except SettingsError as exc:
            raise ValueError(f"{key}: {value!r} is refused by the settings: {'; '.join(exc.problems)}") from None
    return axis


def read_space_file(path: Path) -> list[tuple[str, str | list[str]]]:
    """A YAML file ``{dotted.key: "low:high[:log]" | "a,b,c" | [a, b, c]}``, read as text (so 1:30
    stays a range, not YAML 1.1's sexagesimal 90)."""
    try:
        tree = yaml.load(path.read_text(), Loader=yaml.BaseLoader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(str(path), [f"not a readable YAML file of search axes ({exc})"]) from None
    if not isinstance(tree, dict) or not tree or not all(isinstance(v, str | list) for v in tree.values()):
        raise SettingsError(str(path), ["expected {dotted.key: 'low:high' or 'a,b,c' or [a, b, c], ...}"])
    return list(tree.items())


def parse_space(specs: Sequence[str], file: Path | None, base: Settings, fixed: Sequence[str] = ()) -> list[Axis]:
    """Every axis of ``-s KEY=SPEC`` and the file, checked; ``fixed`` are the --base overrides."""
    given: list[tuple[str, str | list[str]]] = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        if not sep or not key.strip():
            raise SettingsError("search", [f"-s {spec!r} must look like key.sub=low:high or key.sub=a,b"])
        given.append((key.strip(), text))
    given += read_space_file(file) if file else []
    if not given:
        raise SettingsError("search", ["nothing to search: give -s key=low:high (or a,b) or --file space.yaml"])
    fixed_keys = {override.partition("=")[0].strip() for override in fixed}
    axes, problems, seen = [], [], set()
    for key, spec in given:
        try:
            if key in seen or key in fixed_keys:
                raise ValueError(f"{key}: given twice (as an axis{' and in --base' if key in fixed_keys else ''})")
            seen.add(key)
            axes.append(parse_axis(key, spec, base))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("search space", problems)
    return axes

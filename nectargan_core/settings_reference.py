"""The settings reference page (docs/settings.md), generated from the settings model.

The descriptions live once, in the model's fields; this writes them as tables grouped like
params.yaml, one row per key with its type, default and allowed values. `nectargan docs-settings`
writes the page, and a test fails when the checked-in page differs from what the model gives.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from nectargan_core.settings import Settings

HEADER = """# Settings reference

Every key of `params.yaml`, grouped like the file. Change one for a single run with
`nectargan train -s KEY=VALUE` (or `dvc exp run -S KEY=VALUE`), or edit `params.yaml`;
`nectargan settings` prints the values a run would use. Unknown keys and values outside
the allowed range are refused before anything trains, naming the key.

This page is generated from the settings model (`nectargan docs-settings`); edit the
descriptions there, not here.
"""


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "choice"
    if origin in (Union, types.UnionType):
        names = [_type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is tuple:
        return "[" + ", ".join(_type_name(arg) for arg in args) + "]"
    if origin is list:
        return "list"
    if origin is dict:
        return "map"
    if origin is not None and get_args(annotation):  # Annotated and the like
        return _type_name(args[0])
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _allowed(field: FieldInfo) -> str:
    """Choices of a Literal, or the bounds of a number (a range's ends each obey them)."""
    annotation = field.annotation
    choices = [arg for arg in get_args(annotation) if get_origin(arg) is Literal] or [annotation]
    values = [value for choice in choices if get_origin(choice) is Literal for value in get_args(choice)]
    if values:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in values)
    bounds = []
    for constraint in field.metadata:
        for name, sign in _BOUNDS.items():
            if isinstance(constraint, annotated_types.BaseMetadata) and hasattr(constraint, name):
                bounds.append(f"{sign} {getattr(constraint, name)}")
        if isinstance(constraint, annotated_types.MinLen):
            bounds.append(f"at least {constraint.min_length} character")
    return ", ".join(bounds)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(model: type[BaseModel], defaults: dict[str, Any], prefix: str, level: int) -> list[str]:
    """The table of ``model``'s leaf keys, then a section per group below it."""
    table, groups = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if _is_group(field.annotation):
            groups.append((name, key, field))
            continue
        default = f"`{json.dumps(defaults[name])}`"
        table.append(
            f"| `{key}` | {_type_name(field.annotation)} | {default} | {_allowed(field)} | "
            f"{_cell(field.description or '')} |"
        )
    lines = []
    if table:
        lines += ["", "| Key | Type | Default | Allowed | What it does |", "|---|---|---|---|---|", *table]
    for name, key, field in groups:
        lines += ["", f"{'#' * level} `{key}`", "", _cell(field.description or "")]
        lines += _rows(field.annotation, defaults[name], f"{key}.", min(level + 1, 6))
    return lines


def settings_reference() -> str:
    """The page: a table per group of params.yaml, in the file's order."""
    defaults = Settings().model_dump(mode="json")
    return HEADER + "\n".join(_rows(Settings, defaults, "", 2)) + "\n"

"""`nectargan settings`, `nectargan models` and `nectargan docs-settings`: what the settings and the networks are."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nectargan_core.cli.common import project_command, settings_of


def iter_settings(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, value, description) of every leaf setting, in declaration order."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from iter_settings(value, key + ".")
        else:
            yield key, value, field.description or ""


def _cmd_settings(args: argparse.Namespace) -> int:
    rows = list(iter_settings(settings_of(args)))
    width = max(len(key) for key, _, _ in rows)
    for key, value, description in rows:
        print(f"{key:<{width}}  {value!s:<14}  {description}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from nectargan_core.models import build_discriminator, build_generator, count_parameters

    settings = settings_of(args)
    print(f"generator      {count_parameters(build_generator(settings)):>12,} parameters")
    print(f"discriminator  {count_parameters(build_discriminator(settings)):>12,} parameters")
    return 0


def _cmd_docs_settings(args: argparse.Namespace) -> int:
    from nectargan_core.settings_reference import settings_reference

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(settings_reference())
    print(f"wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    project_command(
        sub, "settings", _cmd_settings, help="validate the params file and list every setting with its meaning"
    )
    project_command(sub, "models", _cmd_models, help="build the generator and discriminator and print their sizes")
    p = sub.add_parser("docs-settings", help="write the settings reference page from the settings model")
    p.add_argument("--out", type=Path, default=Path("docs/settings.md"), help="the page (default: %(default)s)")
    p.set_defaults(func=_cmd_docs_settings)

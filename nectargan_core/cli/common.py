"""What every command family shares: the params arguments, the settings they give, the tracker."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nectargan_core.settings import Settings, load_settings

if TYPE_CHECKING:
    from nectargan_core.tracking.tracker import Tracker


def add_params_args(
    parser: argparse.ArgumentParser,
    metavar: str = "KEY=VALUE",
    help: str = "override one setting, e.g. -s train.loss.l1=50 (repeatable)",
) -> None:
    """--params and -s/--set (repeatable, into ``overrides``); a sweep reads -s as a grid axis."""
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar=metavar, help=help)


def settings_of(args: argparse.Namespace) -> Settings:
    return load_settings(args.params, args.overrides)


def open_tracker(settings: Settings) -> Tracker:
    """The process's one connection to the tracking store (imported only by commands that track)."""
    from nectargan_core.tracking.tracker import Tracker

    return Tracker.connect(settings.tracking, Path.cwd())


def project_command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    """A subcommand that reads the project's settings (``--params``, ``-s``)."""
    parser = sub.add_parser(name, help=help)
    add_params_args(parser)
    parser.set_defaults(func=func)
    return parser

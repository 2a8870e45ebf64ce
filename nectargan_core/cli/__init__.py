"""The ``nectargan`` command: one subcommand per pipeline step and utility.

The commands that work on a project read ``--params`` (default params.yaml) with ``-s KEY=VALUE``
overrides, and take their default paths from those settings (``train.output_dir``, ``outputs.*``).
Each command opens the tracking store once, when it needs it, and imports only what it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nectargan_core.errors import exit_code, show_logs

# The commands of each family module (nectargan_core/cli/<family>.py, whose add_commands adds them).
# Running a command imports only its family, so a DVC stage depends on that one file of the CLI.
FAMILIES: dict[str, tuple[str, ...]] = {
    "info": ("settings", "models", "docs-settings"),
    "data": ("sample-data", "pair", "split", "import-data"),
    "pipeline": ("validate", "train", "examples", "evaluate", "export", "predict"),
    "runs": ("outputs", "disk", "forget", "compare", "sweep", "search", "runs"),
    "review": ("montage", "loss-graphs"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or (given a known ``command``) of that command's family only."""
    parser = argparse.ArgumentParser(prog="nectargan", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)
    known = any(command in commands for commands in FAMILIES.values())
    for family, commands in FAMILIES.items():
        if not known or command in commands:
            importlib.import_module(f"{__name__}.{family}").add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # --debug is the only option before it
    args = build_parser(command).parse_args(argv)
    show_logs()
    return exit_code(
        lambda: args.func(args), args.debug, "cached losses were written; continue with -s train.continue_train=true"
    )

"""The ``nectargan`` command: one subcommand per pipeline step, all reading params.yaml."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nectargan_core.settings import SettingsError, load_settings


def iter_settings(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, value, description) of every leaf setting, in declaration order."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from iter_settings(value, key + ".")
        else:
            yield key, value, field.description or ""


def _add_params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument(
        "-s",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. -s train.loss.l1=50 (repeatable)",
    )


def _cmd_settings(args: argparse.Namespace) -> int:
    settings = load_settings(args.params, args.overrides)
    rows = list(iter_settings(settings))
    width = max(len(key) for key, _, _ in rows)
    for key, value, description in rows:
        print(f"{key:<{width}}  {value!s:<14}  {description}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from nectargan_core.models import build_discriminator, build_generator, count_parameters

    settings = load_settings(args.params, args.overrides)
    print(f"generator      {count_parameters(build_generator(settings)):>12,} parameters")
    print(f"discriminator  {count_parameters(build_discriminator(settings)):>12,} parameters")
    return 0


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from nectargan_core.data.sample import generate_sample_dataset

    written = generate_sample_dataset(args.out, size=args.size, seed=args.seed)
    print(f"sample dataset in {args.out}: " + ", ".join(f"{n} {split}" for split, n in written.items()))
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_train(args: argparse.Namespace) -> int:
    from nectargan_core.training.callbacks import ConsoleReporter
    from nectargan_core.training.trainer import train

    settings = load_settings(args.params, args.overrides)
    # A plain `kill` (or a scheduler stopping the job) unwinds like Ctrl+C, so cached losses are written.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    result = train(settings, [ConsoleReporter()])
    print(
        f"trained epochs {result.start_epoch}..{result.last_epoch}; last checkpoint {result.checkpoint}; "
        f"outputs in {result.output_dir}/ (checkpoints/, examples/, loss_log.csv, epochs.csv, summary.json)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nectargan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("settings", help="validate the params file and list every setting with its meaning")
    _add_params_args(p)
    p.set_defaults(func=_cmd_settings)

    p = sub.add_parser("models", help="build the generator and discriminator and print their sizes")
    _add_params_args(p)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train (or continue, with train.continue_train) as params.yaml says")
    _add_params_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample-data", help="generate the bundled procedural facades dataset (no download)")
    p.add_argument("--out", type=Path, default=Path("data/sample"), help="dataset root (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="side of each half image in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    p.set_defaults(func=_cmd_sample_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (SettingsError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: cached losses were written; continue with -s train.continue_train=true", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

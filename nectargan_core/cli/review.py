"""Review of one run folder: the montage of example strips across epochs and the loss graphs."""

from __future__ import annotations

import argparse
from pathlib import Path

from nectargan_core.cli.common import project_command, settings_of


def _cmd_montage(args: argparse.Namespace) -> int:
    from nectargan_core.layout import ReviewPaths, RunPaths
    from nectargan_core.reports.review import example_montage

    settings = settings_of(args)
    examples = args.examples or RunPaths.of(settings).examples
    out = args.out or ReviewPaths(Path(settings.outputs.review)).montage
    print(f"montage: {example_montage(examples, out, args.every)}")
    return 0


def _cmd_loss_graphs(args: argparse.Namespace) -> int:
    from nectargan_core.layout import RunPaths
    from nectargan_core.reports.review import loss_graphs

    settings = settings_of(args)
    for path in loss_graphs(args.epochs or RunPaths.of(settings).epochs, args.out or Path(settings.outputs.review)):
        print(f"graph: {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = project_command(
        sub, "montage", _cmd_montage, help="one image of the example strips across epochs (every k-th epoch)"
    )
    p.add_argument("--examples", type=Path, default=None, help="strips folder (default: train.output_dir/examples)")
    p.add_argument("--out", type=Path, default=None, help="PNG file (default: outputs.review/montage.png)")
    p.add_argument("--every", type=int, default=1, help="show every k-th epoch (the last always)")

    p = project_command(
        sub, "loss-graphs", _cmd_loss_graphs, help="loss and learning-rate graphs as PNG from the epoch table"
    )
    p.add_argument("--epochs", type=Path, default=None, help="epoch table (default: train.output_dir/epochs.csv)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.review)")

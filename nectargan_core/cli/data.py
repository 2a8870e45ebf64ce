"""Dataset commands: the procedural sample data (stage prepare), pairing, splitting, importing."""

from __future__ import annotations

import argparse
from pathlib import Path

from nectargan_core.cli.common import project_command, settings_of


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from nectargan_core.data.sample import generate_sample_dataset

    cfg = settings_of(args).sample
    written = generate_sample_dataset(cfg)
    print(f"sample dataset in {cfg.out}: " + ", ".join(f"{n} {split}" for split, n in written.items()))
    return 0


def _cmd_pair(args: argparse.Namespace) -> int:
    from nectargan_core.data.utilities import REPORT_NAME, pair_folders

    report = pair_folders(args.a, args.b, args.out, args.size)
    print(report.table())
    print(f"{len(report.paired)} aligned pairs in {args.out}; report {args.out / REPORT_NAME}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from nectargan_core.data.utilities import split_dataset

    splits = split_dataset(args.source, args.out, tuple(args.fractions), args.seed)
    print(", ".join(f"{len(files)} {split}" for split, files in splits.items()) + f" in {args.out} (seed {args.seed})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from nectargan_core.data.utilities import import_dataset

    destination = import_dataset(args.source, args.name, Path.cwd())
    rel = destination.relative_to(Path.cwd())
    print(f"imported to {rel}, tracked by DVC ({rel}.dvc). Next: git add {rel}.dvc {rel.parent}/.gitignore,")
    print(f"set data.root: {rel} in params.yaml (with sizes and channels), then dvc repro")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    project_command(
        sub,
        "sample-data",
        _cmd_sample_data,
        help="stage prepare: generate the procedural facades dataset (no download)",
    )

    p = sub.add_parser("pair", help="pair an A/ and a B/ folder (matched by file name) into aligned A|B images")
    p.add_argument("--a", type=Path, required=True, help="folder of A (input) images")
    p.add_argument("--b", type=Path, required=True, help="folder of B (target) images")
    p.add_argument("--out", type=Path, required=True, help="output folder of aligned pairs")
    p.add_argument("--size", type=int, default=None, help="resize both halves to SIZE x SIZE")
    p.set_defaults(func=_cmd_pair)

    p = sub.add_parser("split", help="split a folder of pairs into train/val/test by fractions, with a seed")
    p.add_argument("--source", type=Path, required=True, help="folder of aligned pairs")
    p.add_argument("--out", type=Path, required=True, help="new dataset root (empty)")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("import-data", help="copy a dataset into data/NAME and track it with DVC")
    p.add_argument("--source", type=Path, required=True, help="dataset root with train/ and val/ (test/ optional)")
    p.add_argument("--name", required=True, help="folder name under data/")
    p.set_defaults(func=_cmd_import)

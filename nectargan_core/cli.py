"""The ``nectargan`` command: one subcommand per pipeline step and utility.

The commands that work on a project read ``--params`` (default params.yaml) with ``-s KEY=VALUE``
overrides, and take their default paths from those settings (``train.output_dir``, ``outputs.*``).
Each command opens the tracking store once, when it needs it, and imports only what it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from nectargan_core.errors import describe_failure
from nectargan_core.settings import Settings, load_settings

if TYPE_CHECKING:
    from nectargan_core.tracking.tracker import Tracker


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


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.params, args.overrides)


def _tracker(settings: Settings) -> Tracker:
    """The process's one connection to the tracking store (imported only by commands that track)."""
    from nectargan_core.tracking.tracker import Tracker

    return Tracker.connect(settings.tracking, Path.cwd())


def _cmd_settings(args: argparse.Namespace) -> int:
    rows = list(iter_settings(_settings(args)))
    width = max(len(key) for key, _, _ in rows)
    for key, value, description in rows:
        print(f"{key:<{width}}  {value!s:<14}  {description}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from nectargan_core.models import build_discriminator, build_generator, count_parameters

    settings = _settings(args)
    print(f"generator      {count_parameters(build_generator(settings)):>12,} parameters")
    print(f"discriminator  {count_parameters(build_discriminator(settings)):>12,} parameters")
    return 0


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from nectargan_core.data.sample import generate_sample_dataset

    cfg = _settings(args).sample
    written = generate_sample_dataset(cfg)
    print(f"sample dataset in {cfg.out}: " + ", ".join(f"{n} {split}" for split, n in written.items()))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from nectargan_core.stages import validate_stage

    result = validate_stage(_settings(args), args.report)
    print(result.table())
    print(f"report: {result.report_csv}")
    return 0


def _tags(pairs: list[str]) -> dict[str, str]:
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise ValueError(f"--tag {bad[0]!r} must look like KEY=VALUE")
    return dict(pair.split("=", 1) for pair in pairs)


def _cmd_train(args: argparse.Namespace) -> int:
    from nectargan_core.distributed import World, under_launcher
    from nectargan_core.stages import train_stage
    from nectargan_core.training.callbacks import ConsoleReporter
    from nectargan_core.training.interrupt import stop_at_step_boundary, term_when_launcher_dies

    settings = _settings(args)
    under_dvc = "DVC_STAGE" in os.environ
    if settings.train.nproc_per_node > 1 and not under_launcher():
        from nectargan_core.training.launch import launch

        if under_dvc:
            term_when_launcher_dies()  # torchrun's launcher then stops the training processes
        return launch(settings.train.nproc_per_node, args.argv)
    world = World.from_env()
    tracker = _tracker(settings) if world.is_main else None  # the other ranks never touch the store
    # A plain `kill`, Ctrl+C, or (under `dvc repro`) the death of dvc stops after the current step.
    with stop_at_step_boundary(follow_launcher=under_dvc):
        callbacks = [ConsoleReporter()] if world.is_main else []
        result = train_stage(
            settings, tracker, Path.cwd(), callbacks, tags=_tags(args.tags), register=not args.no_register
        )
    if not world.is_main:
        return 0
    print(
        f"trained to epoch {result.last_epoch}; last checkpoint {result.checkpoint}; MLflow run {result.run_id}; "
        f"registered {settings.tracking.registered_model} version {result.model_version} "
        f"(alias {settings.tracking.alias}); summary {result.summary}"
    )
    return 0


def _cmd_examples(args: argparse.Namespace) -> int:
    from nectargan_core.stages import examples_stage

    settings = _settings(args)
    paths = examples_stage(settings, _tracker(settings), args.out)
    print(f"{len(paths)} example strips in {paths[0].parent}")  # at least one: the stage shows >= 1 sample
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nectargan_core.stages import evaluate_stage

    settings = _settings(args)
    result = evaluate_stage(settings, _tracker(settings), args.out, args.samples)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(f"evaluated epoch {result.epoch} on {result.split}: {shown}")
    for notice in result.notices:
        print(notice)
    print(f"table {result.table}; report {result.report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nectargan_core.stages import export_stage

    settings = _settings(args)
    result = export_stage(settings, _tracker(settings), args.out, args.opset)
    diffs = ", ".join(f"{case}: {value:.2e}" for case, value in result.max_abs_diff.items())
    print(
        f"exported epoch {result.epoch} to {result.path}; max |onnxruntime - torch| {diffs} (bound {result.tolerance})"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from nectargan_core.stages import predict_stage

    settings = _settings(args)
    tracker = _tracker(settings) if args.model.startswith("models:/") else None
    written = predict_stage(settings, args.model, args.input, args.out, args.mode, tracker)
    print(f"{len(written)} images written to {written[0].parent}")  # an empty input folder is an error
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


def _cmd_montage(args: argparse.Namespace) -> int:
    from nectargan_core.layout import ReviewPaths, RunPaths
    from nectargan_core.reports.review import example_montage

    settings = _settings(args)
    examples = args.examples or RunPaths.of(settings).examples
    out = args.out or ReviewPaths(Path(settings.outputs.review)).montage
    print(f"montage: {example_montage(examples, out, args.every)}")
    return 0


def _cmd_loss_graphs(args: argparse.Namespace) -> int:
    from nectargan_core.layout import RunPaths
    from nectargan_core.reports.review import loss_graphs

    settings = _settings(args)
    for path in loss_graphs(args.epochs or RunPaths.of(settings).epochs, args.out or Path(settings.outputs.review)):
        print(f"graph: {path}")
    return 0


def _cmd_outputs(args: argparse.Namespace) -> int:
    from nectargan_core.layout import where_things_are
    from nectargan_core.tracking.tracker import tracking_uri

    settings = _settings(args)
    uri = tracking_uri(settings.tracking, Path.cwd())
    ui = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    rows = [*where_things_are(settings), ("MLflow UI", ui)]
    width = max(len(what) for what, _ in rows)
    for what, where in rows:
        print(f"{what:<{width}}  {where}")
    return 0


def _cmd_disk(args: argparse.Namespace) -> int:
    from nectargan_core.reports.disk import disk_report, format_report, mlflow_rows

    settings = _settings(args)
    tracker = _tracker(settings)
    rows, total = disk_report(settings, Path.cwd(), mlflow_rows(tracker))
    print(format_report(rows, total))
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tracker = _tracker(settings)
    for line in tracker.forget_runs(args.runs):
        print(f"deleted {line}")
    if tracker.uri.startswith(("http://", "https://")):  # the database URI (with its password) is the server's
        print('free the bytes on the tracking server: mlflow gc --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"')
    else:
        print(f"free the bytes with: mlflow gc --backend-store-uri {tracker.uri} --tracking-uri {tracker.uri}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from nectargan_core.tracking.compare import compare_runs

    settings = _settings(args)
    out = args.out or Path(settings.outputs.compare)
    query = args.filter
    if args.sweep:
        from nectargan_core.sweep import children_filter

        query = " and ".join(filter(None, (query, children_filter(args.sweep))))
    tracker = _tracker(settings)
    if args.sweep:
        from nectargan_core.sweep import recorded_children, table

        print(table(recorded_children(tracker, args.sweep)))
    board = compare_runs(settings, tracker, out, args.runs, query)
    print(board.to_markdown())
    print(f"leaderboard and side_by_side.png in {out}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from nectargan_core import sweep

    named = sweep.named_weightings(args.file) if args.file else []
    combinations = sweep.combine(named, sweep.grid(args.overrides))
    if len(combinations) == 1 and not combinations[0].overrides:
        raise ValueError("nothing to sweep: give -s key=v1,v2 (commas make the grid) or --file weightings.yaml")
    name = args.name or sweep.sweep_name(combinations)
    settings, paths, children = sweep.plan(args.params, args.base, combinations, name)
    tracker = _tracker(settings)
    print(f"sweep {name}: {len(children)} combinations, trained into {paths.root / 'runs'}")
    parent, children = sweep.run_sweep(tracker, Path.cwd(), name, children, args.jobs)
    best = sweep.best_child(children, args.select_by)
    version = sweep.register_best(tracker, parent, best, Path.cwd()) if args.register_best and best else None
    written = sweep.write_report(tracker, parent, paths, children, best)
    print(sweep.table(children))
    if best is not None:
        print(f"best by {args.select_by}: {best.combination.name} (MLflow run {best.run_id})")
    if version is not None:
        print(f"registered {settings.tracking.registered_model} version {version} (alias {settings.tracking.alias})")
    print(f"parent MLflow run {parent}; report {written[0]}")
    failed = [c for c in children if c.status == "failed"]
    return 1 if failed else 0


def _project_command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    """A subcommand that reads the project's settings (``--params``, ``-s``)."""
    parser = sub.add_parser(name, help=help)
    _add_params_args(parser)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nectargan", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _project_command(
        sub, "settings", _cmd_settings, help="validate the params file and list every setting with its meaning"
    )

    p = _project_command(sub, "models", _cmd_models, help="build the generator and discriminator and print their sizes")

    p = _project_command(
        sub,
        "sample-data",
        _cmd_sample_data,
        help="stage prepare: generate the procedural facades dataset (no download)",
    )

    p = _project_command(
        sub, "validate", _cmd_validate, help="stage validate: check every pair of the dataset, write the report"
    )
    p.add_argument("--report", type=Path, default=None, help="report folder (default: outputs.validation)")

    p = _project_command(
        sub, "train", _cmd_train, help="stage train: train (or continue) in an MLflow run, register the checkpoint"
    )
    p.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra tag of the MLflow run (repeatable; the Prefect flow passes its flow run id)",
    )
    p.add_argument("--no-register", action="store_true", help="train and track without registering (sweep children)")

    p = _project_command(
        sub, "examples", _cmd_examples, help="stage examples: strips of the final checkpoint on validation samples"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.examples)")

    p = _project_command(
        sub, "evaluate", _cmd_evaluate, help="stage evaluate: per-image metrics of the final checkpoint on test"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.eval)")
    p.add_argument("--samples", type=int, default=None, help="best/worst images per metric (evaluate.samples)")

    p = _project_command(
        sub, "export", _cmd_export, help="stage export: the final generator as ONNX, checked against PyTorch"
    )
    p.add_argument("--out", type=Path, default=None, help="ONNX file (default: outputs.export/generator.onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (%(default)s)")

    p = _project_command(
        sub, "predict", _cmd_predict, help="run a checkpoint, models:/ URI or ONNX file over a folder of images"
    )
    p.add_argument("--model", required=True, help="checkpoint file, models:/NAME@ALIAS, models:/NAME/VERSION or .onnx")
    p.add_argument("--input", type=Path, required=True, help="folder of input images (any size)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.predict)")
    p.add_argument(
        "--mode",
        choices=["resize", "pad"],
        default="resize",
        help="resize: to the trained crop and back; pad: full resolution, padded to the size multiple",
    )

    p = _project_command(
        sub, "outputs", _cmd_outputs, help="where every output of the pipeline is, as the settings place it"
    )

    p = _project_command(
        sub, "disk", _cmd_disk, help="where the bytes are: run folder, stage outputs, DVC cache and remote, MLflow runs"
    )

    p = _project_command(
        sub, "forget", _cmd_forget, help="delete MLflow runs with their registered versions and models (then mlflow gc)"
    )
    p.add_argument("--runs", nargs="+", required=True, help="MLflow run ids")

    p = _project_command(
        sub, "compare", _cmd_compare, help="leaderboard of MLflow runs (differing settings, eval metrics) + images"
    )
    p.add_argument("--runs", nargs="*", default=[], help="MLflow run ids (default: every finished run)")
    p.add_argument("--filter", default="", help="MLflow filter, e.g. \"params.`train.loss.l1` = '50.0'\"")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.compare)")
    p.add_argument("--sweep", default=None, help="the finished children of this sweep (its name)")

    p = sub.add_parser("sweep", help="train a grid of settings as MLflow child runs under one parent, then compare")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    p.add_argument(
        "-s",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a grid axis: top-level commas separate the values ([1,4] stays one value); repeatable",
    )
    p.add_argument("--base", action="append", default=[], metavar="KEY=VALUE", help="a fixed override for every child")
    p.add_argument("--file", type=Path, default=None, help="YAML of named weightings {name: {key: value}}")
    p.add_argument("--name", default=None, help="the sweep's name (default: from the grid; a rerun resumes it)")
    p.add_argument("--jobs", type=int, default=1, help="children trained at a time, each in its own process")
    p.add_argument("--select-by", default="val/psnr", help="the val metric that picks the best child")
    p.add_argument("--register-best", action="store_true", help="register the best child (moves the alias)")
    p.set_defaults(func=_cmd_sweep)

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

    p = _project_command(
        sub, "montage", _cmd_montage, help="one image of the example strips across epochs (every k-th epoch)"
    )
    p.add_argument("--examples", type=Path, default=None, help="strips folder (default: train.output_dir/examples)")
    p.add_argument("--out", type=Path, default=None, help="PNG file (default: outputs.review/montage.png)")
    p.add_argument("--every", type=int, default=1, help="show every k-th epoch (the last always)")

    p = _project_command(
        sub, "loss-graphs", _cmd_loss_graphs, help="loss and learning-rate graphs as PNG from the epoch table"
    )
    p.add_argument("--epochs", type=Path, default=None, help="epoch table (default: train.output_dir/epochs.csv)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.review)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a launcher repeats in each process
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {describe_failure(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: cached losses were written; continue with -s train.continue_train=true", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

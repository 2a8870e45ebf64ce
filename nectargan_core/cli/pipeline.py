"""The pipeline's stage commands (validate, train, examples, evaluate, export) and predict.

Each runs its stage from ``nectargan_core.stages`` and prints what it made.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nectargan_core.cli.common import open_tracker, project_command, settings_of


def _cmd_validate(args: argparse.Namespace) -> int:
    from nectargan_core.stages import validate_stage

    result = validate_stage(settings_of(args), args.report)
    print(result.table())
    print(f"report: {result.report_csv}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from nectargan_core.launch import TrainRequest, start_training
    from nectargan_core.training.callbacks import ConsoleReporter
    from nectargan_core.training.interrupt import stop_at_step_boundary

    settings = settings_of(args)
    # A plain `kill`, Ctrl+C, or (under `dvc repro`) the death of dvc stops after the current step.
    with stop_at_step_boundary(follow_launcher="DVC_STAGE" in os.environ):
        result = start_training(TrainRequest(settings), Path.cwd(), callbacks=[ConsoleReporter()])
    if result is None:  # a torchrun process other than rank 0
        return 0
    print(
        f"trained to epoch {result.last_epoch}; last checkpoint {result.checkpoint}; MLflow run {result.run_id}; "
        f"registered {settings.tracking.registered_model} version {result.model_version} "
        f"(alias {settings.tracking.alias}); summary {result.summary}"
    )
    return 0


def _cmd_examples(args: argparse.Namespace) -> int:
    from nectargan_core.stages import examples_stage

    settings = settings_of(args)
    paths = examples_stage(settings, open_tracker(settings), args.out)
    print(f"{len(paths)} example strips in {paths[0].parent}")  # at least one: the stage shows >= 1 sample
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nectargan_core.stages import evaluate_stage

    settings = settings_of(args)
    result = evaluate_stage(settings, open_tracker(settings), args.out, args.samples)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(f"evaluated epoch {result.epoch} on {result.split}: {shown}")
    for notice in result.notices:
        print(notice)
    print(f"table {result.table}; report {result.report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nectargan_core.stages import export_stage

    settings = settings_of(args)
    result = export_stage(settings, open_tracker(settings), args.out, args.opset)
    diffs = ", ".join(f"{case}: {value:.2e}" for case, value in result.max_abs_diff.items())
    print(
        f"exported epoch {result.epoch} to {result.path}; max |onnxruntime - torch| {diffs} (bound {result.tolerance})"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from nectargan_core.stages import predict_stage

    settings = settings_of(args)
    tracker = open_tracker(settings) if args.model.startswith("models:/") else None
    summary = predict_stage(
        settings,
        args.model,
        args.input,
        args.out,
        args.mode,
        tracker,
        batch_size=args.batch_size,
        workers=args.workers,
        strict=args.strict,
        pairs=args.pairs,
    )
    print(summary.line())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = project_command(
        sub, "validate", _cmd_validate, help="stage validate: check every pair of the dataset, write the report"
    )
    p.add_argument("--report", type=Path, default=None, help="report folder (default: outputs.validation)")

    p = project_command(
        sub, "train", _cmd_train, help="stage train: train (or continue) in an MLflow run, register the checkpoint"
    )

    p = project_command(
        sub, "examples", _cmd_examples, help="stage examples: strips of the final checkpoint on validation samples"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.examples)")

    p = project_command(
        sub, "evaluate", _cmd_evaluate, help="stage evaluate: per-image metrics of the final checkpoint on test"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.eval)")
    p.add_argument("--samples", type=int, default=None, help="best/worst images per metric (evaluate.samples)")

    p = project_command(
        sub, "export", _cmd_export, help="stage export: the final generator as ONNX, checked against PyTorch"
    )
    p.add_argument("--out", type=Path, default=None, help="ONNX file (default: outputs.export/generator.onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (%(default)s)")

    p = project_command(
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
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="images per forward pass (default 8 with --mode resize, 1 with --mode pad; a batch holds one size)",
    )
    p.add_argument(
        "--workers",
        type=_not_negative,
        default=None,
        help="image decoding threads (default: cores - 1, at most 4; 0: decode in turn with the model)",
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad image instead of listing and skipping it"
    )
    p.add_argument(
        "--pairs",
        choices=["auto", "a", "b", "whole"],
        default="auto",
        help="auto: refuse a folder of aligned A|B pairs; a / b: take that half of each image; whole: whole images",
    )

"""Runs and studies in the tracking store: where things are, disk use, forgetting runs, compare, sweep, search."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nectargan_core.cli.common import add_params_args, open_tracker, project_command, settings_of


def _cmd_outputs(args: argparse.Namespace) -> int:
    from nectargan_core.layout import where_things_are
    from nectargan_core.tracking.tracker import tracking_uri

    settings = settings_of(args)
    uri = tracking_uri(settings.tracking, Path.cwd())
    # The mlflow beside this interpreter: a bare `mlflow` is on PATH only in an activated venv.
    mlflow = Path(sys.executable).parent / "mlflow"
    shown = os.path.relpath(mlflow) if mlflow.is_relative_to(Path.cwd()) else mlflow
    ui = uri if uri.startswith(("http://", "https://")) else f"{shown} ui --backend-store-uri {uri}"
    rows = [*where_things_are(settings), ("MLflow UI", ui)]
    width = max(len(what) for what, _ in rows)
    for what, where in rows:
        print(f"{what:<{width}}  {where}")
    return 0


def _cmd_disk(args: argparse.Namespace) -> int:
    from nectargan_core.reports.disk import disk_report, format_report
    from nectargan_core.tracking.storage import local_store, mlflow_rows

    settings = settings_of(args)
    tracker = open_tracker(settings)
    rows, total = disk_report(settings, Path.cwd(), mlflow_rows(tracker), local_store(tracker))
    print(format_report(rows, total))
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    tracker = open_tracker(settings)
    for line in tracker.forget_runs(args.runs):
        print(f"deleted {line}")
    if tracker.uri.startswith(("http://", "https://")):  # the database URI (with its password) is the server's
        print('free the bytes on the tracking server: mlflow gc --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"')
    else:
        print(f"free the bytes with: mlflow gc --backend-store-uri {tracker.uri} --tracking-uri {tracker.uri}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from nectargan_core.tracking.compare import compare_runs

    settings = settings_of(args)
    out = args.out or Path(settings.outputs.compare)
    query = args.filter
    if args.sweep:
        from nectargan_core.tracking.studies import children_filter

        query = " and ".join(filter(None, (query, children_filter(args.sweep))))
    tracker = open_tracker(settings)
    if args.sweep:
        from nectargan_core.studies.sweep import recorded_children, table

        print(table(recorded_children(tracker, args.sweep)))
    board = compare_runs(settings, tracker, out, args.runs, query)
    print(board.to_markdown())
    print(f"leaderboard and side_by_side.png in {out}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from nectargan_core.studies import grid
    from nectargan_core.studies.sweep import sweep, table

    named = grid.named_weightings(args.file) if args.file else []
    combinations = grid.combine(named, grid.grid(args.overrides))
    if len(combinations) == 1 and not combinations[0].overrides:
        raise ValueError("nothing to sweep: give -s key=v1,v2 (commas make the grid) or --file weightings.yaml")
    name = args.name or grid.sweep_name(combinations)
    settings, paths, children = grid.plan(args.params, args.base, combinations, name)
    tracker = open_tracker(settings)
    print(f"sweep {name}: {len(children)} combinations, trained into {paths.root / 'runs'}")
    done = sweep(tracker, Path.cwd(), name, paths, children, args.select_by, args.register_best, args.jobs)
    print(table(done.children))
    if done.best is not None:
        print(f"best by {args.select_by}: {done.best.combination.name} (MLflow run {done.best.run_id})")
    if done.model_version is not None:
        print(
            f"registered {settings.tracking.registered_model} version {done.model_version} "
            f"(alias {settings.tracking.alias})"
        )
    print(f"parent MLflow run {done.parent_run_id}; report {done.report}")
    return 1 if any(c.status == "failed" for c in done.children) else 0


def _cmd_search(args: argparse.Namespace) -> int:
    from nectargan_core.studies.search import default_storage, open_study, plan, search, table

    base, paths, axes = plan(
        args.params, args.base, args.overrides, args.file, args.study, args.sampler, args.select_by
    )
    if base.train.nproc_per_node > 1 and args.pruner != "none":
        raise ValueError("--pruner: a pruned trial trains in this process; with train.nproc_per_node > 1 use none")
    study = open_study(
        args.storage or default_storage(Path.cwd()),
        args.study,
        args.sampler,
        args.seed,
        args.pruner,
        args.select_by,
        axes,
    )
    tracker = open_tracker(base)
    print(f"search {args.study}: {args.trials} trials over {len(axes)} settings, trained into {paths.root / 'runs'}")
    done = search(tracker, Path.cwd(), study, paths, base, axes, args.trials, args.select_by, args.register_best)
    print(table(done.study))
    if done.best is not None:
        print(f"best by {args.select_by}: trial {done.best.number} ({done.best.value:.4f}) {done.best.params}")
    if done.model_version is not None:
        print(f"registered {base.tracking.registered_model} version {done.model_version} (alias {base.tracking.alias})")
    print(f"parent MLflow run {done.parent_run_id}; report {done.report}")
    return 1 if done.failed else 0


def _cmd_runs_sync(args: argparse.Namespace) -> int:
    from nectargan_core.layout import RunPaths
    from nectargan_core.tracking.journal import sync_run

    settings = settings_of(args)
    paths = RunPaths(args.output_dir) if args.output_dir else RunPaths.of(settings)
    sent = sync_run(open_tracker(settings), paths)
    print(f"{paths.root}: {sent} kept records sent to the tracking server; nothing is left to sync")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:

    project_command(
        sub, "outputs", _cmd_outputs, help="where every output of the pipeline is, as the settings place it"
    )

    project_command(
        sub, "disk", _cmd_disk, help="where the bytes are: run folder, stage outputs, DVC cache and remote, MLflow runs"
    )

    p = project_command(
        sub, "forget", _cmd_forget, help="delete MLflow runs with their registered versions and models (then mlflow gc)"
    )
    p.add_argument("--runs", nargs="+", required=True, help="MLflow run ids")

    p = project_command(
        sub, "compare", _cmd_compare, help="leaderboard of MLflow runs (differing settings, eval metrics) + images"
    )
    p.add_argument("--runs", nargs="*", default=[], help="MLflow run ids (default: every finished run)")
    p.add_argument("--filter", default="", help="MLflow filter, e.g. \"params.`train.loss.l1` = '50.0'\"")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: outputs.compare)")
    p.add_argument("--sweep", default=None, help="the finished children of this sweep (its name)")

    p = sub.add_parser("sweep", help="train a grid of settings as MLflow child runs under one parent, then compare")
    add_params_args(
        p, "KEY=V1,V2", "a grid axis: top-level commas separate the values ([1,4] stays one value); repeatable"
    )
    p.add_argument("--base", action="append", default=[], metavar="KEY=VALUE", help="a fixed override for every child")
    p.add_argument("--file", type=Path, default=None, help="YAML of named weightings {name: {key: value}}")
    p.add_argument("--name", default=None, help="the sweep's name (default: from the grid; a rerun resumes it)")
    p.add_argument("--jobs", type=int, default=1, help="children trained at a time, each in its own process")
    p.add_argument("--select-by", default="val/psnr", help="the val metric that picks the best child")
    p.add_argument("--register-best", action="store_true", help="register the best child (moves the alias)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("search", help="an Optuna study over settings: each trial an MLflow child run, then a report")
    add_params_args(
        p, "KEY=SPEC", "a search axis: low:high (float or int as the setting), low:high:log, or choices a,b,c"
    )
    p.add_argument("--file", type=Path, default=None, help="YAML of search axes {key: 'low:high' or 'a,b,c'}")
    p.add_argument("--base", action="append", default=[], metavar="KEY=VALUE", help="a fixed override for every trial")
    p.add_argument("--trials", type=int, default=10, help="trials to run now (a rerun of the study adds more)")
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe", help="grid: choice axes only")
    p.add_argument("--seed", type=int, default=None, help="the sampler's seed (default: random)")
    p.add_argument("--pruner", choices=("median", "halving", "none"), default="median", help="stops weak trials early")
    p.add_argument("--select-by", default="val/psnr", help="the val metric the study optimises")
    p.add_argument("--study", default="search", help="the study's name (a rerun continues it)")
    p.add_argument("--storage", default=None, help="Optuna storage, any SQLAlchemy URL (default: sqlite optuna.db)")
    p.add_argument("--register-best", action="store_true", help="register the best trial (moves the alias)")
    p.set_defaults(func=_cmd_search)

    runs = sub.add_parser("runs", help="a training run's records in the tracking store")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    p = project_command(
        runs_sub, "sync", _cmd_runs_sync, help="send what a run folder kept while the tracking server was away"
    )
    p.add_argument("--output-dir", type=Path, default=None, help="the run folder (default: train.output_dir)")

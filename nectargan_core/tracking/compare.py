"""Compare tracked runs: a leaderboard of the settings that differ and the evaluation metrics, and one
image of the final example strips side by side (input | each run's output | target).

Runs are picked by id or by an MLflow filter string over the experiment, e.g.
``params.`train.loss.l1` = '50.0'`` or ``metrics.`eval/ssim` > 0.5``.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from PIL import Image, ImageDraw, ImageFont

from nectargan_core.files import atomic_path, image_grid, save_image_atomic, split_strip, write_text_atomic
from nectargan_core.layout import STRIP_PATTERN, ComparePaths, find_strips
from nectargan_core.metric_names import VAL_PREFIX
from nectargan_core.settings import Settings, short_keys
from nectargan_core.tracking.tracker import EVAL_METRIC_PREFIX, FINAL_EXAMPLES_ARTIFACT, Tracker

log = logging.getLogger(__name__)

HEADER_HEIGHT = 48
"""Pixels of the label row above the images of ``side_by_side`` (room for a name and three params)."""

EVAL_ORDER = tuple(EVAL_METRIC_PREFIX + name for name in ("l1", "l2", "psnr", "ssim", "sobel", "laplacian"))
"""Column order of the known evaluation metrics; any other ``eval/*`` metric follows, sorted."""

SORT_METRIC = EVAL_ORDER[0]

Cell = str | float | None


# ---------------------------------------------------------------- selecting runs


def select_runs(
    client: MlflowClient, experiment: str, run_ids: Sequence[str] = (), filter_string: str = ""
) -> list[Run]:
    """The runs named by id (in the order given), or else the finished runs of the experiment (by name)
    that match the MLflow filter string, newest first. At least two runs are needed for a comparison."""
    if run_ids and filter_string:
        raise ValueError("give run ids or a filter string, not both")
    if run_ids:
        runs = _runs_by_id(client, list(dict.fromkeys(run_ids)))
        what = f"run ids {', '.join(run_ids)}"
    else:
        runs = _search_finished(client, experiment, filter_string)
        what = f"finished runs in experiment {experiment!r}" + (f" matching {filter_string!r}" if filter_string else "")
    if len(runs) < 2:
        raise ValueError(f"comparing needs at least 2 runs; {what} gave {len(runs)}")
    return runs


def _runs_by_id(client: MlflowClient, run_ids: list[str]) -> list[Run]:
    runs, missing = [], []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except MlflowException as exc:
            if exc.error_code not in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)):
                raise
            missing.append(run_id)
    if missing:
        raise ValueError(f"no such MLflow run: {', '.join(missing)}")
    return runs


def _search_finished(client: MlflowClient, experiment: str, filter_string: str) -> list[Run]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    query = " and ".join(part for part in (filter_string.strip(), "attributes.status = 'FINISHED'") if part)
    runs: list[Run] = []
    token = None
    while True:
        try:
            page = client.search_runs(
                [found.experiment_id],
                query,
                run_view_type=ViewType.ACTIVE_ONLY,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
        except MlflowException as exc:
            raise ValueError(f"filter string {filter_string!r}: {exc.message}") from None
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# ---------------------------------------------------------------- leaderboard


def differing_params(runs: Sequence[Run]) -> list[str]:
    """Param keys whose values differ between at least two runs (missing in a run counts), sorted."""
    keys = {key for run in runs for key in run.data.params}
    return sorted(key for key in keys if len({run.data.params.get(key) for run in runs}) > 1)


def _eval_keys(runs: Sequence[Run]) -> list[str]:
    """The ``eval/*`` metrics, then the final per-epoch validation metrics (``val/*``)."""
    present = {key for run in runs for key in run.data.metrics if key.startswith(EVAL_METRIC_PREFIX)}
    val = sorted({key for run in runs for key in run.data.metrics if key.startswith(VAL_PREFIX)})
    return [key for key in EVAL_ORDER if key in present] + sorted(present - set(EVAL_ORDER)) + val


def _format(value: Cell) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value.replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class Leaderboard:
    """One row per run: id, name, the params that differ between the runs and the ``eval/*`` metrics."""

    differing: list[str]
    rows: list[dict[str, Cell]]

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else ["run_id", "run_name", *self.differing]

    def to_markdown(self) -> str:
        columns = self.columns
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" if column.startswith(EVAL_METRIC_PREFIX) else "---" for column in columns) + "|",
        ]
        lines += ["| " + " | ".join(_format(row[column]) for column in columns) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """``leaderboard.csv`` (full precision, empty cells for missing values) and ``leaderboard.md``."""
        csv_path, md_path = ComparePaths(out_dir).leaderboard_csv, ComparePaths(out_dir).leaderboard_md
        with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({key: "" if value is None else value for key, value in row.items()})
        write_text_atomic(md_path, self.to_markdown())
        return csv_path, md_path


def leaderboard(runs: Sequence[Run]) -> Leaderboard:
    """Rows sorted by ``eval/l1`` ascending (runs without it last, in the given order otherwise)."""
    differing = differing_params(runs)
    metrics = _eval_keys(runs)
    rows: list[dict[str, Cell]] = []
    for run in runs:
        row: dict[str, Cell] = {"run_id": run.info.run_id, "run_name": run.info.run_name}
        row |= {key: run.data.params.get(key) for key in differing}
        row |= {key: run.data.metrics.get(key) for key in metrics}
        rows.append(row)
    if SORT_METRIC in metrics:
        rows.sort(key=lambda row: (row[SORT_METRIC] is None, row[SORT_METRIC] or 0.0))
    return Leaderboard(differing, rows)


# ---------------------------------------------------------------- side by side


def _short_value(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except ValueError:
        return value if len(value) <= 24 else value[:23] + "…"
    return f"{number:g}" if number == number else value  # 50.0 -> 50, 0.0002 -> 0.0002


def run_label(run: Run, differing: Sequence[str]) -> list[str]:
    """Header lines of a run's column: its name (or short id), then ``l1=50`` per differing param."""
    names = short_keys(differing)
    head = run.info.run_name or run.info.run_id[:8]
    return [head] + [f"{names[key]}={_short_value(run.data.params.get(key))}" for key in differing]


def _strips(client: MlflowClient, run: Run, dst: Path) -> dict[int, Path]:
    """The run's final strips by sample index (of the latest epoch logged), downloaded into ``dst``."""
    name = run.info.run_name or "unnamed"
    if not client.list_artifacts(run.info.run_id, FINAL_EXAMPLES_ARTIFACT):
        raise ValueError(
            f"run {run.info.run_id} ({name}) has no example strips under {FINAL_EXAMPLES_ARTIFACT}; "
            "run the examples stage"
        )
    dst.mkdir(parents=True, exist_ok=True)
    # one transfer per run
    folder = Path(client.download_artifacts(run.info.run_id, FINAL_EXAMPLES_ARTIFACT, str(dst)))
    by_epoch: dict[int, dict[int, Path]] = {}
    for (epoch, sample), path in find_strips(folder).items():
        by_epoch.setdefault(epoch, {})[sample] = path
    if not by_epoch:
        raise ValueError(f"run {run.info.run_id} ({name}): no {STRIP_PATTERN} strips under {FINAL_EXAMPLES_ARTIFACT}")
    return by_epoch[max(by_epoch)]


def _label_cell(lines: Sequence[str], width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """A header cell of one column: text clipped at the column's edge, so long labels never overlap."""
    cell = Image.new("RGB", (width, HEADER_HEIGHT), "white")
    draw = ImageDraw.Draw(cell)
    y = 2
    for line in lines:
        box = draw.textbbox((0, 0), line, font=font)
        if y + (box[3] - box[1]) > HEADER_HEIGHT:
            break
        draw.text((2, y), line, fill="black", font=font)
        y += box[3] - box[1] + 2
    return cell


def side_by_side(client: MlflowClient, runs: Sequence[Run], out_path: Path, samples: int = 4) -> Path:
    """One PNG: a label row, then per sample the input, each run's generated image and the target.

    Input and target come from the first run; samples are matched across runs by their sample index.
    Cells are the first run's image size (other runs' images are resized to it when they differ).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, not {samples}")
    differing = differing_params(runs)
    with tempfile.TemporaryDirectory(prefix="nectargan-compare-") as tmp:
        strips = [_strips(client, run, Path(tmp) / run.info.run_id) for run in runs]
        common = sorted(set.intersection(*(set(s) for s in strips)))[:samples]
        if not common:
            raise ValueError("the runs share no example sample index; export examples of the same samples")
        thirds = [[split_strip(s[index]) for index in common] for s in strips]
    cell_w, cell_h = thirds[0][0][0].size
    cells = [
        [thirds[0][row][0], *(run_thirds[row][1] for run_thirds in thirds), thirds[0][row][2]]
        for row in range(len(common))
    ]
    canvas = image_grid(cells, (cell_w, cell_h), (0, HEADER_HEIGHT))
    font = ImageFont.load_default()
    labels = [["input"], *(run_label(run, differing) for run in runs), ["target"]]
    for column, lines in enumerate(labels):
        canvas.paste(_label_cell(lines, cell_w, font), (column * cell_w, 0))
    return save_image_atomic(canvas, out_path)


# ---------------------------------------------------------------- all together


def compare_runs(
    settings: Settings, tracker: Tracker, out_dir: Path, run_ids: Sequence[str] = (), filter_string: str = ""
) -> Leaderboard:
    """Pick the runs, write ``leaderboard.csv``, ``leaderboard.md`` and ``side_by_side.png`` into ``out_dir``
    (its run columns in leaderboard order, ``train.num_examples`` samples)."""
    client = tracker.client
    runs = select_runs(client, tracker.experiment, run_ids, filter_string)
    board = leaderboard(runs)
    board.write(out_dir)
    by_id = {run.info.run_id: run for run in runs}
    ranked = [by_id[str(row["run_id"])] for row in board.rows]  # best first, as in the leaderboard
    try:
        side_by_side(client, ranked, ComparePaths(out_dir).side_by_side, max(settings.train.num_examples, 1))
    except ValueError as exc:  # runs without final examples (a sweep's children): the table still stands
        log.warning("side_by_side.png skipped: %s", exc)
    return board

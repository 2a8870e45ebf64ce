"""Comparing runs against a real MLflow store (SQLite + local artifacts in tmp): selection, the
leaderboard of differing settings and eval metrics, and the side-by-side image of example strips."""

import csv
import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

from nectargan_core.tracking.compare import (
    HEADER_HEIGHT,
    compare_runs,
    leaderboard,
    select_runs,
    short_keys,
    side_by_side,
)
from nectargan_core.tracking.tracker import Tracker

from .helpers import project_settings

EXPERIMENT = "compare-test"
SIDE = 16  # each third of a strip is SIDE x SIDE
COMMON = {f"model.generator.setting_{i:02d}": str(i) for i in range(30)} | {
    "train.loss.gan": "1.0",
    "train.loss.l2": "0.0",
    "data.crop_size": "256",
}


def input_colour(sample: int, run: str) -> tuple[int, int, int]:
    return (20 + 40 * sample, 200 if run == "a" else 190, 0)


def generated_colour(sample: int, run: str, epoch: int = 2) -> tuple[int, int, int]:
    return ({"a": 60, "b": 160}[run] + epoch, 10 + 40 * sample, 90)


def target_colour(sample: int, run: str) -> tuple[int, int, int]:
    return (0, 20 + 40 * sample, 250 if run == "a" else 240)


def log_strips(client, tmp_path, run_id, run, epoch, samples):
    folder = tmp_path / f"strips-{run_id}-{epoch}"
    folder.mkdir()
    for sample in range(samples):
        strip = Image.new("RGB", (3 * SIDE, SIDE))
        for third, colour in enumerate(
            (input_colour(sample, run), generated_colour(sample, run, epoch), target_colour(sample, run))
        ):
            strip.paste(colour, (third * SIDE, 0, (third + 1) * SIDE, SIDE))
        path = folder / f"epoch_{epoch:04d}_sample_{sample:02d}.png"
        strip.save(path)
        client.log_artifact(run_id, str(path), "examples/final")


def make_run(client, experiment_id, name, start, params, metrics, status="FINISHED"):
    run_id = client.create_run(experiment_id, start_time=start, run_name=name).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in params.items()],
        metrics=[Metric(k, v, now, 2) for k, v in metrics.items()],
    )
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """a (l1=100, worse eval/l1, oldest), b (l1=50, better), c (no train.loss.l2, no examples),
    d (still running) and e (failed): only a, b, c are finished."""
    tmp_path = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "mlruns").as_uri())
    base = 1_700_000_000_000
    evals_a = {"eval/l1": 0.2, "eval/l2": 0.05, "eval/psnr": 21.5, "eval/ssim": 0.61, "eval/sobel": 0.3}
    evals_b = {"eval/l1": 0.1, "eval/l2": 0.03, "eval/psnr": 24.25, "eval/ssim": 0.72, "eval/sobel": 0.2}
    train_metrics = {"loss/g": 3.0, "loss/l1": 0.4}
    ids = {
        "a": make_run(
            client, experiment_id, "l1-100", base, COMMON | {"train.loss.l1": "100.0"}, evals_a | train_metrics
        ),
        "b": make_run(
            client, experiment_id, "l1-50", base + 1000, COMMON | {"train.loss.l1": "50.0"}, evals_b | train_metrics
        ),
        "c": make_run(
            client,
            experiment_id,
            "no-l2",
            base + 2000,
            {k: v for k, v in COMMON.items() if k != "train.loss.l2"} | {"train.loss.l1": "100.0"},
            {"eval/ssim": 0.4},
        ),
        "d": make_run(
            client, experiment_id, "running", base + 3000, COMMON | {"train.loss.l1": "50.0"}, evals_b, "RUNNING"
        ),
        "e": make_run(client, experiment_id, "failed", base + 4000, COMMON, evals_b, "FAILED"),
    }
    log_strips(client, tmp_path, ids["a"], "a", 1, 3)  # an older export: must be ignored
    log_strips(client, tmp_path, ids["a"], "a", 2, 3)
    log_strips(client, tmp_path, ids["b"], "b", 2, 3)
    return client, uri, ids, tmp_path


def runs_of(client, ids, *names):
    return [client.get_run(ids[name]) for name in names]


def test_two_runs_differ_only_in_l1_and_rows_are_ranked_by_eval_l1(store):
    client, _uri, ids, _ = store
    board = leaderboard(select_runs(client, EXPERIMENT, [ids["a"], ids["b"]]))
    assert board.differing == ["train.loss.l1"]
    assert [row["run_id"] for row in board.rows] == [ids["b"], ids["a"]]  # given a, b; b has the lower eval/l1
    assert board.rows[0] == {
        "run_id": ids["b"],
        "run_name": "l1-50",
        "train.loss.l1": "50.0",
        "eval/l1": 0.1,
        "eval/l2": 0.03,
        "eval/psnr": 24.25,
        "eval/ssim": 0.72,
        "eval/sobel": 0.2,
    }
    assert "loss/g" not in board.rows[0]  # training metrics stay out; only eval/*


def test_markdown_and_csv_hold_the_values(store, tmp_path):
    client, _uri, ids, _ = store
    board = leaderboard(runs_of(client, ids, "a", "b"))
    lines = board.to_markdown().splitlines()
    assert len(lines) == 4
    assert lines[0] == "| run_id | run_name | train.loss.l1 | eval/l1 | eval/l2 | eval/psnr | eval/ssim | eval/sobel |"
    assert lines[2].startswith(f"| {ids['b']} | l1-50 | 50.0 | 0.1 | 0.03 | 24.25 | 0.72 |")
    assert lines[3].startswith(f"| {ids['a']} | l1-100 | 100.0 | 0.2 |")

    csv_path, md_path = board.write(tmp_path / "out")
    assert md_path.read_text() == board.to_markdown()
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["run_name"], r["train.loss.l1"], float(r["eval/psnr"])) for r in rows] == [
        ("l1-50", "50.0", 24.25),
        ("l1-100", "100.0", 21.5),
    ]


def test_a_param_missing_in_one_run_counts_as_differing(store):
    client, _uri, ids, _ = store
    board = leaderboard(runs_of(client, ids, "c", "a", "b"))
    assert board.differing == ["train.loss.l1", "train.loss.l2"]
    by_name = {row["run_name"]: row for row in board.rows}
    assert by_name["no-l2"]["train.loss.l2"] is None and by_name["l1-50"]["train.loss.l2"] == "0.0"
    assert by_name["no-l2"]["eval/l1"] is None and by_name["no-l2"]["eval/ssim"] == 0.4
    assert [row["run_name"] for row in board.rows] == ["l1-50", "l1-100", "no-l2"]  # no eval/l1: last
    assert "| no-l2 | 100.0 | – | – |" in board.to_markdown()


def test_filter_string_selects_finished_runs_newest_first(store):
    client, _uri, ids, _ = store
    runs = select_runs(client, EXPERIMENT, filter_string="metrics.`eval/ssim` > 0.5")
    assert [run.info.run_id for run in runs] == [ids["b"], ids["a"]]  # d (running) and e (failed) match too
    runs = select_runs(client, EXPERIMENT, filter_string="params.`train.loss.l1` = '100.0'")
    assert [run.info.run_id for run in runs] == [ids["c"], ids["a"]]
    assert len(select_runs(client, EXPERIMENT)) == 3  # no filter: every finished run


def test_fewer_than_two_runs_or_bad_selection_raise(store):
    client, _uri, ids, _ = store
    with pytest.raises(ValueError, match=r"at least 2 runs.*gave 1"):
        select_runs(client, EXPERIMENT, filter_string="params.`train.loss.l1` = '50.0'")  # d is running
    with pytest.raises(ValueError, match="at least 2 runs"):
        select_runs(client, EXPERIMENT, [ids["a"]])
    with pytest.raises(ValueError, match="at least 2 runs"):
        select_runs(client, EXPERIMENT, [ids["a"], ids["a"]])
    with pytest.raises(ValueError, match="filter string"):
        select_runs(client, EXPERIMENT, filter_string="params.l1 ~ 3")
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        select_runs(client, "nope")


def test_a_missing_run_id_is_named(store):
    client, _uri, ids, _ = store
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ValueError, match=f"no such MLflow run: {missing}$"):
        select_runs(client, EXPERIMENT, [ids["a"], missing, ids["b"]])


def cell(image, column, row):
    """The colour at the centre of a cell (row -1 is the header)."""
    return image.getpixel((column * SIDE + SIDE // 2, HEADER_HEIGHT + row * SIDE + SIDE // 2))


def test_side_by_side_puts_input_each_runs_output_and_target_in_columns(store, tmp_path):
    client, _uri, ids, _ = store
    out = side_by_side(client, runs_of(client, ids, "a", "b"), tmp_path / "sbs" / "side.png", samples=2)
    with Image.open(out) as image:
        image = image.convert("RGB")
    assert image.size == ((2 + 2) * SIDE, HEADER_HEIGHT + 2 * SIDE)
    for sample in range(2):
        assert cell(image, 0, sample) == input_colour(sample, "a")  # from the first run
        assert cell(image, 1, sample) == generated_colour(sample, "a", epoch=2)  # latest export, not epoch 1
        assert cell(image, 2, sample) == generated_colour(sample, "b")
        assert cell(image, 3, sample) == target_colour(sample, "a")
    for column in range(4):  # every header cell carries a label
        header = image.crop((column * SIDE, 0, (column + 1) * SIDE, HEADER_HEIGHT))
        assert header.convert("L").getextrema()[0] < 128, column

    out = side_by_side(client, runs_of(client, ids, "b", "a"), tmp_path / "all.png", samples=10)
    with Image.open(out) as image:
        image = image.convert("RGB")
    assert image.size == (4 * SIDE, HEADER_HEIGHT + 3 * SIDE)  # only 3 samples exist
    assert cell(image, 0, 2) == input_colour(2, "b") and cell(image, 1, 2) == generated_colour(2, "b")


def test_side_by_side_names_a_run_without_examples(store, tmp_path):
    client, _uri, ids, _ = store
    with pytest.raises(ValueError, match=f"run {ids['c']} \\(no-l2\\) has no example strips"):
        side_by_side(client, runs_of(client, ids, "a", "c"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_short_keys_use_the_shortest_unique_tail():
    assert short_keys(["train.loss.l1", "seed"]) == {"train.loss.l1": "l1", "seed": "seed"}
    assert short_keys(["train.generator.epochs", "train.discriminator.epochs", "train.loss.l1"]) == {
        "train.generator.epochs": "generator.epochs",
        "train.discriminator.epochs": "discriminator.epochs",
        "train.loss.l1": "l1",
    }


def test_compare_runs_writes_leaderboard_and_image_best_first(store, tmp_path):
    _client, uri, ids, _ = store
    settings = project_settings({"tracking.uri": uri, "tracking.experiment": EXPERIMENT})
    out = tmp_path / "compare"
    board = compare_runs(settings, Tracker.connect(settings.tracking, tmp_path), out, run_ids=[ids["a"], ids["b"]])
    assert board.differing == ["train.loss.l1"]
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "leaderboard.md", "side_by_side.png"]
    assert "| l1-50 | 50.0 |" in (out / "leaderboard.md").read_text()
    with Image.open(out / "side_by_side.png") as image:
        image = image.convert("RGB")
    assert image.size == (4 * SIDE, HEADER_HEIGHT + 2 * SIDE)
    assert cell(image, 1, 0) == generated_colour(0, "b")  # the better run's column comes first
    assert cell(image, 2, 0) == generated_colour(0, "a")

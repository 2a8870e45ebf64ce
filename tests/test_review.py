import pytest
from PIL import Image

from nectargan_core.files import read_epochs
from nectargan_core.layout import strip_name
from nectargan_core.reports.review import (
    BLANK,
    LEFT_MARGIN,
    TOP_MARGIN,
    example_montage,
    loss_graphs,
    plotted_terms,
    select_epochs,
)
from nectargan_core.training.callbacks import EpochSummary
from nectargan_core.training.records import EPOCH_COLUMNS, append_epoch_row

H = 8  # strip height; strips are 3 * H wide like the trainer's input | generated | target
W = 3 * H


def colour(epoch: int, sample: int) -> tuple[int, int, int]:
    """A flat colour unique to (epoch, sample), never the blank grey."""
    return (epoch * 40, 200 - sample * 60, 30)


def write_strips(folder, epochs, samples, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        for sample in samples:
            if (epoch, sample) not in skip:
                Image.new("RGB", (W, H), colour(epoch, sample)).save(folder / strip_name(epoch, sample))
    (folder / "notes.txt").write_text("not a strip")
    return folder


def cell(image, row, col):
    return image.getpixel((LEFT_MARGIN + col * W + W // 2, TOP_MARGIN + row * H + H // 2))


def test_montage_has_a_row_per_epoch_and_a_column_per_sample(tmp_path):
    examples = write_strips(tmp_path / "examples", range(1, 4), range(3))
    out = example_montage(examples, tmp_path / "report" / "montage.png")
    with Image.open(out) as image:
        assert image.size == (LEFT_MARGIN + 3 * W, TOP_MARGIN + 3 * H)
        assert [[cell(image, r, c) for c in range(3)] for r in range(3)] == [
            [colour(e, s) for s in range(3)] for e in range(1, 4)
        ]
        assert image.getpixel((LEFT_MARGIN // 2, TOP_MARGIN // 2)) == (255, 255, 255)  # margin, not a strip


def test_every_second_epoch_keeps_the_last(tmp_path):
    examples = write_strips(tmp_path / "examples", range(1, 6), range(2))
    out = example_montage(examples, tmp_path / "montage.png", every=2)
    with Image.open(out) as image:
        assert image.size == (LEFT_MARGIN + 2 * W, TOP_MARGIN + 3 * H)
        assert [cell(image, row, 0) for row in range(3)] == [colour(e, 0) for e in (1, 3, 5)]
    assert select_epochs([1, 2, 3, 4, 5, 6], 2) == [1, 3, 5, 6]


def test_samples_selects_columns(tmp_path):
    examples = write_strips(tmp_path / "examples", range(1, 3), range(3))
    out = example_montage(examples, tmp_path / "montage.png", samples=[1])
    with Image.open(out) as image:
        assert image.size == (LEFT_MARGIN + W, TOP_MARGIN + 2 * H)
        assert [cell(image, row, 0) for row in range(2)] == [colour(1, 1), colour(2, 1)]


def test_missing_strip_leaves_a_grey_cell(tmp_path):
    examples = write_strips(tmp_path / "examples", range(1, 3), range(2), skip={(2, 0)})
    with Image.open(example_montage(examples, tmp_path / "montage.png")) as image:
        assert cell(image, 1, 0) == BLANK
        assert cell(image, 1, 1) == colour(2, 1)


def test_montage_errors_name_the_folder(tmp_path):
    empty = tmp_path / "examples"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no example strips"):
        example_montage(empty, tmp_path / "montage.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        example_montage(tmp_path / "nowhere", tmp_path / "montage.png")
    write_strips(empty, [1], [0])
    with pytest.raises(ValueError, match=r"sample\(s\) \[4\]"):
        example_montage(empty, tmp_path / "montage.png", samples=[4])
    with pytest.raises(ValueError, match="every"):
        example_montage(empty, tmp_path / "montage.png", every=0)
    assert not (tmp_path / "montage.png").exists()


def write_epochs(path, active: dict[int, dict[str, float]]):
    """An epochs.csv written the trainer's way; ``active[epoch]`` are the terms that ran that epoch."""
    for epoch, losses in active.items():
        weights = {name: (1.0 if name in losses else 0.0) for name in ("gan", "l1", "l2", "sobel", "laplacian", "vgg")}
        summary = EpochSummary(
            epoch=epoch,
            total_epochs=len(active),
            seconds=1.0,
            images_per_s=10.0,
            lr_g=2e-4 / epoch,
            lr_d=1e-4 / epoch,
            loss_d=0.7 / epoch,
            loss_g=30.0 / epoch,
            losses=losses,
            weights=weights,
        )
        append_epoch_row(path, summary.as_row())
    return path


def test_loss_graphs_write_three_readable_pngs(tmp_path):
    csv_path = write_epochs(tmp_path / "epochs.csv", {e: {"gan": 1.0 + e / 10, "l1": 0.3 / e} for e in range(1, 5)})
    paths = loss_graphs(csv_path, tmp_path / "graphs")
    assert [p.name for p in paths] == ["losses.png", "loss_terms.png", "learning_rates.png"]
    for path in paths:
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 300
            assert len(image.convert("L").getcolors()) > 2  # something was drawn


def test_plotted_terms_are_those_that_ran(tmp_path):
    only = write_epochs(tmp_path / "a.csv", {e: {"gan": 1.0, "l1": 0.2} for e in range(1, 4)})
    assert plotted_terms(*read_epochs(only)) == ["gan", "l1"]
    active = {1: {"gan": 1.0, "l1": 0.2}, 2: {"gan": 1.0, "l1": 0.2, "sobel": 0.5}, 3: {"gan": 1.0, "l1": 0.2}}
    once = write_epochs(tmp_path / "b.csv", active)
    assert plotted_terms(*read_epochs(once)) == ["gan", "l1", "sobel"]
    assert len(loss_graphs(once, tmp_path / "graphs")) == 3  # a single-epoch term still plots


def test_torn_last_row_is_skipped(tmp_path):
    csv_path = write_epochs(tmp_path / "epochs.csv", {1: {"gan": 1.0}, 2: {"gan": 1.0}})
    with csv_path.open("a") as handle:
        handle.write("3,1.0,10.0,0.0002")  # a run killed mid-write
    assert plotted_terms(*read_epochs(csv_path)) == ["gan"]
    assert len(loss_graphs(csv_path, tmp_path / "graphs")) == 3


def test_empty_epoch_table_raises(tmp_path):
    header_only = tmp_path / "epochs.csv"
    header_only.write_text(",".join(EPOCH_COLUMNS) + "\n")
    with pytest.raises(ValueError, match=r"epochs\.csv has no epoch rows"):
        loss_graphs(header_only, tmp_path / "graphs")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        loss_graphs(tmp_path / "missing.csv", tmp_path / "graphs")
    assert not (tmp_path / "graphs").exists()

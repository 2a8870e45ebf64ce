import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nectargan_core.cli import main
from nectargan_core.data.dataset import list_pairs, load_pair
from nectargan_core.data.validate import validate_dataset
from nectargan_core.settings import DataSettings
from nectargan_core.stages import DatasetInvalid, validate_stage

from .helpers import png16, project_settings


def _data(root, **kw):
    return DataSettings(root=root, load_size=36, crop_size=32, **kw)


def _rgb(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_the_sample_dataset_passes(sample_root, tmp_path):
    result = validate_dataset(_data(sample_root), tmp_path / "report")
    assert result.ok and result.pairs == 10 and result.failures == []
    assert json.loads(result.report_json.read_text())["pairs_per_split"] == {"train": 6, "val": 2, "test": 2}
    assert "every rule passed" in result.table()


def test_every_bad_file_is_reported_with_its_rule(sample_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(sample_root, root)
    (root / "train" / "train_0000.png").write_bytes(b"not an image at all")  # corrupt
    _rgb(100, 64).save(root / "train" / "wide.png")  # not 2:1
    Image.new("L", (64, 32)).save(root / "train" / "grey.png")  # 1 channel, 3 configured
    _rgb(40, 20).save(root / "val" / "tiny.png")  # 20 px < crop 32
    shutil.copy(root / "train" / "train_0001.png", root / "val" / "copy_of_train.png")  # in two splits
    (root / "val" / "notes.txt").write_text("ignored: not an image file name")
    shutil.rmtree(root / "test")
    (root / "test").mkdir()  # present but empty

    result = validate_dataset(_data(root), tmp_path / "report")
    assert not result.ok
    found = {(f["file"].removeprefix(str(root) + "/"), f["rule"]) for f in result.failures}
    assert found == {
        ("train/train_0000.png", "decodes"),
        ("train/wide.png", "aligned_pair"),
        ("train/grey.png", "channels"),
        ("val/tiny.png", "large_enough"),
        ("train/train_0001.png", "unique_across_splits"),
        ("val/copy_of_train.png", "unique_across_splits"),
        ("test", "non_empty_split"),
    }
    with result.report_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 and all(row["detail"] for row in rows)
    assert any("UnidentifiedImageError" in row["detail"] for row in rows if row["rule"] == "decodes")
    assert "mode L" in next(row["detail"] for row in rows if row["rule"] == "channels")
    assert json.loads(result.report_json.read_text())["problems"] == 7
    table = result.table()
    assert "dataset INVALID: 7 problem(s)" in table and "train/grey.png" in table


def test_folder_layout_rules(tmp_path):
    root = tmp_path / "folders"
    for split in ("train", "val"):
        (root / split / "A").mkdir(parents=True)
        (root / split / "B").mkdir(parents=True)
        _rgb(48, 48, 1).save(root / split / "A" / f"{split}_ok.png")  # the same A in both splits is fine...
        _rgb(48, 48, len(split)).save(root / split / "B" / f"{split}_ok.png")  # ...the pairs differ
    _rgb(48, 48, 3).save(root / "train" / "A" / "lonely.png")  # no partner
    _rgb(48, 48, 4).save(root / "train" / "A" / "mismatch.png")
    _rgb(64, 48, 5).save(root / "train" / "B" / "mismatch.png")  # other size
    result = validate_dataset(_data(root), tmp_path / "report")
    found = {(f["file"].removeprefix(str(root) + "/"), f["rule"]) for f in result.failures}
    assert found == {("train/A/lonely.png", "partner_exists"), ("train/A/mismatch.png", "partner_same_size")}


def test_direction_and_channels_decide_which_half_is_checked(tmp_path):
    root = tmp_path / "grey_input"
    for split in ("train", "val"):
        (root / split / "A").mkdir(parents=True)
        (root / split / "B").mkdir(parents=True)
        Image.new("L", (40, 40), color=len(split)).save(root / split / "A" / "x.png")
        _rgb(40, 40, 1 if split == "train" else 2).save(root / split / "B" / "x.png")
    assert validate_dataset(_data(root, input_channels=1), tmp_path / "r1").ok
    flipped = validate_dataset(_data(root, input_channels=1, direction="BtoA"), tmp_path / "r2")
    assert {f["rule"] for f in flipped.failures} == {"channels"}


def test_missing_split_and_missing_root(tmp_path):
    (tmp_path / "only_train" / "train").mkdir(parents=True)
    _rgb(64, 32).save(tmp_path / "only_train" / "train" / "a.png")
    result = validate_dataset(_data(tmp_path / "only_train"), tmp_path / "report")
    assert [(f["split"], f["rule"]) for f in result.failures] == [("val", "non_empty_split")]
    assert "missing" in result.failures[0]["detail"]
    with pytest.raises(FileNotFoundError, match=r"data\.root"):
        validate_dataset(_data(tmp_path / "nowhere"), tmp_path / "report")


def test_stage_refuses_bad_data_and_cli_prints_the_table(tmp_path, capsys):
    root = tmp_path / "d"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        _rgb(64, 32, 7 if split == "train" else 8).save(root / split / "ok.png")
    (root / "val" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    settings = project_settings({"data.root": str(root)})
    with pytest.raises(DatasetInvalid) as info:
        validate_stage(settings, tmp_path / "report")
    assert "val/broken.png" in str(info.value) and "decodes" in str(info.value)
    assert (tmp_path / "report" / "validation.csv").exists()
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(settings.model_dump(mode="json")))
    assert main(["validate", "--params", str(params), "--report", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "dataset INVALID: 1 problem(s)" in err and "broken.png" in err


def test_layout_problems_the_pair_table_cannot_show(tmp_path):
    root, outside = tmp_path / "folders", tmp_path / "elsewhere.png"
    for split in ("train", "val"):
        for side in ("A", "B"):
            (root / split / side).mkdir(parents=True)
            _rgb(32, 32, 1 if split == "train" else 2).save(root / split / side / "ok.png")
    _rgb(32, 32, 3).save(root / "train" / "B" / "orphan.png")  # a B without its A
    _rgb(64, 32, 4).save(root / "train" / "aligned.png")  # an aligned file mixed in
    (root / "val" / "A" / "gone.png").symlink_to(tmp_path / "missing.png")  # dangling
    _rgb(32, 32, 5).save(outside)
    (root / "val" / "B" / "far.png").symlink_to(outside)  # outside data.root
    (root / "val" / "A" / "far.png").symlink_to(root / "val" / "A" / "ok.png")  # inside: fine
    result = validate_dataset(_data(root), tmp_path / "report")
    found = {(Path(f["file"]).relative_to(root).as_posix(), f["rule"]) for f in result.failures}
    assert found == {
        ("train/B/orphan.png", "partner_exists"),
        ("train/aligned.png", "one_layout"),
        ("val/A/gone.png", "symlink"),
        ("val/B/far.png", "symlink"),
    }
    details = {f["rule"]: f["detail"] for f in result.failures if f["file"].endswith("far.png")}
    assert "links outside data.root" in details["symlink"]


def test_16_bit_images_are_read_as_8_bits_and_noted(tmp_path):
    """Validation passes them and loading reads them as v >> 8: 0x1234 -> 18, 0xFFFF -> 255, 0x00FF -> 0,
    0x80FF -> 128, in grey (PIL's I;16) and in colour (RGB;16, which PIL decodes itself)."""
    values = np.tile(np.array([0x1234, 0xFFFF, 0x00FF, 0x80FF], np.uint16), (32, 16))  # 32 x 64
    root = tmp_path / "deep"
    for split in ("train", "val"):
        (root / split / "A").mkdir(parents=True)
        (root / split / "B").mkdir()
        Image.fromarray(values - (len(split) - 3)).save(root / split / "A" / "x.png")  # grey, 16 bits
        (root / split / "B" / "x.png").write_bytes(png16(np.stack([values - (len(split) - 3)] * 3, axis=-1)))
    data = _data(root, input_channels=1, output_channels=3)
    result = validate_dataset(data, tmp_path / "report")
    assert result.ok, result.table()
    modes = {Path(c["file"]).relative_to(root).as_posix(): c["mode"] for c in result.converted}
    assert modes == {"train/A/x.png": "I;16", "train/B/x.png": "RGB;16", "val/A/x.png": "I;16", "val/B/x.png": "RGB;16"}
    assert len(json.loads(result.report_json.read_text())["converted"]) == 4
    a, b = load_pair(list_pairs(root, "train")[0], data)
    assert (a.mode, b.mode) == ("L", "RGB")
    assert np.asarray(a)[0, :4].tolist() == [0x12, 0xFF, 0x00, 0x80]
    assert np.asarray(b)[0, :4].tolist() == [[0x12] * 3, [0xFF] * 3, [0x00] * 3, [0x80] * 3]


def test_float_images_are_refused(tmp_path):
    root = tmp_path / "float"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        Image.fromarray(np.full((32, 64), len(split) / 8, np.float32)).save(root / split / "f.tif")
    result = validate_dataset(_data(root, input_channels=1, output_channels=1), tmp_path / "report")
    assert {(f["rule"], f["detail"]) for f in result.failures} == {
        ("eight_bit", "a 32-bit integer or float image has no 8-bit scale: convert it to an 8-bit PNG/JPEG")
    }

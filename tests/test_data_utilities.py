"""Dataset helpers on real files: pairing A/ and B/ folders, seeded splits, and `dvc add` imports."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from nectargan_core.data.dataset import list_pairs
from nectargan_core.data.utilities import PairingReport, import_dataset, pair_folders, split_dataset

BIN = Path(sys.executable).parent


def _noise(seed: int, size: tuple[int, int] = (16, 16), channels: int = 3) -> np.ndarray:
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path: Path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def ab(tmp_path) -> dict[str, object]:
    """A/ and B/ with two partners (one B greyscale), one file only in A, one only in B, and a non-image."""
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    pixels = {
        "a1": _save(a_dir / "001.png", _noise(1)),
        "b1": _save(b_dir / "001.png", _noise(2)),
        "a2": _save(a_dir / "002.png", _noise(3)),
        "b2": _save(b_dir / "002.png", _noise(4, channels=1)),
    }
    _save(a_dir / "lonely_a.png", _noise(5))
    _save(b_dir / "lonely_b.png", _noise(6))
    (a_dir / "notes.txt").write_text("not an image")
    return {"a_dir": a_dir, "b_dir": b_dir, "out": tmp_path / "aligned", **pixels}


# ---- pair_folders -------------------------------------------------------------------------------------


def test_pair_folders_writes_a_left_and_b_right(ab):
    report = pair_folders(ab["a_dir"], ab["b_dir"], ab["out"])

    assert sorted(p.name for p in ab["out"].iterdir()) == ["001.png", "002.png", "pairing_report.csv"]
    for stem, a, b in (("001", ab["a1"], ab["b1"]), ("002", ab["a2"], ab["b2"])):
        out = _pixels(ab["out"] / f"{stem}.png")
        assert out.shape == (16, 32, 3)
        assert np.array_equal(out[:, :16], a)
        expected_b = b if b.ndim == 3 else np.repeat(b[..., None], 3, axis=2)  # greyscale B becomes RGB
        assert np.array_equal(out[:, 16:], expected_b)
    assert report.paired == ["001.png", "002.png"]
    assert report.resized == []
    assert not any(p.name.startswith(".") for p in ab["out"].iterdir())  # no temp files left


def test_pair_folders_reports_exactly_the_unmatched_files(ab):
    report = pair_folders(ab["a_dir"], ab["b_dir"], ab["out"])

    assert report == PairingReport(
        paired=["001.png", "002.png"], only_in_a=["lonely_a.png"], only_in_b=["lonely_b.png"], resized=[]
    )
    table = report.table()
    assert "lonely_a.png" in table and "lonely_b.png" in table
    assert "paired: 2" in table and "notes.txt" not in table
    with open(ab["out"] / "pairing_report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [
        {"file": "001.png", "status": "paired"},
        {"file": "002.png", "status": "paired"},
        {"file": "lonely_a.png", "status": "only_in_a"},
        {"file": "lonely_b.png", "status": "only_in_b"},
    ]
    with pytest.raises(AttributeError):
        report.paired = []  # frozen


def test_pair_folders_resizes_both_halves_to_size(ab):
    pair_folders(ab["a_dir"], ab["b_dir"], ab["out"], size=8)

    out = _pixels(ab["out"] / "001.png")
    assert out.shape == (8, 16, 3)
    expected_a = np.asarray(Image.fromarray(ab["a1"]).resize((8, 8), Image.Resampling.BICUBIC))
    assert np.array_equal(out[:, :8], expected_a)


def test_pair_folders_resizes_b_of_another_size_and_records_it(ab):
    big_b = _save(ab["b_dir"] / "002.png", _noise(7, size=(32, 32)))
    report = pair_folders(ab["a_dir"], ab["b_dir"], ab["out"])

    assert report.resized == ["002.png"]
    assert "002.png" in report.table()
    out = _pixels(ab["out"] / "002.png")
    assert out.shape == (16, 32, 3)
    assert np.array_equal(out[:, :16], ab["a2"])
    assert np.array_equal(out[:, 16:], np.asarray(Image.fromarray(big_b).resize((16, 16), Image.Resampling.BICUBIC)))


def test_pair_folders_refuses_to_write_into_an_input_folder(ab):
    before = _files(ab["a_dir"])
    with pytest.raises(ValueError, match="input folder"):
        pair_folders(ab["a_dir"], ab["b_dir"], ab["a_dir"])
    with pytest.raises(ValueError, match="input folder"):
        pair_folders(ab["a_dir"], ab["b_dir"], ab["b_dir"] / ".." / "B")
    assert _files(ab["a_dir"]) == before


def test_pair_folders_round_trips_the_sample_dataset(sample_root, tmp_path):
    """Cutting aligned sample pairs into A/ and B/ and pairing them again gives the same pixels."""
    originals = sorted((sample_root / "train").glob("*.png"))
    for path in originals:
        pixels = _pixels(path)
        _save(tmp_path / "A" / path.name, pixels[:, :64])
        _save(tmp_path / "B" / path.name, pixels[:, 64:])
    report = pair_folders(tmp_path / "A", tmp_path / "B", tmp_path / "out")

    assert report.paired == [p.name for p in originals]
    for path in originals:
        assert np.array_equal(_pixels(tmp_path / "out" / path.name), _pixels(path))


def test_pair_folders_missing_input_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pair_folders(tmp_path / "nowhere", tmp_path, tmp_path / "out")


# ---- split_dataset ------------------------------------------------------------------------------------


@pytest.fixture
def flat(tmp_path) -> Path:
    """20 small distinct images plus a text file that must not be split."""
    folder = tmp_path / "flat"
    for i in range(20):
        _save(folder / f"img_{i:02d}.png", _noise(100 + i, size=(4, 2)))
    (folder / "readme.txt").write_text("not an image")
    return folder


def test_split_is_reproducible_by_seed(flat, tmp_path):
    first = split_dataset(flat, tmp_path / "one", seed=3)
    second = split_dataset(flat, tmp_path / "two", seed=3)

    assert first == second
    for split, names in first.items():
        on_disk = sorted(p.name for p in (tmp_path / "one" / split).iterdir())
        assert on_disk == names == sorted(p.name for p in (tmp_path / "two" / split).iterdir())


def test_split_depends_on_seed(flat, tmp_path):
    assert split_dataset(flat, tmp_path / "s0", seed=0) != split_dataset(flat, tmp_path / "s1", seed=1)


def test_split_respects_fractions_and_copies_every_image_once(flat, tmp_path):
    result = split_dataset(flat, tmp_path / "out", fractions=(0.8, 0.1, 0.1))

    assert {split: len(names) for split, names in result.items()} == {"train": 16, "val": 2, "test": 2}
    all_names = [name for names in result.values() for name in names]
    assert sorted(all_names) == sorted(p.name for p in flat.glob("*.png"))  # disjoint, complete, no readme
    for split, names in result.items():
        for name in names:
            assert (tmp_path / "out" / split / name).read_bytes() == (flat / name).read_bytes()


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.5, 0.5, 0.5), "sum to 1"),
        ((1.2, -0.1, -0.1), ">= 0"),
        ((1.0, 0.0, 0.0), "val need at least one"),
        ((0.0, 0.5, 0.5), "train and val need"),
        ((0.9, 0.1), r"\(train, val, test\)"),
    ],
)
def test_split_rejects_bad_fractions(flat, tmp_path, fractions, message):
    with pytest.raises(ValueError, match=message):
        split_dataset(flat, tmp_path / "out", fractions=fractions)
    assert not (tmp_path / "out").exists()


def test_split_refuses_a_target_that_already_holds_files(flat, tmp_path):
    out = tmp_path / "out"
    _save(out / "val" / "old.png", _noise(0, size=(4, 2)))
    with pytest.raises(ValueError, match="empty folder") as err:
        split_dataset(flat, out)
    assert str(out / "val") in str(err.value)
    assert not (out / "train").exists() and [p.name for p in (out / "val").iterdir()] == ["old.png"]


# ---- import_dataset -----------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty git + DVC project."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = tmp_path / "project"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        result = _run(cmd, repo)
        assert result.returncode == 0, result.stderr
    return repo


def test_import_copies_and_tracks_the_dataset_with_dvc(sample_root, project):
    dest = import_dataset(sample_root, "facades", project)

    assert dest == project / "data" / "facades"
    assert _files(dest) == _files(sample_root)
    assert len(list_pairs(dest, "train")) == 6
    dvc_file = yaml.safe_load((project / "data" / "facades.dvc").read_text())
    assert dvc_file["outs"][0]["path"] == "facades"
    assert dvc_file["outs"][0]["nfiles"] == 10
    ignored = _run(["git", "check-ignore", "data/facades"], project)
    assert ignored.returncode == 0 and ignored.stdout.strip() == "data/facades"
    assert "/facades" in (project / "data" / ".gitignore").read_text().splitlines()


def test_import_refuses_an_existing_destination(sample_root, tmp_path):
    existing = tmp_path / "data" / "facades"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        import_dataset(sample_root, "facades", tmp_path)
    assert _files(existing) == {"keep.txt": b"mine"}


def test_import_refuses_a_dataset_without_val(tmp_path):
    source = tmp_path / "src"
    _save(source / "train" / "x.png", _noise(0, size=(8, 4)))
    with pytest.raises(FileNotFoundError, match=r"val.*needs train/ and val/"):
        import_dataset(source, "mine", tmp_path)
    assert not (tmp_path / "data").exists()


def test_import_refuses_folders_layout_without_b(tmp_path):
    source = tmp_path / "src"
    for split in ("train", "val"):
        _save(source / split / "A" / "x.png", _noise(0))
    with pytest.raises(ValueError, match="needs a B/ folder"):
        import_dataset(source, "mine", tmp_path)
    assert not (tmp_path / "data").exists()


def test_import_removes_the_copy_when_dvc_add_fails(sample_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    not_a_project = tmp_path / "plain"
    not_a_project.mkdir()
    with pytest.raises(RuntimeError, match="dvc add data/facades") as err:
        import_dataset(sample_root, "facades", not_a_project)
    assert "not inside of a DVC repository" in str(err.value)  # dvc's own stderr is passed on
    assert list(not_a_project.iterdir()) == []

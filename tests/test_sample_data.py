"""Tests for the procedural facades sample dataset (nectargan_core.data.sample)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nectargan_core.data.sample import (
    BACKGROUND,
    CLASS_NAMES,
    PALETTE,
    WALL,
    WINDOW,
    generate_sample_dataset,
    render_pair,
)
from nectargan_core.files import SPLITS
from nectargan_core.settings import SampleDataSettings, SettingsError, settings_from_dict

SIZE = 64
COUNTS = {"train": 6, "val": 2, "test": 2}
DEFAULT_COUNTS = {split: getattr(SampleDataSettings(), split) for split in SPLITS}


def generate(root: Path, size: int = 128, counts: dict[str, int] | None = None, seed: int = 0) -> dict[str, int]:
    return generate_sample_dataset(SampleDataSettings(out=root, size=size, seed=seed, **(counts or {})))


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facades")
    result = generate(root, size=SIZE, counts=COUNTS, seed=0)
    assert result == COUNTS
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p for split in SPLITS for p in (root / split).iterdir())


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Split a stored pair into (A, B)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    half = arr.shape[1] // 2
    return arr[:, :half], arr[:, half:]


def _labels(a: np.ndarray) -> np.ndarray:
    """Class id per pixel of A; -1 where the colour is not in the palette."""
    match = (a[:, :, None, :] == PALETTE[None, None, :, :]).all(axis=-1)
    return np.where(match.any(axis=-1), match.argmax(axis=-1), -1)


def test_layout_and_file_names(small_root: Path) -> None:
    for split in SPLITS:
        names = sorted(p.name for p in (small_root / split).iterdir())
        assert names == [f"{split}_{i:04d}.png" for i in range(COUNTS[split])]
    assert sorted(p.name for p in small_root.iterdir()) == sorted(SPLITS)


def test_every_file_is_an_rgb_pair_of_the_right_size(small_root: Path) -> None:
    files = _files(small_root)
    assert len(files) == sum(COUNTS.values())
    for path in files:
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.mode == "RGB"
            assert im.size == (2 * SIZE, SIZE)


def test_generation_is_byte_identical_across_runs(small_root: Path, tmp_path: Path) -> None:
    generate(tmp_path, size=SIZE, counts=COUNTS, seed=0)
    for path in _files(small_root):
        other = tmp_path / path.parent.name / path.name
        assert other.read_bytes() == path.read_bytes(), path.name


def test_file_does_not_depend_on_how_many_are_generated(small_root: Path, tmp_path: Path) -> None:
    generate(tmp_path, size=SIZE, counts={"train": 3, "val": 1, "test": 1}, seed=0)
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for i in range(n):
            name = f"{split}_{i:04d}.png"
            assert (tmp_path / split / name).read_bytes() == (small_root / split / name).read_bytes()


def test_different_seed_gives_different_images(small_root: Path, tmp_path: Path) -> None:
    generate(tmp_path, size=SIZE, counts=COUNTS, seed=1)
    for path in _files(small_root):
        a0, b0 = _load(path)
        a1, b1 = _load(tmp_path / path.parent.name / path.name)
        assert not np.array_equal(a0, a1), path.name
        assert not np.array_equal(b0, b1), path.name


def test_no_duplicate_images_within_or_across_splits(small_root: Path) -> None:
    files = _files(small_root)
    pair_hashes = set()
    a_hashes = set()
    for path in files:
        a, b = _load(path)
        pair_hashes.add(hashlib.sha256(np.concatenate([a, b], axis=1).tobytes()).hexdigest())
        a_hashes.add(hashlib.sha256(a.tobytes()).hexdigest())
    assert len(pair_hashes) == len(files)
    assert len(a_hashes) == len(files), "two pairs share the same label map"


def test_a_uses_only_palette_colours_and_several_classes(small_root: Path) -> None:
    assert PALETTE.shape == (len(CLASS_NAMES), 3)
    assert len({tuple(c) for c in PALETTE.tolist()}) == len(CLASS_NAMES), "palette colours must be distinct"
    rich = 0
    files = _files(small_root)
    for path in files:
        labels = _labels(_load(path)[0])
        assert (labels >= 0).all(), f"{path.name}: A has a colour outside the palette"
        present = set(np.unique(labels).tolist())
        assert {BACKGROUND, WALL, WINDOW} <= present, path.name
        rich += len(present) >= 4
    assert rich >= 0.8 * len(files)


def test_b_is_a_rendering_not_a_copy_and_varies(small_root: Path) -> None:
    wall_means = []
    bs = []
    for path in _files(small_root):
        a, b = _load(path)
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() > 20, path.name
        # A is flat colour; B has texture, so it must contain many more distinct colours.
        assert len(np.unique(b.reshape(-1, 3), axis=0)) > 10 * len(np.unique(a.reshape(-1, 3), axis=0))
        wall_means.append(b[_labels(a) == WALL].mean(axis=0))
        bs.append(b)
    for i in range(len(bs)):
        for j in range(i + 1, len(bs)):
            assert np.abs(bs[i].astype(np.int16) - bs[j].astype(np.int16)).mean() > 5
    # Per-image wall colour variation: the wall tone is not one fixed colour.
    assert np.ptp(np.array(wall_means), axis=0).max() > 30


def test_b_follows_the_layout_of_a(small_root: Path) -> None:
    for path in _files(small_root):
        a, b = _load(path)
        labels = _labels(a)
        bf = b.astype(np.float64)
        window = bf[labels == WINDOW].mean(axis=0)
        wall = bf[labels == WALL].mean(axis=0)
        sky = bf[labels == BACKGROUND].mean(axis=0)
        assert np.linalg.norm(window - wall) > 25, f"{path.name}: windows indistinguishable from wall in B"
        assert sky[2] > sky[0] + 10, f"{path.name}: sky is not blue-ish"
        assert window.mean() < wall.mean(), f"{path.name}: glass should be darker than the wall"


def test_render_pair_shapes_and_determinism() -> None:
    a, b = render_pair(np.random.default_rng(123), 48)
    assert a.shape == b.shape == (48, 48, 3)
    assert a.dtype == b.dtype == np.uint8
    a2, b2 = render_pair(np.random.default_rng(123), 48)
    assert np.array_equal(a, a2)
    assert np.array_equal(b, b2)
    a3, _ = render_pair(np.random.default_rng(124), 48)
    assert not np.array_equal(a, a3)


def test_rerun_overwrites_and_removes_only_stale_pattern_files(tmp_path: Path) -> None:
    generate(tmp_path, size=32, counts={"train": 5, "val": 3, "test": 1}, seed=0)
    reference = {p.name: p.read_bytes() for p in _files(tmp_path)}
    (tmp_path / "train" / "train_0000.png").write_bytes(b"corrupted")
    keep = [
        tmp_path / "train" / "notes.txt",
        tmp_path / "train" / "other_0001.png",
        tmp_path / "train" / "train_0001.jpg",
        tmp_path / "val" / "train_0009.png",
        tmp_path / "train_0009.png",
    ]
    for path in keep:
        path.write_bytes(b"keep me")

    result = generate(tmp_path, size=32, counts={"train": 2, "val": 1, "test": 1}, seed=0)

    assert result == {"train": 2, "val": 1, "test": 1}
    assert sorted(p.name for p in (tmp_path / "train").glob("train_*.png")) == ["train_0000.png", "train_0001.png"]
    assert sorted(p.name for p in (tmp_path / "val").glob("val_*.png")) == ["val_0000.png"]
    for name in ("train_0000.png", "train_0001.png", "val_0000.png", "test_0000.png"):
        split = name.split("_")[0]
        assert (tmp_path / split / name).read_bytes() == reference[name]
    for path in keep:
        assert path.read_bytes() == b"keep me", path
    assert not list(tmp_path.rglob(".*.tmp")), "temporary files left behind"


def test_missing_splits_in_counts_use_defaults(tmp_path: Path) -> None:
    result = generate(tmp_path, size=32, counts={"val": 1, "test": 2}, seed=3)
    assert result == {"train": DEFAULT_COUNTS["train"], "val": 1, "test": 2}
    assert len(list((tmp_path / "train").glob("*.png"))) == DEFAULT_COUNTS["train"]


@pytest.mark.parametrize(
    ("sample", "key"),
    [
        ({"size": 30}, "sample.size"),
        ({"size": 16}, "sample.size"),
        ({"size": 40}, "sample.size"),
        ({"size": 24}, "sample.size"),
        ({"size": 64.0}, "sample.size"),
        ({"size": True}, "sample.size"),
        ({"train": 0}, "sample.train"),
        ({"val": -1}, "sample.val"),
        ({"train": 2.5}, "sample.train"),
        ({"training": 2}, "sample.training"),
        ({"seed": -1}, "sample.seed"),
        ({"seed": "0"}, "sample.seed"),
    ],
)
def test_bad_sample_settings_are_refused_naming_the_key(sample: dict[str, object], key: str) -> None:
    """The settings model checks what the generator needs, so nothing is drawn from bad values."""
    with pytest.raises(SettingsError, match=re.escape(key)):
        settings_from_dict({"sample": sample})


def test_default_counts_at_128_px(tmp_path: Path) -> None:
    """Full default dataset (also a speed sanity check: should take only a few seconds)."""
    result = generate(tmp_path)
    assert result == dict(DEFAULT_COUNTS) == {"train": 200, "val": 16, "test": 16}
    hashes = set()
    for split in SPLITS:
        files = sorted((tmp_path / split).iterdir())
        assert len(files) == DEFAULT_COUNTS[split]
        for path in files:
            with Image.open(path) as im:
                hashes.add(hashlib.sha256(im.tobytes()).hexdigest())
    assert len(hashes) == sum(DEFAULT_COUNTS.values())
    with Image.open(tmp_path / "train" / "train_0199.png") as im:
        assert im.size == (256, 128)
        assert im.mode == "RGB"

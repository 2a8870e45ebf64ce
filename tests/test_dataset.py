import numpy as np
import pytest
import torch
from PIL import Image

from nectargan_core.data.dataset import PairedImageDataset, list_pairs, load_pair
from nectargan_core.data.transforms import PairTransform
from nectargan_core.settings import DataSettings


def _data(root, **kw) -> DataSettings:
    return DataSettings(root=root, load_size=kw.pop("load_size", 72), crop_size=kw.pop("crop_size", 64), **kw)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_aligned_pairs_are_sorted_and_split_in_halves(sample_root):
    pairs = list_pairs(sample_root, "train")
    assert [p.name for p in pairs] == sorted(p.name for p in pairs) and len(pairs) == 6
    whole = np.asarray(Image.open(pairs[0].a))
    a, b = load_pair(pairs[0], _data(sample_root))
    assert a.size == b.size == (64, 64)
    assert np.array_equal(np.asarray(a), whole[:, :64]) and np.array_equal(np.asarray(b), whole[:, 64:])
    a2, b2 = load_pair(pairs[0], _data(sample_root, direction="BtoA"))
    assert np.array_equal(np.asarray(a2), np.asarray(b)) and np.array_equal(np.asarray(b2), np.asarray(a))


def test_channel_modes_are_converted_on_load(sample_root):
    pair = list_pairs(sample_root, "train")[0]
    a, b = load_pair(pair, _data(sample_root, input_channels=1))
    assert (a.mode, b.mode) == ("L", "RGB")
    sample = PairedImageDataset(_data(sample_root, input_channels=1), "val", PairTransform(_data(sample_root), False))
    x, y = sample[0]
    assert x.shape == (1, 64, 64) and y.shape == (3, 64, 64)


def test_folder_layout_matches_by_name(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png", "c.png"):
        _save(tmp_path / "train" / "A" / name, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for name in ("a.png", "b.png"):  # c.png has no partner
        _save(tmp_path / "train" / "B" / name, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    pairs = list_pairs(tmp_path, "train")
    assert [p.name for p in pairs] == ["a.png", "b.png"]
    assert pairs[0].b == tmp_path / "train" / "B" / "a.png"
    a, b = load_pair(pairs[1], _data(tmp_path))
    assert np.array_equal(np.asarray(a), np.asarray(Image.open(tmp_path / "train" / "A" / "b.png")))
    assert np.array_equal(np.asarray(b), np.asarray(Image.open(tmp_path / "train" / "B" / "b.png")))


def test_joint_geometry_is_shared_between_input_and_target(tmp_path):
    # A pair whose halves are identical: any difference after the train transform would mean
    # the crop or a joint augmentation drew different parameters for the two images.
    rng = np.random.default_rng(1)
    half = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    _save(tmp_path / "train" / "x.png", np.concatenate([half, half], axis=1))
    joint = {
        "hflip": {"p": 0.5},
        "vflip": {"p": 0.5},
        "rot90": {"p": 0.5},
        "elastic": {"p": 0.5},
        "optical_distortion": {"p": 0.5},
        "coarse_dropout": {"p": 0.5},
    }
    data = _data(tmp_path, augment={"joint": joint})
    dataset = PairedImageDataset(data, "train", PairTransform(data, train=True))
    outputs = set()
    for seed in range(8):
        torch.manual_seed(seed)
        x, y = dataset[0]
        assert x.shape == y.shape == (3, 64, 64)
        assert torch.equal(x, y)
        assert x.min() >= -1 and x.max() <= 1
        outputs.add(x.sum().item())
    assert len(outputs) > 1  # the augmentations really vary


def test_input_only_augmentations_leave_the_target_alone(tmp_path):
    half = np.full((64, 64, 3), 128, dtype=np.uint8)
    _save(tmp_path / "train" / "x.png", np.concatenate([half, half], axis=1))
    data = _data(
        tmp_path,
        load_size=64,
        augment={"joint": {"hflip": {"p": 0}}, "input": {"gaussian_noise": {"p": 1, "std_range": [0.1, 0.1]}}},
    )
    torch.manual_seed(0)
    x, y = PairTransform(data, train=True)(*load_pair(list_pairs(tmp_path, "train")[0], data))
    assert torch.allclose(y, torch.full_like(y, 128 / 255 * 2 - 1), atol=1e-6)
    assert (x - y).std() > 0.1
    target_noise = _data(tmp_path, load_size=64, augment={"target": [{"kind": "gaussian_noise", "p": 1}]})
    x, y = PairTransform(target_noise, train=True)(*load_pair(list_pairs(tmp_path, "train")[0], target_noise))
    assert (y - x).abs().max() > 0


def test_train_resizes_to_load_size_then_crops(tmp_path):
    # A gradient image: the crop offset shows in the mean of the output.
    ramp = np.tile(np.linspace(0, 255, 100).astype(np.uint8), (100, 1))
    rgb = np.stack([ramp] * 3, axis=-1)
    _save(tmp_path / "train" / "r.png", np.concatenate([rgb, rgb], axis=1))
    data = _data(tmp_path, load_size=96, crop_size=64, augment={"joint": {"hflip": {"p": 0}}})
    transform = PairTransform(data, train=True)
    pair = load_pair(list_pairs(tmp_path, "train")[0], data)
    means = set()
    for seed in range(6):
        torch.manual_seed(seed)
        means.add(round(transform(*pair)[0].mean().item(), 4))
    assert len(means) > 1
    torch.manual_seed(3)
    first = transform(*pair)[0]
    torch.manual_seed(3)
    assert torch.equal(first, transform(*pair)[0])


def test_eval_resizes_to_crop_without_augmentation(sample_root):
    data = _data(sample_root, load_size=96, crop_size=32)
    dataset = PairedImageDataset(data, "val", PairTransform(data, train=False))
    x1, y1 = dataset[0]
    x2, y2 = dataset[0]
    assert x1.shape == (3, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.min() >= -1 and x1.max() <= 1 and x1.min() < 0 < x1.max()


def test_missing_split_and_empty_split_are_clear_errors(tmp_path):
    data = _data(tmp_path)
    with pytest.raises(FileNotFoundError, match="train"):
        list_pairs(tmp_path, "train")
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match="no image pairs found"):
        PairedImageDataset(data, "val", PairTransform(data, train=False))

"""The device loader (data.loader: device): a decoded uint8 cache, crops and flips cut per batch on the
training device. On CPU here; the same code runs on CUDA, where `auto` picks it."""

import os

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from nectargan_core.data.dataset import list_pairs, load_pair
from nectargan_core.data.decoded import DecodedSplit, DeviceBatches, use_device_loader
from nectargan_core.data.transforms import _resize, _to_signed, _to_unit_float
from nectargan_core.settings import SettingsError, with_changes
from nectargan_core.training.trainer import train

from .helpers import StopAfter, epoch_rows, losses, tiny_settings

CPU = torch.device("cpu")


def _data(sample_root, **changes):
    return with_changes(tiny_settings(sample_root), {"data.loader": "device", **changes}).data


def test_a_crop_is_the_workers_loaders_resize_then_crop(sample_root):
    data = _data(sample_root, **{"data.augment.joint.hflip.p": 0.0})
    split = DecodedSplit.load(data)
    assert split.folder is None and split.a.shape == (6, 36, 36, 3) and split.a.dtype == np.uint8
    batches = DeviceBatches(split, data, CPU, torch.Generator())
    torch.manual_seed(5)
    x, y = batches.cut(torch.tensor([4, 1]))
    torch.manual_seed(5)
    offsets = torch.randint(0, 36 - 32 + 1, (2, 2))
    pairs = list_pairs(data.root, "train")
    for row, index in enumerate((4, 1)):
        inp, target = load_pair(pairs[index], data)
        for got, image in ((x[row], inp), (y[row], target)):
            resized = _to_unit_float()(_resize(36)(v2.functional.pil_to_tensor(image)))
            i, j = offsets[row].tolist()
            expected = _to_signed(resized[:, i : i + 32, j : j + 32])
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # x/255*2-1 and x/127.5-1 differ by an ulp


def test_flips_are_the_same_on_input_and_target(sample_root):
    plain = _data(sample_root, **{"data.augment.joint.hflip.p": 0.0})
    flipped = _data(sample_root, **{"data.augment.joint.hflip.p": 1.0, "data.augment.joint.vflip.p": 1.0})
    split = DecodedSplit.load(plain)
    index = torch.tensor([0, 2, 3])
    torch.manual_seed(1)
    x0, y0 = DeviceBatches(split, plain, CPU, torch.Generator()).cut(index)
    torch.manual_seed(1)
    x1, y1 = DeviceBatches(split, flipped, CPU, torch.Generator()).cut(index)
    assert torch.equal(x1, x0.flip(-1).flip(-2)) and torch.equal(y1, y0.flip(-1).flip(-2))


def test_a_split_too_big_for_memory_is_memory_mapped_once_and_rekeyed_when_a_file_changes(sample_root, tmp_path):
    data = _data(sample_root, **{"data.cache_memory_gb": 0.0, "data.cache_dir": str(tmp_path / "cache")})
    mapped = DecodedSplit.load(data)
    held = DecodedSplit.load(_data(sample_root))
    assert isinstance(mapped.a, np.memmap) and mapped.folder.parent == tmp_path / "cache"
    assert np.array_equal(mapped.a, held.a) and np.array_equal(mapped.b, held.b)
    written = (mapped.folder / "a.npy").stat().st_mtime_ns
    assert DecodedSplit.load(data).folder == mapped.folder  # reused, not decoded again
    assert (mapped.folder / "a.npy").stat().st_mtime_ns == written
    assert not list((tmp_path / "cache").glob(".*.tmp"))
    first = list_pairs(data.root, "train")[0].a
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert DecodedSplit.load(data).folder != mapped.folder
    finally:
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_loader_setting(sample_root):
    data = tiny_settings(sample_root).data
    assert data.loader == "auto"
    assert not use_device_loader(data, CPU)  # CPU keeps the workers loader: today's losses, bit for bit
    assert use_device_loader(data, torch.device("cuda"))  # only flips on: the device loader
    jitter = with_changes(tiny_settings(sample_root), {"data.augment.input.gamma.p": 0.5}).data
    assert not use_device_loader(jitter, torch.device("cuda"))  # gamma exists on the CPU only
    with pytest.raises(SettingsError, match=r"data.loader 'device' .* augment.input.gamma run in CPU workers"):
        with_changes(tiny_settings(sample_root), {"data.loader": "device", "data.augment.input.gamma.p": 0.5})


def test_training_on_the_device_loader_continues_exactly(sample_root, tmp_path):
    def device(out, **kw):
        return with_changes(tiny_settings(sample_root, out, **kw), {"data.loader": "device"})

    train(device(tmp_path / "full", **{"generator.epochs": 3}))
    with pytest.raises(KeyboardInterrupt):
        train(device(tmp_path / "split", **{"generator.epochs": 3}), [StopAfter(1)])
    train(device(tmp_path / "split", continue_train=True, **{"generator.epochs": 3}))
    assert losses(epoch_rows(tmp_path / "split")) == losses(epoch_rows(tmp_path / "full"))
    train(tiny_settings(sample_root, tmp_path / "workers", **{"generator.epochs": 3}))
    assert losses(epoch_rows(tmp_path / "workers")) != losses(epoch_rows(tmp_path / "full"))  # other random draws

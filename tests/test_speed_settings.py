"""Speed settings beside the defaults: torch.compile of G and D, and bf16 on a CPU that lacks it."""

import logging

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule

from nectargan_core import device as device_module
from nectargan_core.checkpoint import load_checkpoint
from nectargan_core.device import autocast_dtype
from nectargan_core.settings import with_changes
from nectargan_core.training.step import GANStep
from nectargan_core.training.trainer import train

from .helpers import epoch_rows, losses, tiny_settings


@pytest.mark.slow  # inductor compiles G and D (C++ on CPU): tens of seconds
def test_compiled_networks_train_to_the_eager_losses(sample_root, tmp_path):
    """Without dropout: inductor draws its dropout masks from a generator of its own."""

    def settings(out, **train_changes):
        base = tiny_settings(sample_root, tmp_path / out, **{"generator.epochs": 1}, **train_changes)
        return with_changes(base, {"model.generator.dropout": 0.0})

    train(settings("eager"))
    compiled_settings = settings("compiled", compile=True)
    step = GANStep(compiled_settings, torch.device("cpu"), None)
    assert all(isinstance(m, OptimizedModule) for m in (step._g, step._d, step._d_frozen))  # compile is on
    train(compiled_settings)
    state = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "latest.pt")
    assert not any("_orig_mod" in key for net in ("generator", "discriminator") for key in state[net])
    eager, compiled = losses(epoch_rows(tmp_path / "eager")), losses(epoch_rows(tmp_path / "compiled"))
    assert {k for k, v in eager[0].items() if v} == {k for k, v in compiled[0].items() if v}
    for column, value in ((k, v) for k, v in eager[0].items() if v):
        assert float(compiled[0][column]) == pytest.approx(float(value), rel=1e-4), column


@pytest.mark.parametrize(
    ("precision", "native", "warned"),
    [("bf16", False, True), ("bf16", True, False), ("auto", False, False), ("fp32", False, False)],
)
def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(sample_root, monkeypatch, caplog, precision, native, warned):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)  # the CPU flags, as if another CPU
    cfg = with_changes(tiny_settings(sample_root), {"train.precision": precision}).train
    with caplog.at_level(logging.WARNING, logger="nectargan_core.device"):
        dtype = autocast_dtype(cfg, torch.device("cpu"))
    assert dtype == (torch.bfloat16 if precision == "bf16" else None)
    assert ("120x slower" in caplog.text and "train.precision: fp32" in caplog.text) == warned


def test_this_cpus_bf16_support_is_read_from_onednn():
    assert device_module.cpu_has_native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

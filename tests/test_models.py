import pytest
import torch
from torch import nn

from nectargan_core.models import build_discriminator, build_generator, count_parameters
from nectargan_core.settings import settings_from_dict


def _settings(gen=None, disc=None, data=None):
    return settings_from_dict({"model": {"generator": gen or {}, "discriminator": disc or {}}, "data": data or {}})


def test_reference_parameter_counts():
    assert count_parameters(build_generator(_settings())) == 54_404_675
    assert count_parameters(build_generator(_settings(gen={"upsample": "bilinear"}))) == 39_150_979
    assert count_parameters(build_discriminator(_settings())) == 2_766_913


def test_patchgan_gives_30x30_logits_for_256_input():
    d = build_discriminator(_settings())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = d(x, x)
    assert out.shape == (1, 1, 30, 30)
    assert out.min() < 0 < out.max()  # raw logits, no sigmoid


SMALL = {"load_size": 64, "crop_size": 64}


@pytest.mark.parametrize("block", ["plain", "residual"])
@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_generator_variants_keep_size_and_range(block, upsample, norm):
    s = _settings(
        gen={"features": 8, "n_downs": 2, "block": block, "upsample": upsample, "norm": norm},
        data={**SMALL, "load_size": 64, "crop_size": 32},
    )
    g = build_generator(s)
    x = torch.randn(2, 3, 32, 32) * 3
    y = g(x)
    assert y.shape == (2, 3, 32, 32)
    assert y.abs().max() <= 1.0
    y.mean().backward()  # gradients reach the first layer
    assert g.downs[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("crop", [32, 48, 80])
def test_residual_generator_works_at_any_valid_crop(crop):
    s = _settings(gen={"features": 8, "n_downs": 2, "block": "residual"}, data={"load_size": 96, "crop_size": crop})
    g = build_generator(s).eval()
    with torch.no_grad():
        y = g(torch.randn(1, 3, crop, crop) * 5)
    assert y.shape == (1, 3, crop, crop) and y.abs().max() <= 1.0


def test_channels_are_configurable():
    s = _settings(
        gen={"features": 8, "n_downs": 1, "dropout_blocks": 1},
        disc={"features": 8},
        data={"load_size": 32, "crop_size": 32, "input_channels": 1},
    )
    g, d = build_generator(s), build_discriminator(s)
    x = torch.randn(1, 1, 32, 32)
    y = g(x)
    assert y.shape == (1, 3, 32, 32)
    assert d.net[0].in_channels == 4
    assert d(x, y).shape[1] == 1


def test_dropout_only_in_the_deepest_up_blocks_and_only_in_training():
    s = _settings(gen={"features": 8, "n_downs": 4, "dropout_blocks": 3}, data={"load_size": 64, "crop_size": 64})
    g = build_generator(s)
    with_dropout = [i for i, up in enumerate(g.ups) if any(isinstance(m, nn.Dropout) for m in up.modules())]
    assert with_dropout == [0, 1, 2]
    x = torch.randn(1, 3, 64, 64)
    g.eval()
    with torch.no_grad():
        assert torch.equal(g(x), g(x))
    g.train()
    with torch.no_grad():
        assert not torch.equal(g(x), g(x))


def test_init_is_normal_0_002():
    torch.manual_seed(0)
    g = build_generator(_settings())
    weights = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    biases = [m.bias for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.bias is not None]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)


def test_construction_is_seeded():
    s = _settings(gen={"features": 8, "n_downs": 1, "dropout_blocks": 1}, data={"load_size": 32, "crop_size": 32})
    torch.manual_seed(3)
    a = build_generator(s).state_dict()
    torch.manual_seed(3)
    b = build_generator(s).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

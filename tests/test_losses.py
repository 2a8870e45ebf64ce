import math

import pytest
import torch
from torchvision.models import vgg19

from nectargan_core.losses.gan import adversarial_loss, discriminator_loss, generator_adversarial_loss
from nectargan_core.losses.metrics import psnr, ssim
from nectargan_core.losses.objective import GeneratorObjective
from nectargan_core.losses.perceptual import (
    VGGPerceptualLoss,
    VGGWeightsMissing,
    load_vgg19_features,
    vgg19_weights_file,
)
from nectargan_core.losses.pixel import l1_loss, l2_loss, laplacian_loss, sobel_loss, sobel_magnitude
from nectargan_core.losses.weights import ever_active, loss_weights, scheduled_weight
from nectargan_core.settings import LossSettings, WeightSchedule

# A vertical step edge; as 3 channels (3*I, 0, 0) its channel-mean grey image is exactly I.
STEP = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def _rgb_step() -> torch.Tensor:
    image = torch.zeros(1, 3, 3, 3)
    image[0, 0] = 3 * STEP
    return image


def test_sobel_on_a_hand_computed_step():
    # Cross-correlation with zero padding, worked out by hand:
    gx = torch.tensor([[0.0, -3.0, 0.0], [0.0, -4.0, 0.0], [0.0, -3.0, 0.0]])
    gy = torch.tensor([[0.0, -1.0, -2.0], [0.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    expected = torch.sqrt(gx**2 + gy**2 + 1e-6)
    assert torch.allclose(sobel_magnitude(_rgb_step())[0, 0], expected, atol=1e-6)
    # Against a flat image (magnitude sqrt(1e-6) = 0.001 everywhere):
    flat = torch.zeros(1, 3, 3, 3)
    want = (2 * math.sqrt(10 + 1e-6) + 2 * math.sqrt(4 + 1e-6) + math.sqrt(16 + 1e-6) - 5 * 0.001) / 9
    assert sobel_loss(_rgb_step(), flat).item() == pytest.approx(want, abs=1e-6)
    assert sobel_loss(flat, flat).item() == 0.0


def test_laplacian_on_a_hand_computed_step():
    # Response of [[0,1,0],[1,-4,1],[0,1,0]]: [[0,1,-3],[0,1,-2],[0,1,-3]], so mean |.| = 11/9.
    flat = torch.zeros(1, 3, 3, 3)
    assert laplacian_loss(_rgb_step(), flat).item() == pytest.approx(11 / 9, abs=1e-6)
    assert laplacian_loss(_rgb_step(), _rgb_step()).item() == 0.0


def test_l1_and_l2():
    a = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    b = torch.zeros_like(a)
    assert l1_loss(a, b).item() == pytest.approx(2.5 / 4)
    assert l2_loss(a, b).item() == pytest.approx(2.25 / 4)


def test_gan_losses_on_known_logits():
    zeros = torch.zeros(1, 1, 4, 4)
    assert generator_adversarial_loss(zeros, "vanilla").item() == pytest.approx(math.log(2))
    assert discriminator_loss(zeros, zeros, "vanilla").item() == pytest.approx(math.log(2))
    real, fake = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), -1.0)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    # BCE(2, 1) = softplus(-2); BCE(-1, 0) = softplus(-1)
    assert discriminator_loss(real, fake, "vanilla").item() == pytest.approx(0.5 * (softplus(-2) + softplus(-1)))
    assert generator_adversarial_loss(fake, "vanilla").item() == pytest.approx(softplus(1))
    half = torch.full((1, 1, 2, 2), 0.5)
    assert generator_adversarial_loss(half, "lsgan").item() == pytest.approx(0.25)
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(0.5 * (1.0 + 1.0))
    assert adversarial_loss(half, False, "lsgan").item() == pytest.approx(0.25)


@pytest.fixture(scope="module")
def random_vgg_features():
    torch.manual_seed(0)
    return vgg19(weights=None).features[:16]


def test_vgg_loss_zero_on_identity_and_differentiable(random_vgg_features):
    loss = VGGPerceptualLoss(random_vgg_features)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    assert loss(real, real).item() == 0.0
    value = loss(fake, real)
    assert value.item() > 0
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())  # VGG stays frozen


def test_vgg_normalisation_switch_and_grey_input(random_vgg_features):
    real = torch.rand(1, 3, 32, 32) * 2 - 1
    fake = torch.rand(1, 3, 32, 32) * 2 - 1
    imagenet = VGGPerceptualLoss(random_vgg_features, imagenet_normalize=True)(fake, real)
    raw = VGGPerceptualLoss(random_vgg_features, imagenet_normalize=False)(fake, real)
    assert imagenet.item() != pytest.approx(raw.item())
    grey = VGGPerceptualLoss(random_vgg_features)(fake[:, :1], real[:, :1])
    assert grey.item() > 0


def test_vgg_sums_three_taps(random_vgg_features):
    fake, real = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    loss = VGGPerceptualLoss(random_vgg_features, imagenet_normalize=False)
    f, r = random_vgg_features[:4](fake), random_vgg_features[:4](real)
    expected = (f - r).abs().mean()
    f, r = random_vgg_features[4:9](f), random_vgg_features[4:9](r)
    expected += (f - r).abs().mean()
    f, r = random_vgg_features[9:16](f), random_vgg_features[9:16](r)
    expected += (f - r).abs().mean()
    assert loss(fake, real).item() == pytest.approx(expected.item(), rel=1e-5)


def test_vgg_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(VGGWeightsMissing, match=r"vgg19-dcbb9e9d\.pth") as info:
        vgg19_weights_file(None)
    assert "train.loss.vgg_weights" in str(info.value)
    with pytest.raises(VGGWeightsMissing, match="does not exist"):
        vgg19_weights_file(tmp_path / "missing.pth")
    # A file in the hub cache is found and loaded.
    torch.manual_seed(1)
    state = vgg19(weights=None).state_dict()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    assert vgg19_weights_file(None) == cached
    features = load_vgg19_features(cached)
    assert torch.equal(features[0].weight, state["features.0.weight"])
    assert torch.equal(features[14].weight, state["features.14.weight"])
    bogus = tmp_path / "bogus.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bogus)
    with pytest.raises(ValueError, match="not a VGG19 state dict"):
        load_vgg19_features(bogus)


def test_objective_runs_a_term_iff_its_weight_is_positive():
    cfg = LossSettings(l1=100.0, l2=0.0, sobel=2.0)
    objective = GeneratorObjective(cfg)
    fake, real = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    logits = torch.zeros(1, 1, 2, 2)
    weights = loss_weights(cfg, epoch=1)
    total, terms = objective(fake, real, weights, logits)
    assert set(terms) == {"gan", "l1", "sobel"}
    expected = 1.0 * math.log(2) + 100.0 * l1_loss(fake, real).item() + 2.0 * sobel_loss(fake, real).item()
    assert total.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="fake_logits"):
        objective(fake, real, weights)
    no_gan = {**weights, "gan": 0.0}
    _, terms = objective(fake, real, no_gan)
    assert "gan" not in terms
    with pytest.raises(ValueError, match="VGG"):
        objective(fake, real, {**weights, "vgg": 1.0}, logits)


def test_weight_schedules():
    lin = WeightSchedule(kind="linear", initial=0.0, target=10.0, start_epoch=3, end_epoch=7)
    assert [scheduled_weight(lin, e) for e in (1, 3, 4, 5, 7, 9)] == [0.0, 0.0, 2.5, 5.0, 10.0, 10.0]
    exp = WeightSchedule(kind="exponential", initial=100.0, target=1.0, start_epoch=1, end_epoch=3)
    assert scheduled_weight(exp, 2) == pytest.approx(10.0)
    assert scheduled_weight(exp, 1) == 100.0 and scheduled_weight(exp, 5) == 1.0
    cfg = LossSettings(l1=100.0, schedules={"sobel": lin, "l1": exp})
    assert loss_weights(cfg, 2) == {
        "gan": 1.0,
        "l1": pytest.approx(10.0),
        "l2": 0.0,
        "sobel": 0.0,
        "laplacian": 0.0,
        "vgg": 0.0,
    }
    assert loss_weights(cfg, 5)["sobel"] == 5.0  # the real epoch, for every loss
    assert ever_active(cfg, "sobel") and not ever_active(cfg, "vgg") and not ever_active(cfg, "l2")


@pytest.mark.parametrize("kind", ["linear", "exponential"])
def test_a_schedule_whose_start_is_its_end_steps_to_the_target_there(kind):
    """end_epoch is where the target is reached, also when it is the start epoch."""
    step = WeightSchedule(kind=kind, initial=1.0, target=8.0, start_epoch=4, end_epoch=4)
    assert [scheduled_weight(step, e) for e in (1, 3, 4, 5)] == [1.0, 1.0, 8.0, 8.0]


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 64, 48), (1, 3, 256, 256)])
def test_psnr_and_ssim_are_torchmetrics_numbers_bit_for_bit(shape):
    """The metrics are computed here (torchmetrics costs seconds of import per process); same numbers."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(shape, generator=generator)
    fake = (real + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)
    expected_ssim = structural_similarity_index_measure(fake, real, data_range=1.0, reduction="none")
    expected_psnr = peak_signal_noise_ratio(fake, real, data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert torch.equal(ssim(fake, real), expected_ssim)
    assert torch.equal(psnr(fake, real), expected_psnr)
    assert torch.equal(ssim(real, real), torch.ones(shape[0]))

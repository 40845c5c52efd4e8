"""Pseudo-DWI synthesis losses (Wang et al. 2020, Eqs. 6-8; LSGAN of Mao et al. 2017), the context encoder Phi_c
(Fig. 4) and the PatchGAN discriminator.

Expected loss values are hand-computed from the formulas on tiny tensors, never by calling the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from strokelab.errors import ConfigError
from strokelab.losses import (
    ContextLoss,
    LSGANGeneratorLoss,
    PixelLoss,
    lsgan_discriminator_loss,
    weight_map,
)
from strokelab.nn.context import ContextEncoder
from strokelab.nn.discriminator import PatchDiscriminator

# A 4-voxel example: d = pred - target = [0.5, 0.5, -1, 1]; A . d = [0.75, 0.5, -0.5, 0.75].
PRED = torch.tensor([[[[0.5, 1.0], [0.0, 2.0]]]])
TARGET = torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]])
A = torch.tensor([[[[1.5, 1.0], [0.5, 0.75]]]])


# ------------------------------------------------------------------------------------------- PixelLoss


@pytest.mark.parametrize(
    "norm, weighted, expected",
    [
        ("l2", False, (0.25 + 0.25 + 1 + 1) / 4),  # 0.625
        ("l1", False, (0.5 + 0.5 + 1 + 1) / 4),  # 0.75
        ("l2", True, (0.5625 + 0.25 + 0.25 + 0.5625) / 4),  # 0.40625: A multiplies d inside the norm
        ("l1", True, (0.75 + 0.5 + 0.5 + 0.75) / 4),  # 0.625
    ],
)
def test_pixel_loss_hand_computed(norm, weighted, expected):
    loss = PixelLoss(norm, weighted=weighted)
    value = loss(PRED, TARGET, weight=A) if weighted else loss(PRED, TARGET)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_pixel_loss_voxel_weight_attribute():
    assert PixelLoss(weighted=True).voxel_weight == "weight_map"
    assert PixelLoss("l1", weighted=True).voxel_weight == "weight_map"
    assert PixelLoss().voxel_weight is None
    assert PixelLoss("l1").voxel_weight is None


def test_weighted_pixel_loss_requires_the_weight_map():
    with pytest.raises(ValueError, match="weight map A"):
        PixelLoss(weighted=True)(PRED, TARGET)
    with pytest.raises(ValueError, match="weight shape"):
        PixelLoss(weighted=True)(PRED, TARGET, weight=torch.ones(1, 1, 2, 3))


def test_unweighted_pixel_loss_applies_an_explicit_weight():
    """``weighted=False`` only means the model does not serve A; a weight given explicitly is applied."""
    assert PixelLoss()(PRED, TARGET, weight=A).item() == pytest.approx(0.40625, rel=1e-6)


def test_pixel_loss_bad_norm_is_a_config_error():
    with pytest.raises(ConfigError, match="norm"):
        PixelLoss("l3")
    with pytest.raises(ConfigError, match="norm"):
        ContextLoss("huber")
    assert PixelLoss("L2").norm == "l2"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.uint8, torch.bool])
def test_pixel_loss_accepts_targets_of_other_dtypes(dtype):
    target = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    pred = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    value = PixelLoss()(pred, target.to(dtype))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx((0.25 + 0.25) / 4, rel=1e-6)


def test_pixel_loss_3d_missing_channel_axis_and_gradient():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 1, 4, 5, 3, generator=gen).requires_grad_(True)
    target = torch.rand(2, 1, 4, 5, 3, generator=gen)
    a = torch.rand(2, 1, 4, 5, 3, generator=gen) + 0.5
    value = PixelLoss(weighted=True)(pred, target[:, 0], weight=a[:, 0])
    value.backward()
    d = (pred - target).detach()
    assert value.item() == pytest.approx(((a * d) ** 2).mean().item(), rel=1e-6)
    # d/dpred mean((A d)^2) = 2 A^2 d / N
    assert torch.allclose(pred.grad, 2 * a**2 * d / d.numel(), rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="does not match"):
        PixelLoss()(pred, target[..., :2])


def test_weighted_l2_with_eq9_map_matches_numpy():
    label = np.zeros((6, 7), bool)
    label[2:4, 3:6] = True
    a = weight_map(label)
    rng = np.random.default_rng(1)
    dwi = rng.random(label.shape)
    pseudo = dwi + rng.normal(0, 0.1, label.shape)
    expected = np.mean((a * (pseudo - dwi)) ** 2)
    to = lambda v: torch.tensor(v)[None, None]  # noqa: E731
    got = PixelLoss(weighted=True)(to(pseudo).float(), to(dwi), weight=to(a))
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ ContextLoss


def test_context_loss_hand_computed():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 3.0], [1.0, -1.0, 0.0]])  # a - b = [0, 2, 0, -1, 1, 0]
    assert ContextLoss()(a, b).item() == pytest.approx(4 / 6, rel=1e-6)
    assert ContextLoss("l1")(a, b).item() == pytest.approx(4 / 6, rel=1e-6)
    assert ContextLoss("l2")(a, b).item() == pytest.approx(6 / 6, rel=1e-6)
    assert ContextLoss()(a, a).item() == 0.0
    assert ContextLoss().voxel_weight is None and ContextLoss("l2").voxel_weight is None


def test_context_loss_refuses_a_weight_and_mismatched_shapes():
    a = torch.zeros(2, 16)
    with pytest.raises(ValueError, match="no per-voxel weight"):
        ContextLoss()(a, a, weight=torch.ones(2, 16))
    with pytest.raises(ValueError, match="different shapes"):
        ContextLoss()(a, torch.zeros(2, 8))


# ----------------------------------------------------------------------------------------------- LSGAN


def test_lsgan_generator_loss():
    loss = LSGANGeneratorLoss()
    assert loss.voxel_weight is None
    assert loss(torch.ones(2, 1, 4, 4)).item() == 0.0  # every fake judged real
    scores = torch.tensor([[[[0.0, 2.0], [1.0, 1.0]]]])
    assert loss(scores).item() == pytest.approx(0.5 * (1 + 1 + 0 + 0) / 4)  # 0.25
    assert loss(scores, torch.zeros(1, 1, 8, 8)).item() == pytest.approx(0.25)  # a model's target is ignored
    with pytest.raises(ValueError, match="no per-voxel weight"):
        loss(scores, None, weight=torch.ones_like(scores))


def test_lsgan_discriminator_loss_values_and_optimum():
    real = torch.tensor([1.0, 0.5])
    fake = torch.tensor([0.0, 1.0])
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.25) / 2 + (0 + 1) / 2))  # 0.3125
    # Perfect separation (real -> b = 1, fake -> a = 0) is the minimum, 0.
    assert lsgan_discriminator_loss(torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)).item() == 0.0
    # Real and fake indistinguishable (p_g = p_data): D*(x) = p_data / (p_data + p_g) = 1/2, loss 1/4 (Mao et al.).
    s = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        lsgan_discriminator_loss(s.expand(4), s.expand(4)).backward()
        opt.step()
    assert s.item() == pytest.approx(0.5, abs=1e-6)
    assert lsgan_discriminator_loss(torch.full((4,), 0.5), torch.full((4,), 0.5)).item() == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------- ContextEncoder


@pytest.mark.parametrize(
    "shape, spatial_dims",
    [((2, 1, 64, 64), 2), ((3, 1, 96, 80), 2), ((1, 1, 256, 256), 2), ((2, 1, 32, 32, 8), 3), ((1, 1, 5, 7), 2)],
)
def test_context_encoder_output_shape(shape, spatial_dims):
    enc = ContextEncoder(spatial_dims=spatial_dims)
    out = enc(torch.rand(shape))
    assert out.shape == (shape[0], 16) and torch.isfinite(out).all()


def test_context_encoder_layers_and_parameter_count():
    enc = ContextEncoder()
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in enc.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert len(convs) == 5 and len(pools) == 2
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) for c in convs)
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 16]
    widths = [1, 16, 32, 64, 64, 16]
    expected = sum(9 * cin * cout + cout for cin, cout in zip(widths, widths[1:]))
    assert sum(p.numel() for p in enc.parameters()) == expected == 69456
    # Xavier-uniform weights (bound sqrt(6 / (fan_in + fan_out))), zero biases.
    for c in convs:
        bound = math.sqrt(6 / (9 * (c.in_channels + c.out_channels)))
        assert c.weight.abs().max().item() <= bound and c.bias.abs().max().item() == 0.0
    assert ContextEncoder(out_features=8)(torch.rand(1, 1, 32, 32)).shape == (1, 8)


def test_context_encoder_strides_and_bad_arguments():
    enc = ContextEncoder(spatial_dims=3, strides=[[2, 2, 1]] * 5, mid_pool_size=(8, 8, 2))
    assert enc(torch.rand(1, 1, 32, 32, 4)).shape == (1, 16)
    with pytest.raises(ValueError, match="4 positive ints"):
        ContextEncoder(channels=(16, 32, 64, 64, 16))
    with pytest.raises(ValueError, match="5 strides"):
        ContextEncoder(strides=[2, 2])
    with pytest.raises(ValueError, match="expects"):
        ContextEncoder()(torch.rand(1, 1, 8, 8, 8))


def _smooth_images(gen: torch.Generator, n: int = 2, size: int = 64) -> torch.Tensor:
    """Random images in [0, 1], smooth: bilinear up-sampling of 8 x 8 uniform noise."""
    coarse = torch.rand(n, 1, 8, 8, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_frozen_random_context_encoder_is_informative():
    """Evidence that a frozen Phi_c at its random Xavier initialisation keeps l_h from being trivially zero."""
    torch.manual_seed(0)
    enc = ContextEncoder().requires_grad_(False).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = _smooth_images(gen), _smooth_images(gen)
    loss = ContextLoss()
    with torch.no_grad():
        ex = enc(x)
        assert loss(ex, enc(x)).item() == 0.0
        different = loss(ex, enc(y)).item()
        assert different > 0.05 * ex.abs().mean().item()  # not a rounding-level difference
        noisy = [loss(ex, enc(x + s * torch.randn(x.shape, generator=gen))).item() for s in (0.01, 0.05, 0.2)]
    assert 0 < noisy[0] < noisy[1] < noisy[2]


def test_context_loss_trains_the_generator_through_a_frozen_encoder():
    """l_h's gradient reaches the generated image although Phi_c's parameters are frozen."""
    torch.manual_seed(1)
    enc = ContextEncoder().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    fake = _smooth_images(gen).requires_grad_(True)
    real = _smooth_images(gen)
    ContextLoss()(enc(fake), enc(real)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0 and torch.isfinite(fake.grad).all()
    assert all(p.grad is None for p in enc.parameters())


# ------------------------------------------------------------------------------------ PatchDiscriminator


@pytest.mark.parametrize(
    "shape, spatial_dims, out",
    [
        ((2, 1, 64, 64), 2, (2, 1, 8, 8)),
        ((1, 1, 96, 80), 2, (1, 1, 12, 10)),
        ((2, 1, 32, 32, 8), 3, (2, 1, 4, 4, 1)),
    ],
)
def test_patch_discriminator_shapes(shape, spatial_dims, out):
    disc = PatchDiscriminator(spatial_dims=spatial_dims)
    scores = disc(torch.rand(shape))
    assert scores.shape == out and torch.isfinite(scores).all()


def test_patch_discriminator_layers_and_parameter_count():
    disc = PatchDiscriminator()
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in disc.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 1]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (2, 2), (1, 1), (1, 1)]
    assert all(c.kernel_size == (4, 4) for c in convs) and len(norms) == 3
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in disc.modules())
    widths = [1, 16, 32, 64, 128]
    expected = (
        16 * 1 * 16
        + 16  # conv1 with bias, no norm
        + sum(16 * cin * cout + 2 * cout for cin, cout in zip(widths[1:], widths[2:]))  # conv (no bias) + affine IN
        + 16 * 128
        + 1  # score conv with bias
    )
    assert sum(p.numel() for p in disc.parameters()) == expected == 174801
    assert disc.receptive_field == (70, 70)  # pix2pix's 70 x 70 PatchGAN
    with pytest.raises(ValueError, match="one stride per hidden layer"):
        PatchDiscriminator(strides=[2, 2])


def test_discriminator_learns_to_separate_two_constant_images():
    """Deterministic on CPU (seed 0). Measured over seeds 0-19 (one thread) after these 60 steps: LSGAN loss at
    most 0.037 (bound 0.1), real-minus-fake score gap at least 0.24 (bound 0.1), so both keep a margin."""
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    real = torch.full((1, 1, 32, 32), 0.8)
    fake = torch.full((1, 1, 32, 32), 0.2)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = lsgan_discriminator_loss(disc(real), disc(fake))
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    with torch.no_grad():
        r, f = disc(real), disc(fake)
        final = lsgan_discriminator_loss(r, f).item()
    assert final < 0.1 < first
    assert r.min().item() > f.max().item() + 0.1  # every real patch scores above every fake patch

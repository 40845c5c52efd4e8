"""Losses: limits, finiteness, Dice identity, deep supervision, and the BCE-collapse finding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from strokelab.losses import BCELoss, DeepSupervisionLoss, DiceCELoss, DiceLoss, downsample_target

BIG = 40.0  # sigmoid(+-40) is 0/1 in float32


pytestmark = pytest.mark.usefixtures("single_thread")


def _random_mask(shape, p=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < p).float()


def _perfect_logits(target):
    return (target * 2 - 1) * BIG


@pytest.mark.parametrize("batch_dice", [False, True])
def test_perfect_logits_give_zero_dice_and_dice_ce(batch_dice):
    target = _random_mask((2, 1, 8, 8, 4))
    logits = _perfect_logits(target)
    assert DiceLoss(batch_dice=batch_dice)(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    assert DiceCELoss(batch_dice=batch_dice)(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    assert BCELoss()(logits, target).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("loss", [BCELoss(), BCELoss(pos_weight=10.0), DiceLoss(), DiceLoss(batch_dice=True), DiceCELoss()])
def test_all_background_target_gives_finite_loss_and_gradient(loss):
    target = torch.zeros(2, 1, 6, 6, 6)
    for logits in (torch.randn(2, 1, 6, 6, 6), torch.full((2, 1, 6, 6, 6), -BIG)):
        logits = logits.clone().requires_grad_(True)
        value = loss(logits, target)
        value.backward()
        assert value.dim() == 0 and torch.isfinite(value)
        assert torch.isfinite(logits.grad).all()


def test_empty_target_predicted_empty_is_perfect():
    target = torch.zeros(1, 1, 4, 4, 4)
    assert DiceLoss()(torch.full_like(target, -BIG), target).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_loss_is_one_minus_dice_for_hard_predictions(batch_dice):
    target = _random_mask((3, 1, 8, 8, 8), p=0.2, seed=1)
    pred = _random_mask((3, 1, 8, 8, 8), p=0.25, seed=2)
    loss = DiceLoss(batch_dice=batch_dice)(_perfect_logits(pred), target)
    if batch_dice:
        dice = 2 * (pred * target).sum() / (pred.sum() + target.sum())
    else:
        dims = (1, 2, 3, 4)
        dice = (2 * (pred * target).sum(dims) / (pred.sum(dims) + target.sum(dims))).mean()
    assert loss.item() == pytest.approx(1 - dice.item(), abs=1e-5)


def test_dice_ce_is_weighted_sum():
    target = _random_mask((2, 1, 4, 4, 4))
    logits = torch.randn(2, 1, 4, 4, 4)
    combined = DiceCELoss(lambda_dice=0.3, lambda_ce=2.0)(logits, target)
    expected = 0.3 * DiceLoss()(logits, target) + 2.0 * BCELoss()(logits, target)
    assert combined.item() == pytest.approx(expected.item(), rel=1e-6)


def test_shape_mismatch_raises_and_missing_channel_axis_is_accepted():
    logits = torch.randn(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="does not match"):
        DiceLoss()(logits, torch.zeros(2, 1, 4, 4, 3))
    target = _random_mask((2, 4, 4, 4))
    assert DiceCELoss()(logits, target).item() == pytest.approx(DiceCELoss()(logits, target[:, None]).item())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_deep_supervision_default_weights_sum_to_one(n):
    w = DeepSupervisionLoss.default_weights(n)
    assert len(w) == n and sum(w) == pytest.approx(1.0)
    if n > 1:
        assert w[-1] == 0.0
        assert all(w[i] == pytest.approx(2 * w[i + 1]) for i in range(n - 2))


def test_deep_supervision_explicit_weights_are_normalised():
    loss = DeepSupervisionLoss(DiceLoss(), weights=[2, 1, 1])
    assert loss.level_weights(3) == pytest.approx([0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="3 weights"):
        loss.level_weights(2)


def test_deep_supervision_with_identical_perfect_logits_is_zero():
    target = torch.zeros(2, 1, 16, 16, 8)
    target[:, :, 4:12, 4:12, 2:6] = 1  # aligned with the 2x / 4x grids
    sizes = [(16, 16, 8), (8, 8, 8), (4, 4, 4)]
    logits = [_perfect_logits(downsample_target(target, s)) for s in sizes]
    loss = DeepSupervisionLoss(DiceCELoss())
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    # A single tensor is passed straight through.
    assert loss(logits[0], target).item() == pytest.approx(0.0, abs=1e-5)


def test_deep_supervision_matches_manual_weighted_sum():
    target = _random_mask((1, 1, 8, 8, 8))
    logits = [torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 4, 4, 4), torch.randn(1, 1, 2, 2, 2)]
    base = DiceCELoss()
    got = DeepSupervisionLoss(base)(logits, target)
    w = DeepSupervisionLoss.default_weights(3)
    expected = w[0] * base(logits[0], target) + w[1] * base(logits[1], downsample_target(target, (4, 4, 4)))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_downsampled_target_keeps_single_voxel_lesions():
    target = torch.zeros(1, 1, 16, 16, 8)
    target[0, 0, 5, 9, 3] = 1
    for size in [(8, 8, 8), (4, 4, 4), (2, 2, 1)]:
        small = downsample_target(target, size)
        assert small.shape == (1, 1) + size and small.sum().item() == 1.0


def _imbalanced_problem():
    """1% foreground voxels whose single feature is only mildly brighter (+1.25 sd) than background."""
    gen = torch.Generator().manual_seed(0)
    shape = (2, 1, 32, 32, 32)
    n = torch.Size(shape).numel()
    target = torch.zeros(n)
    target[torch.randperm(n, generator=gen)[: n // 100]] = 1
    target = target.reshape(shape)
    image = 1.25 * target + torch.randn(shape, generator=gen)
    return image, target


def _train_pointwise(loss_fn, image, target, steps=100):
    torch.manual_seed(0)
    model = nn.Conv3d(1, 1, kernel_size=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(image), target).backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(model(image))


def test_bce_collapses_to_background_on_imbalanced_data_while_dice_ce_does_not():
    """Reproduces the TUM finding: with ~1% foreground, BCE predicts background everywhere."""
    image, target = _imbalanced_problem()

    probs_bce = _train_pointwise(BCELoss(), image, target)
    assert (probs_bce < 0.5).all()  # no voxel predicted as lesion: collapse

    probs_dice_ce = _train_pointwise(DiceCELoss(), image, target)
    pred = probs_dice_ce > 0.5
    assert pred.sum() > 0
    assert (pred & (target > 0)).sum() > 0  # finds real lesion voxels

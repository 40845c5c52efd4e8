"""Wang et al. (2020) segmentation losses (Eqs. 11-14) and the weight map A (Eq. 9), against hand-computed values.

The expected numbers are written from the paper's formulas: as exact fractions for a 4-voxel example, and with
plain numpy (float64) for larger ones; never by calling the code under test.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from strokelab.losses import (
    CEHGDLoss,
    CELoss,
    DeepSupervisionLoss,
    GDLoss,
    HGDLoss,
    WangDiceLoss,
    WCEHGDLoss,
    WCELoss,
    downsample_weight,
    weight_map,
)

pytestmark = pytest.mark.usefixtures("single_thread")

BIG = 40.0  # sigmoid(+-40) is 0/1 in float32
LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)

# The 4-voxel example: p = sigmoid(x) = [3/4, 1/2, 1/4, 1/2] (lesion class), one lesion voxel, A given.
X = [math.log(3.0), 0.0, -math.log(3.0), 0.0]
Y = [1.0, 0.0, 0.0, 0.0]
A = [1.5, 1.0, 0.5, 0.5]
# Per-voxel CE -sum_c Y^c log P^c: -log(3/4), -log(1/2), -log(1 - 1/4), -log(1 - 1/2).
CE = (2 * LN43 + 2 * LN2) / 4
WCE = (1.5 * LN43 + 1.0 * LN2 + 0.5 * LN43 + 0.5 * LN2) / (1.5 + 1.0 + 0.5 + 0.5)
# GD: lesion class sum Y P = 3/4, sum Y = 1, sum P = 2, m_1 = 1; background sum Y P = 1/2 + 3/4 + 1/2 = 7/4,
# sum Y = 3, sum P = 2, m_0 = 1/9.  S = 2 (7/4 / 9 + 3/4) / ((3 + 2) / 9 + (1 + 2)) = (17/9) / (32/9) = 17/32.
GD = 1 - 17 / 32
HGD = -math.log(17 / 32)
# Two-class Dice mean (L_DICE row): lesion 2 (3/4) / (1 + 2) = 1/2, background 2 (7/4) / (3 + 2) = 7/10.
DICE_TWO_CLASS = 1 - (0.5 + 0.7) / 2
DICE_LESION = 1 - 0.5

# The 4 voxels laid out as 2D (B, 1, H, W) and 3D (B, 1, D, H, W) images of one sample.
SHAPES_1x4 = [(1, 1, 2, 2), (1, 1, 4, 1), (1, 1, 1, 2, 2), (1, 1, 2, 1, 2)]


def _t(values, shape):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def _loss_cases():
    """Every Wang loss with whether it needs the weight map A."""
    return [
        (CELoss(), False),
        (WCELoss(), True),
        (WCELoss(batch_reduction="sample"), True),
        (WangDiceLoss(), False),
        (WangDiceLoss(include_background=False, batch_reduction="sample"), False),
        (GDLoss(), False),
        (GDLoss(batch_reduction="sample"), False),
        (HGDLoss(), False),
        (HGDLoss(batch_reduction="sample"), False),
        (CEHGDLoss(), False),
        (WCEHGDLoss(), True),
        (WCEHGDLoss(batch_reduction="sample"), True),
    ]


def _call(loss, needs_weight, x, y, a=None):
    if not needs_weight:
        return loss(x, y)
    return loss(x, y, weight=torch.ones_like(y) if a is None else a)


# ------------------------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize("shape", SHAPES_1x4)
def test_four_voxel_example_matches_the_formulas(shape):
    x, y, a = _t(X, shape), _t(Y, shape), _t(A, shape)
    assert CELoss()(x, y).item() == pytest.approx(CE, rel=1e-6)
    assert WCELoss()(x, y, weight=a).item() == pytest.approx(WCE, rel=1e-6)
    assert GDLoss()(x, y).item() == pytest.approx(GD, rel=1e-6)
    assert HGDLoss()(x, y).item() == pytest.approx(HGD, rel=1e-5)  # eps = 1e-6 moves it by < 1e-6
    assert HGDLoss(eps=1e-12)(x, y).item() == pytest.approx(HGD, rel=1e-6)
    assert CEHGDLoss()(x, y).item() == pytest.approx(CE + HGD, rel=1e-5)
    assert WCEHGDLoss()(x, y, weight=a).item() == pytest.approx(WCE + HGD, rel=1e-5)
    assert CEHGDLoss(lambda_ce=0.3, lambda_hgd=2.0)(x, y).item() == pytest.approx(0.3 * CE + 2.0 * HGD, rel=1e-5)
    assert WCEHGDLoss(lambda_wce=2.0, lambda_hgd=0.5)(x, y, weight=a).item() == pytest.approx(2.0 * WCE + 0.5 * HGD, rel=1e-5)
    assert WangDiceLoss()(x, y).item() == pytest.approx(DICE_TWO_CLASS, abs=1e-5)
    assert WangDiceLoss(include_background=False)(x, y).item() == pytest.approx(DICE_LESION, abs=1e-5)


def test_gd_class_weights_matter():
    """Without m_c the two-class ratio would be 2 (7/4 + 3/4) / (5 + 3) = 5/8; with m_c it is 17/32."""
    x, y = _t(X, (1, 1, 2, 2)), _t(Y, (1, 1, 2, 2))
    assert 1 - GDLoss()(x, y).item() == pytest.approx(17 / 32, rel=1e-6)
    assert 17 / 32 != pytest.approx(5 / 8, rel=1e-3)
    # m_c are relative: the same images with every volume doubled (two copies) give the same score.
    x2, y2 = torch.cat([x, x], dim=3), torch.cat([y, y], dim=3)
    assert GDLoss()(x2, y2).item() == pytest.approx(GD, rel=1e-6)


def test_wce_with_unit_weight_is_ce_and_ignores_the_scale_of_a():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 6, 5, generator=gen)
    y = (torch.rand(3, 1, 6, 5, generator=gen) < 0.3).float()
    a = torch.rand(3, 1, 6, 5, generator=gen) + 0.5
    assert WCELoss()(x, y, weight=torch.ones_like(y)).item() == pytest.approx(CELoss()(x, y).item(), rel=1e-6)
    assert WCELoss()(x, y, weight=7.0 * a).item() == pytest.approx(WCELoss()(x, y, weight=a).item(), rel=1e-5)


# ------------------------------------------------------------------------ batch reduction (numpy reference)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_ce(x, y):
    p = _np_sigmoid(x)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _np_gd_score(x, y):
    """Eq. 14's 1 - L_GD over all voxels of x, y; an empty class gets the largest finite m_c."""
    p1 = _np_sigmoid(x)
    ps, ys = [1 - p1, p1], [1 - y, y]
    m = [1 / ys[c].sum() ** 2 if ys[c].sum() > 0 else np.inf for c in (0, 1)]
    finite = [v for v in m if np.isfinite(v)]
    m = [v if np.isfinite(v) else max(finite) for v in m]
    num = 2 * sum(m[c] * (ys[c] * ps[c]).sum() for c in (0, 1))
    den = sum(m[c] * (ys[c] + ps[c]).sum() for c in (0, 1))
    return num / den


def _batch_example():
    gen = np.random.default_rng(3)
    x = gen.normal(0, 2, (2, 1, 5, 6))
    y = np.zeros((2, 1, 5, 6))
    y[0, 0, 1:3, 1:4] = 1  # 6 lesion voxels
    y[1, 0, 4, 5] = 1  # 1 lesion voxel
    a = np.where(y > 0, 1.5, 0.5 + gen.uniform(0, 0.5, y.shape))
    return x, y, a


def test_batch_and_sample_reductions_match_numpy():
    x, y, a = _batch_example()
    ce = _np_ce(x, y)
    wce_batch = (a * ce).sum() / a.sum()
    wce_sample = np.mean([(a[b] * ce[b]).sum() / a[b].sum() for b in range(2)])
    s_batch = _np_gd_score(x, y)
    s_sample = np.array([_np_gd_score(x[b], y[b]) for b in range(2)])
    assert abs(wce_batch - wce_sample) > 1e-3 and abs(s_batch - s_sample.mean()) > 1e-3  # the example tells them apart

    xt, yt, at = (torch.tensor(v, dtype=torch.float32) for v in (x, y, a))
    assert CELoss()(xt, yt).item() == pytest.approx(ce.mean(), rel=1e-5)
    assert WCELoss()(xt, yt, weight=at).item() == pytest.approx(wce_batch, rel=1e-5)
    assert WCELoss("sample")(xt, yt, weight=at).item() == pytest.approx(wce_sample, rel=1e-5)
    assert GDLoss()(xt, yt).item() == pytest.approx(1 - s_batch, rel=1e-5)
    assert GDLoss("sample")(xt, yt).item() == pytest.approx(np.mean(1 - s_sample), rel=1e-5)
    assert HGDLoss(eps=1e-12)(xt, yt).item() == pytest.approx(-np.log(s_batch), rel=1e-5)
    assert HGDLoss("sample", eps=1e-12)(xt, yt).item() == pytest.approx(np.mean(-np.log(s_sample)), rel=1e-5)
    got = WCEHGDLoss(batch_reduction="sample", eps=1e-12)(xt, yt, weight=at).item()
    assert got == pytest.approx(wce_sample + np.mean(-np.log(s_sample)), rel=1e-5)


# ---------------------------------------------------------------------------------------- empty lesion


@pytest.mark.parametrize("batch_reduction", ["batch", "sample"])
def test_empty_lesion_gd_is_the_mean_lesion_probability(batch_reduction):
    """The guard (empty class -> largest finite m_c) gives m_1 = m_0, so L_GD = mean P^1."""
    x = torch.randn(2, 1, 4, 5, generator=torch.Generator().manual_seed(1))
    y = torch.zeros_like(x)
    p1 = _np_sigmoid(x.double().numpy())
    gd = p1.mean() if batch_reduction == "batch" else p1.mean(axis=(1, 2, 3))
    assert GDLoss(batch_reduction)(x, y).item() == pytest.approx(np.mean(gd), rel=1e-5)
    assert HGDLoss(batch_reduction, eps=1e-12)(x, y).item() == pytest.approx(np.mean(-np.log(1 - gd)), rel=1e-5)


@pytest.mark.parametrize("loss, needs_weight", _loss_cases())
def test_empty_lesion_gives_finite_loss_and_gradient(loss, needs_weight):
    y = torch.zeros(2, 1, 6, 6)
    for x in (torch.randn(2, 1, 6, 6), torch.full((2, 1, 6, 6), BIG), torch.full((2, 1, 6, 6), -BIG)):
        x = x.clone().requires_grad_(True)
        value = _call(loss, needs_weight, x, y, a=torch.full_like(y, 0.5))
        value.backward()
        assert value.dim() == 0 and torch.isfinite(value)
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("loss, needs_weight", _loss_cases())
def test_perfect_prediction_is_zero_with_and_without_lesion(loss, needs_weight):
    y = torch.zeros(2, 1, 8, 8)
    x = torch.full_like(y, -BIG)
    assert _call(loss, needs_weight, x, y, a=torch.full_like(y, 0.5)).item() == pytest.approx(0.0, abs=1e-5)
    y[0, 0, 2:5, 3:6] = 1
    y[1, 0, 7, 7] = 1
    x = (2 * y - 1) * BIG
    assert _call(loss, needs_weight, x, y).item() == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------------------------ gradient finite


@pytest.mark.parametrize("loss, needs_weight", _loss_cases())
def test_gradient_is_finite_everywhere(loss, needs_weight):
    y = torch.zeros(2, 1, 6, 6)
    y[:, :, 1:3, 1:3] = 1
    inputs = [
        torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(2)) * 5,
        (1 - 2 * y) * BIG,  # everything wrong: generalized Dice score ~0, L_HGD at its clamp
        (1 - 2 * y) * 1e4,  # beyond float32's sigmoid range
        (2 * y - 1) * 1e4,
        torch.zeros(2, 1, 6, 6),
    ]
    for x in inputs:
        x = x.clone().requires_grad_(True)
        value = _call(loss, needs_weight, x, y, a=torch.where(y > 0, 1.5, 0.75))
        value.backward()
        assert torch.isfinite(value), x
        assert torch.isfinite(x.grad).all(), x


def test_hgd_clamp_bounds_the_loss_when_gd_tends_to_one():
    y = torch.zeros(1, 1, 4, 4)
    y[0, 0, 0, 0] = 1
    x = (1 - 2 * y) * BIG
    assert GDLoss()(x, y).item() == pytest.approx(1.0, abs=1e-6)
    for eps in (1e-6, 1e-3):
        assert HGDLoss(eps=eps)(x, y).item() == pytest.approx(-math.log(eps) + math.log1p(eps), rel=1e-4)


def test_hgd_grows_faster_than_gd_for_hard_samples():
    """Eq. 13's point: same monotonicity as L_GD, steeper for large L_GD."""
    y = torch.zeros(1, 1, 4, 4)
    y[0, 0, :2, :2] = 1
    slopes = []
    for level in (2.0, -2.0):  # easy (lesion predicted) and hard (lesion missed)
        x = torch.where(y > 0, level, -2.0).requires_grad_(True)
        gd, hgd = GDLoss()(x, y), HGDLoss()(x, y)
        assert hgd.item() > gd.item()
        slopes.append(hgd.item() / gd.item())
    assert slopes[1] > slopes[0]


# ------------------------------------------------------------------------------------ shapes and errors


@pytest.mark.parametrize("shape", [(1, 1, 7, 6), (3, 1, 7, 6), (1, 1, 4, 5, 3), (2, 1, 4, 5, 3)])
@pytest.mark.parametrize("loss, needs_weight", _loss_cases())
def test_each_loss_works_in_2d_and_3d_and_with_one_sample(shape, loss, needs_weight):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    y = (torch.rand(shape, generator=gen) < 0.3).float()
    value = _call(loss, needs_weight, x, y, a=torch.rand(shape, generator=gen) + 0.5)
    value.backward()
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # A missing channel axis on the target (and on A) is accepted.
    again = _call(loss, needs_weight, x, y[:, 0], a=torch.ones(shape)[:, 0])
    assert again.item() == pytest.approx(_call(loss, needs_weight, x, y, a=torch.ones(shape)).item(), rel=1e-6)


@pytest.mark.parametrize("loss, needs_weight", _loss_cases())
def test_bf16_logits_are_computed_in_float32(loss, needs_weight):
    x, y = _t(X, (1, 1, 2, 2)), _t(Y, (1, 1, 2, 2))
    value = _call(loss, needs_weight, x.bfloat16(), y)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_call(loss, needs_weight, x.bfloat16().float(), y).item(), rel=1e-6)


@pytest.mark.parametrize("loss", [WCELoss(), WCEHGDLoss()])
def test_weighted_losses_require_the_weight_map(loss):
    x, y = _t(X, (1, 1, 2, 2)), _t(Y, (1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"weight=A"):
        loss(x, y)
    with pytest.raises(ValueError, match="weight shape"):
        loss(x, y, weight=torch.ones(1, 1, 2, 3))


@pytest.mark.parametrize("loss", [CELoss(), WangDiceLoss(), GDLoss(), HGDLoss(), CEHGDLoss()])
def test_unweighted_losses_refuse_a_weight(loss):
    x, y = _t(X, (1, 1, 2, 2)), _t(Y, (1, 1, 2, 2))
    with pytest.raises(ValueError, match="WCELoss / WCEHGDLoss"):
        loss(x, y, weight=torch.ones_like(y))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="batch_reduction"):
        GDLoss(batch_reduction="mean")
    with pytest.raises(ValueError, match="eps"):
        HGDLoss(eps=0.0)
    with pytest.raises(ValueError, match="not both 0"):
        WCEHGDLoss(lambda_wce=0.0, lambda_hgd=0.0)
    with pytest.raises(ValueError, match="one lesion logit"):
        GDLoss()(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="does not match"):
        CELoss()(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 4))


def test_deep_supervision_passes_the_weight_map_down():
    gen = torch.Generator().manual_seed(5)
    y = torch.zeros(2, 1, 8, 8)
    y[:, :, 2:6, 3:5] = 1
    a = torch.where(y > 0, 1.5, 0.5 + torch.rand(2, 1, 8, 8, generator=gen) / 2)
    logits = [torch.randn(2, 1, 8, 8, generator=gen), torch.randn(2, 1, 4, 4, generator=gen), torch.randn(2, 1, 2, 2)]
    base = WCEHGDLoss()
    w = DeepSupervisionLoss.default_weights(3)
    y4 = torch.nn.functional.max_pool2d(y, 2)
    a4 = torch.nn.functional.avg_pool2d(a, 2)
    expected = w[0] * base(logits[0], y, weight=a) + w[1] * base(logits[1], y4, weight=a4)
    assert DeepSupervisionLoss(base)(logits, y, weight=a).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(downsample_weight(a, (4, 4)), a4)
    with pytest.raises(ValueError, match="weight=A"):
        DeepSupervisionLoss(base)(logits, y)


# ------------------------------------------------------------------------------------- weight map A


def _background_weight(d, D=50.0):
    """Eq. 9 off the lesion, written out."""
    e = math.exp(-d / D)
    return 0.5 + e / (e + 1)


def test_weight_map_values_at_the_lesion_next_to_it_and_far_away():
    label = np.zeros((1, 401), bool)
    label[0, 0] = True
    a = weight_map(label)
    assert a.dtype == np.float32 and a.shape == label.shape
    assert a[0, 0] == pytest.approx(1.5)
    assert a[0, 1] == pytest.approx(_background_weight(1.0), rel=1e-6)  # 0.99500
    assert a[0, 1] == pytest.approx(0.995, abs=1e-4)  # just under the d = 0 limit 1.0
    assert a[0, 400] == pytest.approx(_background_weight(400.0), rel=1e-6)  # 0.50034
    assert a[0, 400] == pytest.approx(0.5, abs=1e-3)
    assert np.all(np.diff(a[0, 1:]) < 0)  # decays with the distance
    assert weight_map(label, w=3.0, D=2.0)[0, 0] == 3.0
    assert weight_map(label, w=3.0, D=2.0)[0, 3] == pytest.approx(_background_weight(3.0, D=2.0), rel=1e-6)


def test_weight_map_in_voxels_or_in_mm():
    label = np.zeros((5, 6), bool)
    label[0, 0] = True
    in_voxels = weight_map(label)
    in_mm = weight_map(label, spacing=(2.0, 0.5))
    assert in_voxels[3, 4] == pytest.approx(_background_weight(math.hypot(3, 4)), rel=1e-6)
    assert in_mm[3, 4] == pytest.approx(_background_weight(math.hypot(3 * 2.0, 4 * 0.5)), rel=1e-6)
    assert in_mm[0, 0] == in_voxels[0, 0] == pytest.approx(1.5)


def test_weight_map_3d():
    label = np.zeros((4, 5, 6), bool)
    label[1, 1, 1] = True
    label[3, 4, 5] = True
    a = weight_map(label, D=10.0)
    assert a[1, 1, 1] == a[3, 4, 5] == pytest.approx(1.5)
    assert a[2, 2, 2] == pytest.approx(_background_weight(math.sqrt(3), D=10.0), rel=1e-6)  # nearest: (1, 1, 1)
    assert a[3, 4, 3] == pytest.approx(_background_weight(2.0, D=10.0), rel=1e-6)  # nearest: (3, 4, 5)
    b = weight_map(label, D=10.0, spacing=(1.0, 2.0, 3.0))
    assert b[2, 2, 2] == pytest.approx(_background_weight(math.sqrt(1 + 4 + 9), D=10.0), rel=1e-6)
    assert b[3, 4, 3] == pytest.approx(_background_weight(6.0, D=10.0), rel=1e-6)


@pytest.mark.parametrize("shape", [(7, 9), (3, 7, 9)])
def test_weight_map_of_an_empty_label_is_one_half(shape):
    a = weight_map(np.zeros(shape, bool))
    assert a.dtype == np.float32 and a.shape == shape
    assert np.all(a == 0.5)


def test_weight_map_reads_masks_as_above_one_half_and_stays_in_range():
    label = np.array([[0.0, 0.4, 0.6, 1.0, 0.0, 0.0]])
    a = weight_map(label)
    assert a[0, 2] == a[0, 3] == pytest.approx(1.5)
    assert a[0, 1] == a[0, 4] == pytest.approx(_background_weight(1.0), rel=1e-6)
    rng = np.random.default_rng(0)
    a = weight_map(rng.random((20, 20, 8)) > 0.97, spacing=(0.9, 0.9, 5.0))
    assert np.isfinite(a).all()
    off = a[a != np.float32(1.5)]
    assert off.min() > 0.5 and off.max() < 1.0


def test_weight_map_bad_arguments_raise():
    with pytest.raises(ValueError, match="2D or 3D"):
        weight_map(np.zeros(5, bool))
    with pytest.raises(ValueError, match="D must be"):
        weight_map(np.zeros((3, 3), bool), D=0.0)
    with pytest.raises(ValueError, match="spacing"):
        weight_map(np.zeros((3, 3), bool), spacing=(1.0, 1.0, 1.0))


def test_weight_map_module_runs_without_torch():
    """The data side can build A with numpy and scipy alone: the module imports no torch."""
    path = Path(__file__).resolve().parents[1] / "src" / "strokelab" / "losses" / "weight_map.py"
    code = (
        "import sys, importlib.util, numpy as np\n"
        "sys.modules['torch'] = None\n"  # any 'import torch' now fails
        f"spec = importlib.util.spec_from_file_location('wm', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "a = m.weight_map(np.eye(3, dtype=bool))\n"
        "assert a.dtype == np.float32 and a[0, 0] == 1.5, a\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_wce_with_the_weight_map_matches_eq_12():
    label = np.zeros((6, 7), bool)
    label[2:4, 3:6] = True
    a = weight_map(label, spacing=(1.0, 1.5))
    x = np.random.default_rng(6).normal(0, 1.5, label.shape)
    y = label.astype(np.float64)
    expected = (a * _np_ce(x, y)).sum() / a.sum()
    got = WCELoss()(
        torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor(y)[None, None], weight=torch.tensor(a)[None, None]
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)

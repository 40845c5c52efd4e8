"""Losses for binary lesion segmentation from a single channel of logits.

Call convention, shared by every loss of :mod:`strokelab.losses`: ``loss(pred, target, weight=None) -> scalar``
with ``pred`` the logits ``(B, 1, *spatial)`` (2D or 3D spatial; the platform losses accept any ``(B, C, ...)``),
``target`` of the same shape with values in ``[0, 1]`` (binary masks, or soft labels; a missing channel axis is
added) and ``weight`` an optional non-negative per-voxel weight map of the same shape. All are computed in
float32 and are finite on an all-background batch.

What ``weight`` does:

- :class:`BCELoss`: voxel-weighted mean ``sum(w * l) / sum(w)``.
- :class:`DiceLoss`: weighted sums ``TP = sum(w p t)``, ``sum(w p)``, ``sum(w t)``; a 0/1 weight restricts the
  Dice to the voxels where it is 1 (an ignore mask). :class:`DiceCELoss` passes it to both terms.
- :class:`DeepSupervisionLoss`: passes it to its loss at every level, average-pooled to the level's size.
- Wang et al. (2020) losses follow the paper exactly: the weight map ``A`` (Eq. 9,
  :func:`strokelab.losses.weight_map`) enters only the weighted cross-entropy. :class:`WCELoss` and
  :class:`WCEHGDLoss` require it; :class:`CELoss`, :class:`WangDiceLoss`, :class:`GDLoss`, :class:`HGDLoss` and
  :class:`CEHGDLoss` are defined without a voxel weight and raise ``ValueError`` if one is given, so that an
  ablation row of Table 4 cannot silently turn into another.

Why not BCE alone: on infarct data the foreground is often ~1% of the voxels, and a voxel-wise BCE
is minimised by predicting background almost everywhere (the TUM project saw exactly this collapse).
Dice is a ratio over the foreground, insensitive to the background count, so Dice or Dice + CE
(nnU-Net's default, :class:`DiceCELoss`) does not collapse.

Wang et al. (2020), Section 3.3, write their losses for ``C = 2`` softmax channels. Here the platform's single
lesion logit ``x`` gives both: ``P^1 = sigmoid(x)`` (lesion) and ``P^0 = sigmoid(-x) = 1 - P^1`` (background),
``Y^1 = target`` and ``Y^0 = 1 - target``. Their sums run over the ``N`` voxels of an image; with
``batch_reduction="batch"`` (the default) the image is the whole batch (all slices or patches of the batch pooled,
as PyMIC, the authors' group's library, does for its Dice and cross-entropy losses; the generalized Dice's class
weights stay defined when some slices have no lesion), with ``"sample"`` each sample is one image and the
per-sample losses are averaged (``L_HGD`` then weights hard samples more, the paper's motivation for it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import _check_pair, _check_weight

BATCH_REDUCTIONS = ("batch", "sample")


def _weighted_mean(values: Tensor, weight: Tensor) -> Tensor:
    """``sum(w * v) / sum(w)``; 0 when all weights are 0."""
    return (weight * values).sum() / weight.sum().clamp_min(1e-12)


class BCELoss(nn.Module):
    """Mean binary cross-entropy on logits; voxel-weighted mean ``sum(w * l) / sum(w)`` when ``weight`` is given.

    Args:
        pos_weight: optional weight of the positive (foreground) term, as in
            ``torch.nn.functional.binary_cross_entropy_with_logits``; ``None`` means 1.
    """

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"BCELoss: pos_weight must be > 0, got {pos_weight}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        target = _check_pair(logits, target, "BCELoss")
        pw = None
        if self.pos_weight is not None:
            pw = torch.tensor(self.pos_weight, dtype=torch.float32, device=logits.device)
        if weight is None:
            return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pw)
        weight = _check_weight(logits, weight, "BCELoss")
        per_voxel = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pw, reduction="none")
        return _weighted_mean(per_voxel, weight)


class DiceLoss(nn.Module):
    """Soft Dice loss on ``sigmoid(logits)``: ``1 - (2*TP + smooth) / (sum(p) + sum(t) + smooth)``.

    Args:
        smooth: added to numerator and denominator (nnU-Net uses 1e-5). It keeps the loss finite on
            empty masks: an empty target predicted empty gives Dice 1 (loss 0).
        batch_dice: if True, sums TP / prediction / target over the whole batch and the spatial axes
            and computes one Dice per channel (nnU-Net's "batch Dice", more stable when many samples
            have tiny or no lesions); if False, one Dice per sample and channel, then the mean.

    With a ``weight`` map every sum is weighted: ``TP = sum(w p t)``, ``sum(w p)``, ``sum(w t)``. A 0/1 weight
    computes the Dice on the voxels where it is 1 only.

    For hard 0/1 predictions the loss is ``1 - Dice`` of the two masks (up to ``smooth``).
    """

    def __init__(self, smooth: float = 1e-5, batch_dice: bool = False):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"DiceLoss: smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.batch_dice = bool(batch_dice)

    def dice(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Soft Dice per channel (``batch_dice``) or per sample and channel, computed in float32."""
        target = _check_pair(logits, target, "DiceLoss")
        probs = torch.sigmoid(logits.float())
        if weight is not None:
            weight = _check_weight(logits, weight, "DiceLoss")
            target_w = target * weight
            probs_w = probs * weight
        else:
            target_w, probs_w = target, probs
        dims = tuple(range(2, logits.dim()))
        if self.batch_dice:
            dims = (0,) + dims
        tp = (probs_w * target).sum(dims)
        denom = probs_w.sum(dims) + target_w.sum(dims)
        return (2.0 * tp + self.smooth) / (denom + self.smooth).clamp_min(1e-8)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return 1.0 - self.dice(logits, target, weight).mean()


class DiceCELoss(nn.Module):
    """``lambda_dice * DiceLoss + lambda_ce * BCELoss`` (nnU-Net's default loss for binary tasks).

    Args:
        lambda_dice: weight of the soft Dice term.
        lambda_ce: weight of the binary cross-entropy term.
        smooth, batch_dice: passed to :class:`DiceLoss`.
        pos_weight: passed to :class:`BCELoss`.

    A ``weight`` map is passed to both terms (weighted Dice sums, weighted BCE mean).
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth: float = 1e-5,
        batch_dice: bool = False,
        pos_weight: float | None = None,
    ):
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0 or lambda_dice + lambda_ce == 0:
            raise ValueError(f"DiceCELoss: lambda_dice and lambda_ce must be >= 0 and not both 0, got {lambda_dice}, {lambda_ce}")
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.dice = DiceLoss(smooth=smooth, batch_dice=batch_dice)
        self.ce = BCELoss(pos_weight=pos_weight)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.lambda_dice * self.dice(logits, target, weight) + self.lambda_ce * self.ce(logits, target, weight)


def _check_size(x: Tensor, size: Sequence[int], who: str) -> tuple[int, ...]:
    size = tuple(int(s) for s in size)
    if len(size) != x.dim() - 2 or not 1 <= len(size) <= 3:
        raise ValueError(f"{who}: output size {size} does not fit a (B, C, *spatial) tensor of shape {tuple(x.shape)}")
    if any(s > t for s, t in zip(size, x.shape[2:])):
        raise ValueError(f"{who}: output size {size} is larger than the input size {tuple(x.shape[2:])}")
    return size


def downsample_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """Down-sample a ``(B, C, *spatial)`` target in ``[0, 1]`` (1 to 3 spatial axes) to ``size`` by max-pooling.

    A low-resolution voxel is foreground if any voxel it covers is foreground (adaptive max-pool;
    with integer ratios this is max-pool with kernel = stride = ratio). Unlike nearest-neighbour
    sampling (nnU-Net's choice), a 1-voxel lesion is never dropped at coarse deep-supervision levels,
    at the price of slightly dilated coarse targets. Soft targets keep their maximum.
    """
    if tuple(target.shape[2:]) == tuple(int(s) for s in size):
        return target
    size = _check_size(target, size, "downsample_target")
    pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[len(size) - 1]
    return pool(target.float(), size)


def downsample_weight(weight: Tensor, size: Sequence[int]) -> Tensor:
    """Down-sample a ``(B, C, *spatial)`` per-voxel weight map to ``size`` by average pooling.

    A coarse voxel gets the mean weight of the fine voxels it covers (adaptive average pool), so a weighted
    sum over the coarse grid approximates the one over the fine grid (up to the constant volume ratio).
    """
    if tuple(weight.shape[2:]) == tuple(int(s) for s in size):
        return weight
    size = _check_size(weight, size, "downsample_weight")
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(size) - 1]
    return pool(weight.float(), size)


class DeepSupervisionLoss(nn.Module):
    """Apply ``loss`` at every deep-supervision level and combine with nnU-Net-style weights.

    If ``logits`` is a list ``[full, 1/2, 1/4, ...]`` (highest resolution first, as returned by
    ``UNet3D(deep_supervision=True)`` in training mode), the target is max-pooled to each output's
    size (see :func:`downsample_target`), the optional per-voxel ``weight`` is average-pooled to it
    (see :func:`downsample_weight`), and the per-level losses are combined with weights
    ``1, 1/2, 1/4, ...``, the lowest-resolution level set to 0 (when there is more than one level),
    normalised to sum to 1. A single tensor (eval mode, or a network without deep supervision) is
    passed straight to ``loss``.

    Args:
        loss: any loss ``(logits, target, weight=None) -> scalar``, e.g. :class:`DiceCELoss` or
            :class:`WCEHGDLoss`. ``weight`` is passed only when one is given, so a loss of ``(logits, target)``
            also works.
        weights: explicit per-level weights (highest resolution first); normalised to sum to 1.
            Their number must match the number of outputs. ``None`` means the nnU-Net scheme above.

    Note: with the default weights the lowest-resolution head gets no gradient. Under DDP without
    ``find_unused_parameters=True`` that is an error; pass explicit weights with a tiny last weight
    instead (nnU-Net uses 1e-6 there).
    """

    @property
    def voxel_weight(self) -> str | None:
        """The per-voxel weight the wrapped loss needs (e.g. ``weight_map``), if any."""
        return getattr(self.loss, "voxel_weight", None)

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"DeepSupervisionLoss: weights must be non-negative with a positive sum, got {weights}")
        self.weights = weights

    @staticmethod
    def default_weights(n_levels: int) -> list[float]:
        """nnU-Net weights for ``n_levels`` outputs: ``1, 1/2, 1/4, ...``, last one 0, sum 1."""
        if n_levels < 1:
            raise ValueError(f"DeepSupervisionLoss: need at least one output, got {n_levels}")
        w = [0.5**i for i in range(n_levels)]
        if n_levels > 1:
            w[-1] = 0.0
        total = sum(w)
        return [x / total for x in w]

    def level_weights(self, n_levels: int) -> list[float]:
        """Normalised weights used for ``n_levels`` outputs (explicit ``weights`` or the default)."""
        if self.weights is None:
            return self.default_weights(n_levels)
        if len(self.weights) != n_levels:
            raise ValueError(
                f"DeepSupervisionLoss: {len(self.weights)} weights configured but the network returned {n_levels} outputs"
            )
        total = sum(self.weights)
        return [w / total for w in self.weights]

    def _call(self, logits: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        return self.loss(logits, target) if weight is None else self.loss(logits, target, weight=weight)

    def forward(self, logits: Tensor | Sequence[Tensor], target: Tensor, weight: Tensor | None = None) -> Tensor:
        if isinstance(logits, Tensor):
            return self._call(logits, target, weight)
        logits = list(logits)
        weights = self.level_weights(len(logits))
        if target.dim() == logits[0].dim() - 1 and logits[0].shape[1] == 1:
            target = target.unsqueeze(1)
        if weight is not None and weight.dim() == logits[0].dim() - 1 and logits[0].shape[1] == 1:
            weight = weight.unsqueeze(1)
        total: Tensor | None = None
        for out, w in zip(logits, weights):
            if w == 0:
                continue
            level_weight = None if weight is None else downsample_weight(weight, out.shape[2:])
            term = w * self._call(out, downsample_target(target, out.shape[2:]), level_weight)
            total = term if total is None else total + term
        assert total is not None  # weights have a positive sum
        return total


# ------------------------------------------------------------------ Wang et al. (2020), Section 3.3


def _check_batch_reduction(batch_reduction: str, who: str) -> str:
    if batch_reduction not in BATCH_REDUCTIONS:
        raise ValueError(f"{who}: batch_reduction must be one of {BATCH_REDUCTIONS}, got {batch_reduction!r}")
    return batch_reduction


def _check_single_logit(logits: Tensor, target: Tensor, who: str) -> Tensor:
    if logits.dim() < 3 or logits.shape[1] != 1:
        raise ValueError(f"{who}: expects one lesion logit per voxel, shape (B, 1, *spatial); got {tuple(logits.shape)}")
    return _check_pair(logits, target, who)


def _refuse_weight(weight: Tensor | None, who: str) -> None:
    if weight is not None:
        raise ValueError(
            f"{who} is defined without a voxel weight (Wang et al. 2020 use A only in L_WCE) and got one: "
            "use WCELoss / WCEHGDLoss for the weight map A, or do not pass a weight to this loss"
        )


def _sum_dims(x: Tensor, batch_reduction: str) -> tuple[int, ...]:
    """Axes a Wang loss sums over: everything (``"batch"``) or everything but the batch axis (``"sample"``)."""
    return tuple(range(x.dim())) if batch_reduction == "batch" else tuple(range(1, x.dim()))


def _two_class_sums(logits: Tensor, target: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Per class ``c = (0 background, 1 lesion)``, stacked on axis 0: ``sum_i Y^c P^c``, ``sum_i Y^c``, ``sum_i P^c``."""
    x = logits.float()
    p1, p0 = torch.sigmoid(x), torch.sigmoid(-x)  # sigmoid(-x) keeps precision where p1 is close to 1
    y1, y0 = target, 1.0 - target
    intersect = torch.stack([(y0 * p0).sum(dims), (y1 * p1).sum(dims)])
    volume = torch.stack([y0.sum(dims), y1.sum(dims)])
    predicted = torch.stack([p0.sum(dims), p1.sum(dims)])
    return intersect, volume, predicted


def _per_voxel_ce(logits: Tensor, target: Tensor) -> Tensor:
    """``-sum_c Y^c log P^c`` per voxel, with log-sigmoid (``binary_cross_entropy_with_logits``) for stability."""
    return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")


def generalized_dice_score(logits: Tensor, target: Tensor, batch_reduction: str = "batch") -> Tensor:
    """Generalized Dice score ``S = 1 - L_GD`` of Wang et al. Eq. 14 (Sudre et al. 2017), two classes.

    ``S = 2 sum_c m_c sum_i Y_i^c P_i^c / sum_c m_c sum_i (Y_i^c + P_i^c)`` with ``m_c = 1 / (sum_i Y_i^c)^2``.
    Guard for an empty class (``sum_i Y^c = 0``, infinite ``m_c``), as MONAI's ``GeneralizedDiceLoss``: its weight
    is replaced by the largest finite weight of the image. With an empty lesion this gives ``m_1 = m_0`` and
    ``S = mean_i P_i^0``, i.e. ``L_GD = mean_i P_i^1`` (the mean predicted lesion probability): finite, with a
    finite gradient, and ~0 for a perfect empty prediction. The weights are rescaled to a maximum of 1 (``S`` does
    not change when all ``m_c`` are scaled alike), which keeps the sums O(1) in float32 for large images.

    Returns a scalar (``batch_reduction="batch"``) or one score per sample (``"sample"``), in float32.
    """
    _check_batch_reduction(batch_reduction, "generalized_dice_score")
    target = _check_single_logit(logits, target, "generalized_dice_score")
    intersect, volume, predicted = _two_class_sums(logits, target, _sum_dims(logits, batch_reduction))
    m = 1.0 / volume.square()  # inf for an empty class (and for one too small for float32)
    finite = torch.isfinite(m)
    m = torch.where(finite, m, torch.where(finite, m, 0.0).amax(0, keepdim=True))
    m = m / m.amax(0, keepdim=True)
    return 2.0 * (m * intersect).sum(0) / (m * (volume + predicted)).sum(0)


class CELoss(nn.Module):
    """Wang et al.'s ``L_CE``: Eq. 12 with ``A_i = 1``, the mean over voxels of ``-sum_c Y^c log P^c``.

    For the single lesion logit this is the binary cross-entropy (computed with log-sigmoid), the same value as
    :class:`BCELoss` without ``pos_weight``. The mean over all voxels of the batch equals the mean of the per-sample
    means (all samples have the same size), so there is no ``batch_reduction`` to choose. Takes no ``weight``
    (``ValueError``): use :class:`WCELoss` for Eq. 12 with the weight map ``A``.
    """

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        _refuse_weight(weight, "CELoss")
        target = _check_single_logit(pred, target, "CELoss")
        return _per_voxel_ce(pred, target).mean()


class WCELoss(nn.Module):
    """Wang et al.'s weighted cross-entropy ``L_WCE`` (Eq. 12).

    ``L_WCE = sum_i A_i (sum_c -Y_i^c log P_i^c) / sum_i A_i`` with ``A`` the per-voxel ``weight`` argument
    (required; Eq. 9's map from :func:`strokelab.losses.weight_map`, served by the data side).

    Args:
        batch_reduction: ``"batch"`` sums over all voxels of the batch; ``"sample"`` computes Eq. 12 per
            sample and averages (the two differ when the samples' weight sums differ).
    """

    voxel_weight = "weight_map"  # the served target a model passes as ``weight`` (strokelab.models.base)

    def __init__(self, batch_reduction: str = "batch"):
        super().__init__()
        self.batch_reduction = _check_batch_reduction(batch_reduction, "WCELoss")

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None:
            raise ValueError(
                "WCELoss needs the weight map A: call loss(pred, target, weight=A) (A from strokelab.losses.weight_map), "
                "or use CELoss for A = 1"
            )
        target = _check_single_logit(pred, target, "WCELoss")
        weight = _check_weight(pred, weight, "WCELoss")
        per_voxel = _per_voxel_ce(pred, target)
        dims = _sum_dims(pred, self.batch_reduction)
        return ((weight * per_voxel).sum(dims) / weight.sum(dims).clamp_min(1e-12)).mean()


class WangDiceLoss(nn.Module):
    """The Dice loss row of Wang et al.'s Table 4 (``L_DICE``, Milletari et al. 2016), two-class form.

    ``1 - mean_c (2 sum_i Y^c P^c + smooth) / (sum_i Y^c + sum_i P^c + smooth)`` over the classes ``c``.

    Choice: the paper writes its network output and losses with ``C = 2`` softmax channels (Eqs. 10-14), and the
    Dice loss of the authors' group's library (PyMIC) averages the soft Dice over all classes, background included,
    with the sums over the whole batch; so by default (``include_background=True``) this is the mean of the
    background and lesion soft Dice. ``include_background=False`` gives the lesion-class soft Dice alone, i.e. the
    platform's :class:`DiceLoss` (``batch_dice=True`` for ``batch_reduction="batch"``). The denominator is linear
    (``sum Y + sum P``, as in Eq. 14 and PyMIC), not Milletari's sum of squares. Takes no ``weight``.

    Args:
        include_background: average the background class's Dice in (default) or use the lesion class only.
        batch_reduction: ``"batch"`` or ``"sample"`` (see the module docstring).
        smooth: added to numerator and denominator of each class's Dice (PyMIC uses 1e-5); keeps an empty class
            predicted empty at Dice 1.
    """

    def __init__(self, include_background: bool = True, batch_reduction: str = "batch", smooth: float = 1e-5):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"WangDiceLoss: smooth must be >= 0, got {smooth}")
        self.include_background = bool(include_background)
        self.batch_reduction = _check_batch_reduction(batch_reduction, "WangDiceLoss")
        self.smooth = float(smooth)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        _refuse_weight(weight, "WangDiceLoss")
        target = _check_single_logit(pred, target, "WangDiceLoss")
        intersect, volume, predicted = _two_class_sums(pred, target, _sum_dims(pred, self.batch_reduction))
        dice = (2.0 * intersect + self.smooth) / (volume + predicted + self.smooth).clamp_min(1e-8)
        if not self.include_background:
            dice = dice[1:]
        return 1.0 - dice.mean()


class GDLoss(nn.Module):
    """Generalized Dice loss ``L_GD`` of Wang et al. Eq. 14 (Sudre et al. 2017), two classes.

    ``L_GD = 1 - 2 sum_c m_c sum_i Y_i^c P_i^c / sum_c m_c sum_i (Y_i^c + P_i^c)``, ``m_c = 1 / (sum_i Y_i^c)^2``;
    the guard for an empty class is described in :func:`generalized_dice_score` (an empty lesion gives
    ``L_GD = mean P^1``). Takes no ``weight``.

    Args:
        batch_reduction: ``"batch"`` (one image = the whole batch) or ``"sample"`` (mean of per-sample losses).
    """

    def __init__(self, batch_reduction: str = "batch"):
        super().__init__()
        self.batch_reduction = _check_batch_reduction(batch_reduction, "GDLoss")

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        _refuse_weight(weight, "GDLoss")
        return (1.0 - generalized_dice_score(pred, target, self.batch_reduction)).mean()


def _hgd(score: Tensor, eps: float) -> Tensor:
    """``-log(1 - L_GD) = -log(S)``, evaluated as ``log(1 + eps) - log(S + eps)``."""
    return math.log1p(eps) - torch.log(score + eps)


class HGDLoss(nn.Module):
    """Hardness-aware generalized Dice loss ``L_HGD = -log(1 - L_GD)`` of Wang et al. Eq. 13.

    ``1 - L_GD`` is the generalized Dice score ``S`` of :func:`generalized_dice_score`, computed directly (not as
    ``1 - (1 - S)``, which would lose precision for small ``S``). Clamp: ``L_HGD = log(1 + eps) - log(S + eps)``,
    exactly 0 for ``S = 1``, at most ``-log(eps)`` (13.8 for the default ``eps = 1e-6``) as ``L_GD -> 1``, with
    ``|dL/dS| <= 1/eps``; unlike ``clamp_min`` it never cuts the gradient. For ``S >> eps`` it equals Eq. 13.

    Args:
        batch_reduction: ``"batch"`` or ``"sample"`` (per-sample ``L_HGD`` averaged: hard samples weigh more).
        eps: the clamp above, > 0.
    """

    def __init__(self, batch_reduction: str = "batch", eps: float = 1e-6):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"HGDLoss: eps must be > 0, got {eps}")
        self.batch_reduction = _check_batch_reduction(batch_reduction, "HGDLoss")
        self.eps = float(eps)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        _refuse_weight(weight, "HGDLoss")
        return _hgd(generalized_dice_score(pred, target, self.batch_reduction), self.eps).mean()


def _check_lambdas(a: float, b: float, names: str, who: str) -> tuple[float, float]:
    if a < 0 or b < 0 or a + b == 0:
        raise ValueError(f"{who}: {names} must be >= 0 and not both 0, got {a}, {b}")
    return float(a), float(b)


class CEHGDLoss(nn.Module):
    """``lambda_ce * L_CE + lambda_hgd * L_HGD``: Table 4's ``L_CE + L_HGD`` (Eq. 11 with ``A_i = 1``).

    Args:
        lambda_ce, lambda_hgd: weights of the two terms (the paper: 1 and 1).
        batch_reduction: for the ``L_HGD`` term (``L_CE`` does not depend on it).
        eps: ``L_HGD``'s clamp (see :class:`HGDLoss`).

    Takes no ``weight`` (``ValueError``): use :class:`WCEHGDLoss` for the weight map ``A``.
    """

    def __init__(self, lambda_ce: float = 1.0, lambda_hgd: float = 1.0, batch_reduction: str = "batch", eps: float = 1e-6):
        super().__init__()
        self.lambda_ce, self.lambda_hgd = _check_lambdas(lambda_ce, lambda_hgd, "lambda_ce and lambda_hgd", "CEHGDLoss")
        self.ce = CELoss()
        self.hgd = HGDLoss(batch_reduction=batch_reduction, eps=eps)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        _refuse_weight(weight, "CEHGDLoss")
        return self.lambda_ce * self.ce(pred, target) + self.lambda_hgd * self.hgd(pred, target)


class WCEHGDLoss(nn.Module):
    """Wang et al.'s segmentation loss ``L_s = lambda_wce * L_WCE(P, Y, A) + lambda_hgd * L_HGD(P, Y)`` (Eq. 11).

    ``weight`` is the map ``A`` (required; :func:`strokelab.losses.weight_map`); it enters ``L_WCE`` only, as in
    the paper.

    Args:
        lambda_wce, lambda_hgd: weights of the two terms (the paper: 1 and 1).
        batch_reduction: for both terms (see :class:`WCELoss`, :class:`HGDLoss`).
        eps: ``L_HGD``'s clamp (see :class:`HGDLoss`).
    """

    voxel_weight = "weight_map"  # the served target a model passes as ``weight`` (strokelab.models.base)

    def __init__(self, lambda_wce: float = 1.0, lambda_hgd: float = 1.0, batch_reduction: str = "batch", eps: float = 1e-6):
        super().__init__()
        self.lambda_wce, self.lambda_hgd = _check_lambdas(lambda_wce, lambda_hgd, "lambda_wce and lambda_hgd", "WCEHGDLoss")
        self.wce = WCELoss(batch_reduction=batch_reduction)
        self.hgd = HGDLoss(batch_reduction=batch_reduction, eps=eps)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None:
            raise ValueError(
                "WCEHGDLoss needs the weight map A: call loss(pred, target, weight=A) (A from strokelab.losses.weight_map), "
                "or use CEHGDLoss for A = 1"
            )
        return self.lambda_wce * self.wce(pred, target, weight) + self.lambda_hgd * self.hgd(pred, target)

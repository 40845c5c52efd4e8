"""Losses for binary lesion segmentation from a single channel of logits.

Every loss takes ``logits`` of shape ``(B, 1, X, Y, Z)`` (any ``(B, C, ...)`` works) and a ``target``
of the same shape with values in ``[0, 1]`` (binary masks, or soft labels), and returns a scalar tensor.
All are finite on an all-background batch.

Why not BCE alone: on infarct data the foreground is often ~1% of the voxels, and a voxel-wise BCE
is minimised by predicting background almost everywhere (the TUM project saw exactly this collapse).
Dice is a ratio over the foreground, insensitive to the background count, so Dice or Dice + CE
(nnU-Net's default, :class:`DiceCELoss`) does not collapse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_pair(logits: Tensor, target: Tensor, who: str) -> Tensor:
    """Return ``target`` as float, with a channel axis added if it was missing; check shapes match."""
    if target.dim() == logits.dim() - 1 and logits.dim() >= 2 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(f"{who}: target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}")
    return target.to(dtype=torch.float32)


class BCELoss(nn.Module):
    """Mean binary cross-entropy on logits.

    Args:
        pos_weight: optional weight of the positive (foreground) term, as in
            ``torch.nn.functional.binary_cross_entropy_with_logits``; ``None`` means 1.
    """

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"BCELoss: pos_weight must be > 0, got {pos_weight}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check_pair(logits, target, "BCELoss")
        pw = None
        if self.pos_weight is not None:
            pw = torch.tensor(self.pos_weight, dtype=torch.float32, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pw)


class DiceLoss(nn.Module):
    """Soft Dice loss on ``sigmoid(logits)``: ``1 - (2*TP + smooth) / (sum(p) + sum(t) + smooth)``.

    Args:
        smooth: added to numerator and denominator (nnU-Net uses 1e-5). It keeps the loss finite on
            empty masks: an empty target predicted empty gives Dice 1 (loss 0).
        batch_dice: if True, sums TP / prediction / target over the whole batch and the spatial axes
            and computes one Dice per channel (nnU-Net's "batch Dice", more stable when many samples
            have tiny or no lesions); if False, one Dice per sample and channel, then the mean.

    For hard 0/1 predictions the loss is ``1 - Dice`` of the two masks (up to ``smooth``).
    """

    def __init__(self, smooth: float = 1e-5, batch_dice: bool = False):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"DiceLoss: smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.batch_dice = bool(batch_dice)

    def dice(self, logits: Tensor, target: Tensor) -> Tensor:
        """Soft Dice per channel (``batch_dice``) or per sample and channel, computed in float32."""
        target = _check_pair(logits, target, "DiceLoss")
        probs = torch.sigmoid(logits.float())
        dims = tuple(range(2, logits.dim()))
        if self.batch_dice:
            dims = (0,) + dims
        tp = (probs * target).sum(dims)
        denom = probs.sum(dims) + target.sum(dims)
        return (2.0 * tp + self.smooth) / (denom + self.smooth).clamp_min(1e-8)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return 1.0 - self.dice(logits, target).mean()


class DiceCELoss(nn.Module):
    """``lambda_dice * DiceLoss + lambda_ce * BCELoss`` (nnU-Net's default loss for binary tasks).

    Args:
        lambda_dice: weight of the soft Dice term.
        lambda_ce: weight of the binary cross-entropy term.
        smooth, batch_dice: passed to :class:`DiceLoss`.
        pos_weight: passed to :class:`BCELoss`.
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

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_ce * self.ce(logits, target)


def downsample_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """Down-sample a ``(B, C, X, Y, Z)`` target in ``[0, 1]`` to spatial ``size`` by max-pooling.

    A low-resolution voxel is foreground if any voxel it covers is foreground (adaptive max-pool;
    with integer ratios this is max-pool with kernel = stride = ratio). Unlike nearest-neighbour
    sampling (nnU-Net's choice), a 1-voxel lesion is never dropped at coarse deep-supervision levels,
    at the price of slightly dilated coarse targets. Soft targets keep their maximum.
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[2:]) == size:
        return target
    if any(s > t for s, t in zip(size, target.shape[2:])):
        raise ValueError(f"downsample_target: output size {size} is larger than the target size {tuple(target.shape[2:])}")
    return F.adaptive_max_pool3d(target.float(), size)


class DeepSupervisionLoss(nn.Module):
    """Apply ``loss`` at every deep-supervision level and combine with nnU-Net-style weights.

    If ``logits`` is a list ``[full, 1/2, 1/4, ...]`` (highest resolution first, as returned by
    ``UNet3D(deep_supervision=True)`` in training mode), the target is max-pooled to each output's
    size (see :func:`downsample_target`) and the per-level losses are combined with weights
    ``1, 1/2, 1/4, ...``, the lowest-resolution level set to 0 (when there is more than one level),
    normalised to sum to 1. A single tensor (eval mode, or a network without deep supervision) is
    passed straight to ``loss``.

    Args:
        loss: any loss ``(logits, target) -> scalar``, e.g. :class:`DiceCELoss`.
        weights: explicit per-level weights (highest resolution first); normalised to sum to 1.
            Their number must match the number of outputs. ``None`` means the nnU-Net scheme above.

    Note: with the default weights the lowest-resolution head gets no gradient. Under DDP without
    ``find_unused_parameters=True`` that is an error; pass explicit weights with a tiny last weight
    instead (nnU-Net uses 1e-6 there).
    """

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

    def forward(self, logits: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        if isinstance(logits, Tensor):
            return self.loss(logits, target)
        logits = list(logits)
        weights = self.level_weights(len(logits))
        if target.dim() == logits[0].dim() - 1 and logits[0].shape[1] == 1:
            target = target.unsqueeze(1)
        total: Tensor | None = None
        for out, w in zip(logits, weights):
            if w == 0:
                continue
            term = w * self.loss(out, downsample_target(target, out.shape[2:]))
            total = term if total is None else total + term
        assert total is not None  # weights have a positive sum
        return total


# -------------------------------------------------------------------------------- regression (Tmax)


class MSELoss(nn.Module):
    """Mean squared error of a regression output, over the voxels where ``weight`` > 0 (all when None).

    Called as ``loss(pred, target, weight=None)`` with ``pred`` and ``target`` of shape ``(B, 1, X, Y, Z)``;
    ``weight`` (same shape, e.g. the brain mask) weights each voxel. The Stanford report trains with it.
    """

    over_weight = 1.0

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        target = _check_pair(pred, target, type(self).__name__)
        error = pred.float() - target
        squared = error.square()
        if self.over_weight != 1.0:
            squared = torch.where(error > 0, self.over_weight * squared, squared)
        if weight is None:
            return squared.mean()
        weight = weight.to(squared.dtype).expand_as(squared)
        return (squared * weight).sum() / weight.sum().clamp(min=1.0)


class AsymmetricMSELoss(MSELoss):
    """MSE that penalises over-estimation ``over_weight`` times more than under-estimation.

    The Stanford report (V-VI) saw its networks over-predict Tmax nearly everywhere and proposed a loss that
    punishes guesses that are too high more than those that are too low: ``w * e^2`` with ``w = over_weight``
    where ``pred > target`` and 1 elsewhere.
    """

    def __init__(self, over_weight: float = 2.0):
        super().__init__()
        if not over_weight > 0:
            raise ValueError(f"AsymmetricMSELoss: over_weight must be > 0, got {over_weight}")
        self.over_weight = float(over_weight)

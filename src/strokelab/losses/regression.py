"""Losses for voxel-wise regression (the Tmax map of the Stanford report).

Same call convention as every loss of :mod:`strokelab.losses`: ``loss(pred, target, weight=None) -> scalar``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import _check_pair


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

"""Losses: segmentation (platform and Wang et al. 2020), regression, pseudo-DWI synthesis (Wang et al. 2020, Eqs. 6-8,
:mod:`strokelab.losses.synthesis`), and Wang's weight map ``A``.

Every loss is called as ``loss(pred, target, weight=None) -> scalar tensor`` with ``pred`` of shape
``(B, 1, *spatial)`` (2D or 3D), ``target`` of the same shape in ``[0, 1]`` and ``weight`` an optional per-voxel
weight map of that shape; what each loss does with ``weight`` is documented in
:mod:`strokelab.losses.segmentation`, :mod:`strokelab.losses.regression` and :mod:`strokelab.losses.synthesis`
(where ``ContextLoss`` compares two encodings ``(B, F)`` and ``LSGANGeneratorLoss`` takes a discriminator's scores).
"""

from .regression import AsymmetricMSELoss, MSELoss
from .segmentation import (
    BATCH_REDUCTIONS,
    BCELoss,
    CEHGDLoss,
    CELoss,
    DeepSupervisionLoss,
    DiceCELoss,
    DiceLoss,
    GDLoss,
    HGDLoss,
    WangDiceLoss,
    WCEHGDLoss,
    WCELoss,
    downsample_target,
    downsample_weight,
    generalized_dice_score,
)
from .synthesis import SYNTHESIS_NORMS, ContextLoss, LSGANGeneratorLoss, PixelLoss, lsgan_discriminator_loss
from .weight_map import weight_map

__all__ = [
    "BATCH_REDUCTIONS",
    "AsymmetricMSELoss",
    "BCELoss",
    "CEHGDLoss",
    "CELoss",
    "ContextLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "DiceLoss",
    "GDLoss",
    "HGDLoss",
    "LSGANGeneratorLoss",
    "MSELoss",
    "PixelLoss",
    "SYNTHESIS_NORMS",
    "WangDiceLoss",
    "WCEHGDLoss",
    "WCELoss",
    "downsample_target",
    "downsample_weight",
    "generalized_dice_score",
    "lsgan_discriminator_loss",
    "weight_map",
]

"""SLNet (Wang et al. 2020, Sec. 3.3, Fig. 5) and the plain U-Net it extends (Table 3's "UNet").

SLNet is Ronneberger's U-Net (two 3x3 conv-norm-ReLU per stage, 2x2 max-pool down, 2x2 transposed
convolution up, skip concatenation, 1x1 head) with switchable normalisation instead of batch
normalisation and a Squeeze-and-Excitation block after each convolution block of the encoding path
(the bottleneck included). Table 3's ablations are ``SLNet(se=False)`` ("w/o SE") and
``SLNet(norm="batch")`` ("w/o SN"); Table 3's U-Net is ``PlainUNet`` = ``SLNet(se=False, norm="batch")``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from strokelab.nn.base import PoolingUNet, validate_common
from strokelab.nn.blocks import (
    ConvBlock,
    Stride,
    check_init,
    check_spatial_dims,
    conv_transpose_type,
    initialise,
    make_norm,
    parse_strides,
)
from strokelab.nn.se import SEBlock

#: Channel widths of Ronneberger's U-Net and of Wang's SLNet.
RONNEBERGER_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 1024)


class SLNet(PoolingUNet):
    """Wang et al.'s stroke lesion segmentation network: U-Net + switchable norm + SE blocks.

    Args:
        in_channels: input channels (4 for the perfusion maps CBF, CBV, MTT, Tmax; 1 for a pseudo-DWI).
        out_channels: output logits (1: the platform's single lesion logit; Wang used 2 softmax classes).
        channels: widths per resolution stage, highest resolution first (Ronneberger/Wang: 64 ... 1024).
        spatial_dims: 2 (default; Wang segments 2D axial slices) or 3.
        se: put an :class:`~strokelab.nn.se.SEBlock` after each encoder stage (``se=False``: "SLNet w/o SE").
        norm: normalisation after each convolution (default ``"switchable"``; ``"batch"``: "SLNet w/o SN";
            any kind of :func:`~strokelab.nn.blocks.make_norm`).
        se_reduction: SE reduction ratio ``r`` (hidden units ``max(1, C // r)``). Hu et al.'s 16 adds
            0.18 M parameters at Wang's widths; Table 3's +2.80 M (33.84 vs 31.04 M) is what ``r=1`` gives.
        init: ``"xavier"`` (default; Wang et al.) or ``"kaiming"``, for every convolution and SE layer.
        dropout: channel dropout after each convolution (0 disables it).
        strides: one max-pool stride per down-sampling step (int or one int per axis); default 2 everywhere.
            E.g. ``[[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]`` for thick-slice 3D patches.

    Input ``(B, in_channels, *spatial)`` with each spatial size divisible by :attr:`required_divisor`
    (16 per axis by default); output ``(B, out_channels, *spatial)`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        channels: Sequence[int] = RONNEBERGER_CHANNELS,
        spatial_dims: int = 2,
        se: bool = True,
        norm: str = "switchable",
        se_reduction: int = 16,
        init: str = "xavier",
        dropout: float = 0.0,
        strides: Sequence[int | Sequence[int]] | None = None,
    ):
        name = type(self).__name__
        channels = validate_common(name, in_channels, out_channels, channels, dropout)
        spatial_dims = check_spatial_dims(spatial_dims)
        make_norm(norm, 1, spatial_dims)  # validates the norm kind early, with the list of valid kinds
        init = check_init(init)
        if se_reduction < 1:
            raise ValueError(f"{name}: se_reduction must be >= 1, got {se_reduction}")
        parsed = parse_strides(strides, len(channels) - 1, spatial_dims, name)
        conv_t = conv_transpose_type(spatial_dims)

        def stage(cin: int, cout: int) -> nn.Module:
            return ConvBlock(cin, cout, 1, norm, dropout, spatial_dims, activation="relu")

        def up(cin: int, cout: int, stride: Stride) -> nn.Module:
            return conv_t(cin, cout, kernel_size=stride, stride=stride)

        def after(c: int) -> nn.Module:
            return SEBlock(c, se_reduction, spatial_dims)

        super().__init__(in_channels, out_channels, channels, parsed, spatial_dims, stage, up, after if se else None)
        self.se = bool(se)
        self.norm = str(norm)
        self.se_reduction = int(se_reduction)
        self.init = init
        self.dropout = float(dropout)
        initialise(self, init)


class PlainUNet(SLNet):
    """Table 3's "UNet" (Ronneberger et al. 2015): the SLNet backbone with batch norm and no SE blocks.

    Same arguments as :class:`SLNet` but defaults ``se=False, norm="batch"`` (31.04 M parameters at
    Ronneberger's widths with 4 inputs, as in Table 3); ``init`` stays Xavier like every network of Wang
    et al.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        channels: Sequence[int] = RONNEBERGER_CHANNELS,
        spatial_dims: int = 2,
        se: bool = False,
        norm: str = "batch",
        se_reduction: int = 16,
        init: str = "xavier",
        dropout: float = 0.0,
        strides: Sequence[int | Sequence[int]] | None = None,
    ):
        super().__init__(in_channels, out_channels, channels, spatial_dims, se, norm, se_reduction, init, dropout, strides)

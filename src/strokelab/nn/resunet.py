"""Residual U-Net (Xiao et al. 2018, "Weighted Res-UNet for high-quality retina vessel segmentation"):
Ronneberger's U-Net whose stages are residual blocks; one of the comparison networks of Wang et al.
2020, Table 3."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from strokelab.nn.base import PoolingUNet, validate_common
from strokelab.nn.blocks import (
    ResidualBlock,
    Stride,
    check_init,
    check_spatial_dims,
    conv_transpose_type,
    initialise,
    make_norm,
    parse_strides,
)
from strokelab.nn.slnet import RONNEBERGER_CHANNELS


class ResUNet(PoolingUNet):
    """U-Net with residual stages: each stage is ``relu(conv-norm-relu -> conv-norm + shortcut)``, the
    shortcut a 1x1(x1) convolution + norm where the width changes (:class:`~strokelab.nn.blocks.ResidualBlock`);
    max-pool down, transposed convolution up, skip concatenation, 1x1(x1) head.

    Args:
        in_channels, out_channels: input channels and output logits (1 for a binary lesion logit).
        channels: widths per resolution stage, highest resolution first.
        spatial_dims: 2 (default) or 3.
        norm: any kind of :func:`~strokelab.nn.blocks.make_norm` (default ``"batch"``).
        init: ``"xavier"`` (default; Wang et al.) or ``"kaiming"``.
        dropout: channel dropout after each convolution.
        strides: one max-pool stride per down-sampling step; default 2 everywhere.

    Input spatial sizes must be divisible by :attr:`required_divisor` (16 per axis by default). At
    Ronneberger's widths with 4 inputs this has 32.4 M parameters; Wang et al.'s Table 3 lists 81.91 M
    for their ResUNet, whose widths and block layout the paper does not give.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        channels: Sequence[int] = RONNEBERGER_CHANNELS,
        spatial_dims: int = 2,
        norm: str = "batch",
        init: str = "xavier",
        dropout: float = 0.0,
        strides: Sequence[int | Sequence[int]] | None = None,
    ):
        name = type(self).__name__
        channels = validate_common(name, in_channels, out_channels, channels, dropout)
        spatial_dims = check_spatial_dims(spatial_dims)
        make_norm(norm, 1, spatial_dims)
        init = check_init(init)
        parsed = parse_strides(strides, len(channels) - 1, spatial_dims, name)
        conv_t = conv_transpose_type(spatial_dims)

        def stage(cin: int, cout: int) -> nn.Module:
            return ResidualBlock(cin, cout, 1, norm, dropout, spatial_dims, activation="relu")

        def up(cin: int, cout: int, stride: Stride) -> nn.Module:
            return conv_t(cin, cout, kernel_size=stride, stride=stride)

        super().__init__(in_channels, out_channels, channels, parsed, spatial_dims, stage, up)
        self.norm = str(norm)
        self.init = init
        self.dropout = float(dropout)
        initialise(self, init)

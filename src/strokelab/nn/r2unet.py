"""Recurrent residual U-Net, R2U-Net (Alom et al. 2018): U-Net whose stages are recurrent residual
convolutional units (RRCNN) with recurrence ``t = 2``; one of the comparison networks of Wang et al.
2020, Table 3."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from strokelab.nn.base import PoolingUNet, validate_common
from strokelab.nn.blocks import (
    ConvNormAct,
    Stride,
    check_init,
    check_spatial_dims,
    conv_type,
    initialise,
    make_norm,
    parse_strides,
)
from strokelab.nn.slnet import RONNEBERGER_CHANNELS


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer (Alom et al., Eq. 1-2): one conv-norm-ReLU ``f`` with shared weights
    unrolled ``t`` steps: ``h_0 = f(x)``, ``h_k = f(x + h_{k-1})`` for ``k = 1..t``; returns ``h_t``."""

    def __init__(self, channels: int, t: int = 2, norm: str = "batch", dropout: float = 0.0, spatial_dims: int = 2):
        super().__init__()
        if t < 1:
            raise ValueError(f"RecurrentConv: t must be >= 1, got {t}")
        self.t = int(t)
        self.layer = ConvNormAct(channels, channels, 1, norm, dropout, True, spatial_dims, activation="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        for _ in range(self.t):
            h = self.layer(x + h)
        return h


class RRCNNBlock(nn.Module):
    """Recurrent residual unit: ``x0 = conv1x1(x)``; ``x0 + RCL(RCL(x0))`` (two recurrent layers)."""

    def __init__(
        self, in_channels: int, out_channels: int, t: int = 2, norm: str = "batch", dropout: float = 0.0, spatial_dims: int = 2
    ):
        super().__init__()
        self.project = conv_type(spatial_dims)(in_channels, out_channels, kernel_size=1)
        self.recurrent = nn.Sequential(
            RecurrentConv(out_channels, t, norm, dropout, spatial_dims),
            RecurrentConv(out_channels, t, norm, dropout, spatial_dims),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.project(x)
        return x + self.recurrent(x)


class UpConv(nn.Module):
    """Nearest-neighbour up-sampling by ``stride`` then 3x3(x3) conv-norm-ReLU (R2U-Net's up-convolution)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: Stride,
        norm: str = "batch",
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ):
        super().__init__()
        self.up = nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode="nearest")
        self.conv = ConvNormAct(in_channels, out_channels, 1, norm, dropout, True, spatial_dims, activation="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.up(x))


class R2UNet(PoolingUNet):
    """R2U-Net: max-pool down, RRCNN stages, up-sampling + conv up, skip concatenation, 1x1(x1) head.

    Args:
        in_channels, out_channels: input channels and output logits (1 for a binary lesion logit).
        channels: widths per resolution stage, highest resolution first.
        spatial_dims: 2 (default) or 3.
        norm: any kind of :func:`~strokelab.nn.blocks.make_norm` (default ``"batch"``).
        init: ``"xavier"`` (default; Wang et al.) or ``"kaiming"``.
        dropout: channel dropout after each 3x3 convolution.
        strides: one max-pool stride per down-sampling step; default 2 everywhere.
        t: recurrence steps of each recurrent layer (Alom et al. use 2).

    Input spatial sizes must be divisible by :attr:`required_divisor` (16 per axis by default). At
    Ronneberger's widths with 4 inputs and 2 outputs this has 39.08 M parameters (Table 3: 39.09 M; the
    difference is the conv biases before norm layers, which this implementation omits).
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
        t: int = 2,
    ):
        name = type(self).__name__
        channels = validate_common(name, in_channels, out_channels, channels, dropout)
        spatial_dims = check_spatial_dims(spatial_dims)
        make_norm(norm, 1, spatial_dims)
        init = check_init(init)
        if t < 1:
            raise ValueError(f"{name}: t must be >= 1, got {t}")
        parsed = parse_strides(strides, len(channels) - 1, spatial_dims, name)

        def stage(cin: int, cout: int) -> nn.Module:
            return RRCNNBlock(cin, cout, t, norm, dropout, spatial_dims)

        def up(cin: int, cout: int, stride: Stride) -> nn.Module:
            return UpConv(cin, cout, stride, norm, dropout, spatial_dims)

        super().__init__(in_channels, out_channels, channels, parsed, spatial_dims, stage, up)
        self.norm = str(norm)
        self.init = init
        self.dropout = float(dropout)
        self.t = int(t)
        initialise(self, init)

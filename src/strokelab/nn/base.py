"""What the segmentation networks share: input checks against the required divisor, parameter counts,
argument checks and the Ronneberger-style U-Net skeleton (max-pool down, up-sampling, skip concatenation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from strokelab.nn import count_parameters
from strokelab.nn.blocks import Stride, check_spatial_dims, conv_type, max_pool_type

_AXES = {2: "(B, C, X, Y)", 3: "(B, C, X, Y, Z)"}


class SegmentationNetwork(nn.Module):
    """Base of the 2D/3D networks. Subclasses set ``in_channels``, ``spatial_dims`` and ``strides`` (one
    tuple per down-sampling step) in ``__init__``."""

    in_channels: int
    spatial_dims: int
    strides: tuple[Stride, ...]

    @property
    def required_divisor(self) -> tuple[int, ...]:
        """Per-axis product of the strides: the input's spatial sizes must be multiples of these."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(self.spatial_dims))

    def parameter_count(self) -> float:
        """Number of parameters in millions."""
        return count_parameters(self)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, *spatial)`` with ``spatial_dims`` spatial
        axes, each divisible by :attr:`required_divisor`."""
        name = type(self).__name__
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{name} ({self.spatial_dims}D) expects a {self.spatial_dims + 2}D input "
                f"{_AXES[self.spatial_dims]}, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name} was built for {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        spatial = tuple(x.shape[2:])
        div = self.required_divisor
        if any(s % d for s, d in zip(spatial, div)):
            raise ValueError(
                f"{name} input spatial size {spatial} is not divisible by the network's required divisor "
                f"{div} (product of strides {[list(s) for s in self.strides]}); pad or crop the input, "
                f"e.g. to {tuple(-(-s // d) * d for s, d in zip(spatial, div))}"
            )


def validate_common(
    owner: str, in_channels: int, out_channels: int, channels: Sequence[int], dropout: float, min_stages: int = 1
) -> list[int]:
    """Check the arguments every network shares; return ``channels`` as a list of ints."""
    channels = [int(c) for c in channels]
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"{owner}: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
    if len(channels) < min_stages or any(c < 1 for c in channels):
        raise ValueError(f"{owner}: channels must be a list of at least {min_stages} positive ints, got {channels}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout}")
    return channels


class PoolingUNet(SegmentationNetwork):
    """Ronneberger-style U-Net skeleton shared by SLNet, ResUNet and R2UNet.

    Encoder: ``stage(in, c0) -> after(c0)``, then per level ``max-pool(stride) -> stage -> after``;
    decoder: ``up(c_low, c_high, stride) -> concat(skip) -> stage(2 c_high, c_high)``; 1x1(x1) head.
    ``after`` (e.g. an SE block) is applied to each encoder stage's output before it is used as a skip
    and pooled; with ``after=None`` it is the identity.

    Submodules: ``encoder``, ``recalibration`` (the ``after`` modules), ``pools``, ``upsample``,
    ``decoder`` (lowest resolution first), ``head``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: tuple[Stride, ...],
        spatial_dims: int,
        stage: Callable[[int, int], nn.Module],
        up: Callable[[int, int, Stride], nn.Module],
        after: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels: tuple[int, ...] = tuple(int(c) for c in channels)
        self.strides = tuple(strides)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        chans = self.channels

        self.encoder = nn.ModuleList([stage(in_channels, chans[0])])
        self.encoder.extend(stage(chans[i - 1], chans[i]) for i in range(1, len(chans)))
        self.recalibration = nn.ModuleList(after(c) if after is not None else nn.Identity() for c in chans)
        pool = max_pool_type(spatial_dims)
        self.pools = nn.ModuleList(pool(kernel_size=s, stride=s) for s in self.strides)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(chans) - 1, 0, -1):
            self.upsample.append(up(chans[level], chans[level - 1], self.strides[level - 1]))
            self.decoder.append(stage(2 * chans[level - 1], chans[level - 1]))
        self.head = conv_type(spatial_dims)(chans[0], out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, out_channels, *spatial)`` of the input's spatial size."""
        self.check_input(x)
        skips = []
        for level, (stage, after) in enumerate(zip(self.encoder, self.recalibration)):
            if level > 0:
                x = self.pools[level - 1](x)
            x = after(stage(x))
            skips.append(x)
        x = skips.pop()  # bottleneck
        for up, stage in zip(self.upsample, self.decoder):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

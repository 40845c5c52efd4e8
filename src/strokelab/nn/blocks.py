"""Building blocks for the 3D networks: normalisation factory and conv blocks.

All blocks are plain ``nn.Module`` s over 5D tensors ``(B, C, X, Y, Z)``. They follow nnU-Net's
conventions: 3x3x3 convolutions with padding 1, optional dropout right after the convolution,
then normalisation, then ``LeakyReLU(0.01)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

#: Normalisation kinds accepted by :func:`make_norm` (and by ``UNet3D(norm=...)``).
NORM_KINDS: tuple[str, ...] = ("instance", "batch", "group", "none")

#: Negative slope of every LeakyReLU in the networks (nnU-Net's value); also used for the
#: Kaiming initialisation.
LEAKY_SLOPE: float = 0.01

#: Upper bound on the number of groups used by ``make_norm("group", ...)``.
MAX_GROUPS: int = 8

Stride = tuple[int, int, int]


def _num_groups(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """Largest number of groups ``<= max_groups`` that divides ``channels`` (at least 1)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(kind: str, channels: int) -> nn.Module:
    """Return a normalisation layer for ``channels`` feature maps.

    Args:
        kind: ``"instance"`` (``InstanceNorm3d`` with learnable affine parameters, nnU-Net's default),
            ``"batch"`` (``BatchNorm3d``), ``"group"`` (``GroupNorm`` with the largest number of
            groups ``<= 8`` that divides ``channels``) or ``"none"`` (identity).
        channels: number of channels to normalise.

    Raises:
        ValueError: for an unknown ``kind`` or a non-positive ``channels``.
    """
    if channels < 1:
        raise ValueError(f"make_norm: channels must be >= 1, got {channels}")
    kind = str(kind).lower()
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(_num_groups(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"make_norm: unknown norm kind {kind!r}; choose one of {', '.join(NORM_KINDS)}")


def as_stride(stride: int | Sequence[int]) -> Stride:
    """Normalise a stride given as an int or a length-3 sequence to a tuple of 3 positive ints.

    Raises:
        ValueError: if the stride does not have 3 entries or an entry is not a positive integer.
    """
    if isinstance(stride, int):
        values = (stride, stride, stride)
    else:
        values = tuple(stride)
    if len(values) != 3:
        raise ValueError(f"stride must be an int or 3 ints (X, Y, Z), got {list(values)}")
    out = []
    for v in values:
        if int(v) != v or int(v) < 1:
            raise ValueError(f"stride entries must be positive integers, got {list(values)}")
        out.append(int(v))
    return (out[0], out[1], out[2])


class ConvNormAct(nn.Module):
    """3x3x3 convolution (optionally strided) -> dropout -> norm -> LeakyReLU(0.01).

    The convolution has a bias only when ``norm="none"`` (a bias before a normalisation layer is
    redundant). With ``act=False`` the nonlinearity is omitted (used inside residual blocks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | Sequence[int] = 1,
        norm: str = "instance",
        dropout: float = 0.0,
        act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=as_stride(stride),
            padding=1,
            bias=str(norm).lower() == "none",
        )
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.norm = make_norm(norm, out_channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.dropout(self.conv(x))))


class ConvBlock(nn.Module):
    """One network stage: two :class:`ConvNormAct`; the first one carries the (down-sampling) stride."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | Sequence[int] = 1,
        norm: str = "instance",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, stride, norm, dropout)
        self.conv2 = ConvNormAct(out_channels, out_channels, 1, norm, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class ResidualBlock(nn.Module):
    """Residual stage: ``act(conv-norm-act -> conv-norm  +  shortcut(x))``.

    The shortcut is the identity when shape is unchanged, otherwise a (strided) 1x1x1 convolution
    followed by the same normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | Sequence[int] = 1,
        norm: str = "instance",
        dropout: float = 0.0,
    ):
        super().__init__()
        stride = as_stride(stride)
        self.conv1 = ConvNormAct(in_channels, out_channels, stride, norm, dropout)
        self.conv2 = ConvNormAct(out_channels, out_channels, 1, norm, dropout, act=False)
        if in_channels == out_channels and stride == (1, 1, 1):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                make_norm(norm, out_channels),
            )
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def make_block(
    in_channels: int,
    out_channels: int,
    stride: int | Sequence[int] = 1,
    norm: str = "instance",
    dropout: float = 0.0,
    residual: bool = False,
) -> nn.Module:
    """Return a :class:`ResidualBlock` if ``residual`` else a :class:`ConvBlock`."""
    cls = ResidualBlock if residual else ConvBlock
    return cls(in_channels, out_channels, stride, norm, dropout)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal init (``a=0.01``, LeakyReLU gain) for conv / transposed conv weights, zero biases.

    Use with ``model.apply(init_weights)``.
    """
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

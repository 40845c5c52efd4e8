"""PatchGAN discriminator for least-squares GAN training (Mao et al. 2017), 2D and 3D.

Wang et al. (2020), Table 1's "GAN" and "L2 + GAN" rows, train the pseudo-DWI generator in the LSGAN framework
(they use a multi-scale discriminator, Wang T.-C. et al. 2018; a single scale is built here). The network is
pix2pix's PatchGAN (Isola et al. 2017) with ``len(channels)`` hidden layers; default widths, 2D::

    conv1  4x4 stride 2   in_channels -> 16                    LeakyReLU(0.2)
    conv2  4x4 stride 2   16 -> 32     InstanceNorm (affine)   LeakyReLU(0.2)
    conv3  4x4 stride 2   32 -> 64     InstanceNorm (affine)   LeakyReLU(0.2)
    conv4  4x4 stride 1   64 -> 128    InstanceNorm (affine)   LeakyReLU(0.2)
    conv5  4x4 stride 1   128 -> 1                             (no sigmoid: LSGAN scores)

i.e. every hidden layer but the first is normalised (pix2pix's convention), the first and last convolutions have a
bias, the normalised ones do not (the affine norm has one). The receptive field of one score is 70 x 70 pixels,
pix2pix's "70 x 70 PatchGAN". Padding is "same" (TensorFlow style, zeros, added in ``forward``): a stride-``s``
convolution maps a size ``n`` to ``ceil(n / s)``, so a size never drops below 1 (a 3D patch with 8 slices goes
8 -> 4 -> 2 -> 1 -> 1 -> 1); for even sizes the stride-2 layers match pix2pix's padding 1 exactly, while the
stride-1 layers keep the size (pix2pix's padding 1 shrinks it by 1). Output: a score map ``(B, 1, *spatial / 8)``
(``ceil`` per axis, with the default strides).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from strokelab.nn import count_parameters
from strokelab.nn.blocks import (
    NORM_KINDS,
    Stride,
    as_stride,
    check_init,
    check_input_shape,
    check_spatial_dims,
    conv_type,
    initialise,
    make_norm,
)

#: Default widths of the hidden layers.
PATCH_CHANNELS: tuple[int, ...] = (16, 32, 64, 128)

#: Negative slope of the discriminator's LeakyReLUs (pix2pix, DCGAN).
GAN_LEAKY_SLOPE: float = 0.2

#: Kernel size of every convolution (pix2pix).
PATCH_KERNEL: int = 4


class SamePadConv(nn.Module):
    """Convolution with TensorFlow "same" zero padding computed from the input size: output ``ceil(n / s)``.

    The total padding of an axis is ``max((ceil(n / s) - 1) * s + k - n, 0)``, split with the smaller half first.
    """

    def __init__(self, conv: nn.Module, spatial_dims: int):
        super().__init__()
        self.conv = conv
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        pad: list[int] = []
        # F.pad lists the last axis first.
        for n, k, s in reversed(list(zip(x.shape[2:], self.conv.kernel_size, self.conv.stride))):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pad += [total // 2, total - total // 2]
        return self.conv(F.pad(x, pad))


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator for LSGAN (Mao et al. 2017): a map of unbounded real/fake scores, no sigmoid.

    Args:
        in_channels: channels of the judged image (1 for a DWI or pseudo-DWI; more for a conditional
            discriminator that also sees the generator's input).
        channels: widths of the hidden layers (at least 2); the last conv maps to 1 score channel.
        spatial_dims: 2 (default) or 3.
        strides: one stride per hidden layer (int or one int per axis); default 2 for all but the last hidden
            layer, which has stride 1 (pix2pix). The score layer always has stride 1.
        norm: normalisation of the hidden layers after the first (default ``"instance"``, affine; any kind of
            :func:`~strokelab.nn.blocks.make_norm`).
        init: ``"xavier"`` (default, like every network here) or ``"kaiming"``.

    Input ``(B, in_channels, *spatial)`` of any spatial size; output ``(B, 1, *ceil(spatial / prod(strides)))``.
    The layer list at default widths is in the module docstring.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = PATCH_CHANNELS,
        spatial_dims: int = 2,
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: str = "instance",
        init: str = "xavier",
    ):
        super().__init__()
        name = type(self).__name__
        spatial_dims = check_spatial_dims(spatial_dims)
        channels = [int(c) for c in channels]
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(f"{name}: channels must be at least 2 positive ints, got {channels}")
        if in_channels < 1:
            raise ValueError(f"{name}: in_channels must be >= 1, got {in_channels}")
        norm = str(norm).lower()
        if norm not in NORM_KINDS:
            raise ValueError(f"{name}: unknown norm {norm!r}; choose one of {', '.join(NORM_KINDS)}")
        if strides is None:
            parsed: tuple[Stride, ...] = ((2,) * spatial_dims,) * (len(channels) - 1) + ((1,) * spatial_dims,)
        else:
            parsed = tuple(as_stride(s, spatial_dims) for s in strides)
            if len(parsed) != len(channels):
                raise ValueError(f"{name}: need one stride per hidden layer ({len(channels)}), got {len(parsed)}")
        init = check_init(init)

        conv = conv_type(spatial_dims)
        widths = [int(in_channels), *channels]
        layers: list[nn.Module] = []
        for i, stride in enumerate(parsed):
            normed = i > 0 and norm != "none"
            layers.append(SamePadConv(conv(widths[i], widths[i + 1], PATCH_KERNEL, stride=stride, bias=not normed), spatial_dims))
            if normed:
                layers.append(make_norm(norm, widths[i + 1], spatial_dims))
            layers.append(nn.LeakyReLU(GAN_LEAKY_SLOPE, inplace=True))
        layers.append(SamePadConv(conv(widths[-1], 1, PATCH_KERNEL, stride=1, bias=True), spatial_dims))
        self.layers = nn.Sequential(*layers)

        self.in_channels = int(in_channels)
        self.channels = tuple(channels)
        self.spatial_dims = spatial_dims
        self.strides = parsed
        self.norm = norm
        self.init = init
        initialise(self, init)

    def forward(self, x: Tensor) -> Tensor:
        check_input_shape(self, x)
        return self.layers(x)

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """Per-axis receptive field of one output score, in input voxels (70 per axis at the defaults)."""
        strides = [*self.strides, (1,) * self.spatial_dims]
        out = []
        for a in range(self.spatial_dims):
            rf, jump = 1, 1
            for s in strides:
                rf += (PATCH_KERNEL - 1) * jump
                jump *= s[a]
            out.append(rf)
        return tuple(out)

    def parameter_count(self) -> float:
        """Number of parameters in millions."""
        return count_parameters(self)

"""Fully convolutional network, FCN-8s style (Long et al. 2015), for 2D and 3D; one of the comparison
networks of Wang et al. 2020, Table 3."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strokelab.nn.base import SegmentationNetwork, validate_common
from strokelab.nn.blocks import (
    ConvNormAct,
    Stride,
    bilinear_kernel,
    check_init,
    check_spatial_dims,
    conv_transpose_type,
    conv_type,
    dropout_type,
    initialise,
    make_norm,
    max_pool_type,
    parse_strides,
    upsampling_kernel_and_padding,
)

#: VGG-16's encoder: widths and number of 3x3 convolutions of its five stages.
VGG16_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
VGG16_CONVS: tuple[int, ...] = (2, 2, 3, 3, 3)


class FCN(SegmentationNetwork):
    """FCN-8s: a VGG-like encoder down to 1/32, class scores from three depths, fused coarse to fine.

    Encoder: five stages of 3x3(x3) conv-norm-ReLU layers (``convs_per_stage``, VGG-16: 2, 2, 3, 3, 3),
    each followed by a max-pool (pool1 ... pool5, 1/2 ... 1/32 of the input by default). On pool5, "fc6"
    (3x3(x3) conv-norm-ReLU to ``fc_channels``) and "fc7" (1x1(x1) conv-norm-ReLU), each followed by
    channel dropout as in Long et al., then a 1x1(x1) score layer. As in FCN-8s the score is up-sampled x2
    by a learned transposed convolution (initialised to bilinear interpolation), added to a 1x1 score of
    pool4, up-sampled x2 again, added to a 1x1 score of pool3, and brought to the input size by fixed
    (bi/tri)linear interpolation (Long et al.'s frozen bilinear x8 deconvolution).

    Args:
        in_channels, out_channels: input channels and output logits (1 for a binary lesion logit).
        channels: the five encoder stage widths (default VGG-16's 64, 128, 256, 512, 512).
        spatial_dims: 2 (default) or 3.
        norm: any kind of :func:`~strokelab.nn.blocks.make_norm` after each convolution (default
            ``"batch"``; Long et al.'s VGG had none: ``"none"``).
        init: ``"xavier"`` (default; Wang et al.) or ``"kaiming"`` for the convolutions; the two learned
            up-sampling layers always start as bilinear interpolation.
        dropout: channel dropout after fc6 and fc7 (Long et al.: 0.5).
        strides: the five pooling strides (int or one int per axis); default 2 everywhere.
        convs_per_stage: number of 3x3(x3) convolutions per encoder stage.
        fc_channels: width of fc6/fc7. Long et al.'s 4096-wide 7x7 fc6 alone has 103 M parameters; 768
            (3x3 fc6) puts the network at 18.9 M parameters with 4 inputs, near Table 3's 18.64 M.

    The input's spatial sizes must be divisible by :attr:`required_divisor`, the product of all five
    strides (32 per axis by default), so that the pool3/pool4 scores align with the up-sampled ones.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        channels: Sequence[int] = VGG16_CHANNELS,
        spatial_dims: int = 2,
        norm: str = "batch",
        init: str = "xavier",
        dropout: float = 0.5,
        strides: Sequence[int | Sequence[int]] | None = None,
        convs_per_stage: Sequence[int] = VGG16_CONVS,
        fc_channels: int = 768,
    ):
        name = type(self).__name__
        channels = validate_common(name, in_channels, out_channels, channels, dropout, min_stages=5)
        if len(channels) != 5:
            raise ValueError(f"{name}: channels must give the 5 encoder stage widths, got {channels}")
        convs = [int(n) for n in convs_per_stage]
        if len(convs) != 5 or any(n < 1 for n in convs):
            raise ValueError(f"{name}: convs_per_stage must be 5 positive ints, got {list(convs_per_stage)}")
        if fc_channels < 1:
            raise ValueError(f"{name}: fc_channels must be >= 1, got {fc_channels}")
        spatial_dims = check_spatial_dims(spatial_dims)
        make_norm(norm, 1, spatial_dims)
        init = check_init(init)
        if strides is not None and len(strides) != 5:
            raise ValueError(f"{name}: need 5 pooling strides (one per encoder stage), got {len(strides)}")
        parsed = parse_strides(strides, 5, spatial_dims, name)
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels: tuple[int, ...] = tuple(channels)
        self.spatial_dims = spatial_dims
        self.strides: tuple[Stride, ...] = parsed
        self.norm = str(norm)
        self.init = init
        self.dropout = float(dropout)
        self.convs_per_stage = tuple(convs)
        self.fc_channels = int(fc_channels)

        def cna(cin: int, cout: int) -> ConvNormAct:
            return ConvNormAct(cin, cout, 1, norm, 0.0, True, spatial_dims, activation="relu")

        pool = max_pool_type(spatial_dims)
        self.stages = nn.ModuleList()
        cin = in_channels
        for width, n_convs, stride in zip(channels, convs, parsed):
            layers: list[nn.Module] = []
            for _ in range(n_convs):
                layers.append(cna(cin, width))
                cin = width
            layers.append(pool(kernel_size=stride, stride=stride))
            self.stages.append(nn.Sequential(*layers))

        conv = conv_type(spatial_dims)
        drop = dropout_type(spatial_dims)
        self.fc6 = cna(channels[4], fc_channels)
        self.drop6 = drop(dropout) if dropout > 0 else nn.Identity()
        self.fc7 = ConvNormAct(fc_channels, fc_channels, 1, norm, 0.0, True, spatial_dims, "relu", kernel_size=1)
        self.drop7 = drop(dropout) if dropout > 0 else nn.Identity()
        self.score_fr = conv(fc_channels, out_channels, kernel_size=1)
        self.score_pool4 = conv(channels[3], out_channels, kernel_size=1)
        self.score_pool3 = conv(channels[2], out_channels, kernel_size=1)
        conv_t = conv_transpose_type(spatial_dims)

        def upsample(stride: Stride) -> nn.Module:
            kernel, padding = upsampling_kernel_and_padding(stride)
            return conv_t(out_channels, out_channels, kernel_size=kernel, stride=stride, padding=padding, bias=False)

        self.upscore2 = upsample(parsed[4])  # 1/32 -> 1/16
        self.upscore_pool4 = upsample(parsed[3])  # 1/16 -> 1/8

        initialise(self, init)
        self.reset_upsampling()

    @torch.no_grad()
    def reset_upsampling(self) -> None:
        """Set the learned up-sampling layers to (bi/tri)linear interpolation, channel by channel."""
        for layer in (self.upscore2, self.upscore_pool4):
            kernels = bilinear_kernel(layer.kernel_size)
            full = torch.ones(layer.kernel_size, dtype=layer.weight.dtype)
            for axis, k in enumerate(kernels):
                shape = [1] * len(kernels)
                shape[axis] = len(k)
                full = full * torch.tensor(k, dtype=layer.weight.dtype).reshape(shape)
            layer.weight.zero_()
            for c in range(self.out_channels):
                layer.weight[c, c] = full

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, out_channels, *spatial)`` of the input's spatial size."""
        self.check_input(x)
        size = tuple(x.shape[2:])
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(x)
        x = self.drop7(self.fc7(self.drop6(self.fc6(pooled[4]))))
        score = self.upscore2(self.score_fr(x)) + self.score_pool4(pooled[3])
        score = self.upscore_pool4(score) + self.score_pool3(pooled[2])
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(score, size=size, mode=mode, align_corners=False)

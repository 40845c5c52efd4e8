"""nnU-Net-like U-Net for voxel-wise (3D) or pixel-wise (2D) prediction, binary or multi-channel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from strokelab.nn.base import SegmentationNetwork
from strokelab.nn.blocks import (
    Stride,
    check_init,
    check_spatial_dims,
    conv_transpose_type,
    conv_type,
    initialise,
    make_block,
    make_norm,
    parse_strides,
)


class UNet(SegmentationNetwork):
    """2D or 3D U-Net in the style of nnU-Net.

    Each resolution stage has two 3x3(x3) conv-norm-LeakyReLU(0.01) layers (or a residual block with
    ``residual=True``). The encoder goes down with a strided convolution (the first conv of each
    stage after the first), the decoder goes up with a transposed convolution using the same stride,
    concatenates the encoder skip and applies another stage; a 1x1(x1) convolution maps to
    ``out_channels`` logits.

    Args:
        in_channels: number of input channels (e.g. perfusion maps cbf, cbv, mtt, tmax -> 4).
        out_channels: number of output channels (1 for binary lesion logits).
        channels: feature channels per resolution stage, highest resolution first. The number of
            down-sampling steps is ``len(channels) - 1``.
        strides: one stride per down-sampling step, each an int or one int per spatial axis (``[sx, sy]``
            in 2D, ``[sx, sy, sz]`` in 3D); e.g. ``[[2, 2, 1], [2, 2, 2], [2, 2, 2]]`` keeps the first
            step from halving thick-slice Z. Default: 2 in every axis for every step.
        norm: ``"instance"``, ``"batch"``, ``"group"``, ``"none"`` or ``"switchable"`` (see
            :func:`~strokelab.nn.blocks.make_norm`).
        dropout: channel dropout probability after each convolution (0 disables it).
        deep_supervision: in training mode, ``forward`` returns a list of logits, one per decoder
            stage, highest resolution first: ``[full, 1/2, 1/4, ...]`` (relative to the
            down-sampling strides). In eval mode a single full-resolution tensor is returned (the
            auxiliary heads are skipped). The auxiliary heads live in ``ds_heads``, so the weights of
            a model trained with deep supervision load into one without it via
            ``load_state_dict(state, strict=False)``.
        residual: use residual blocks instead of plain double-conv stages.
        spatial_dims: 3 (default) for ``(B, C, X, Y, Z)`` volumes, 2 for ``(B, C, X, Y)`` slices.
        init: ``"kaiming"`` (default; Kaiming-normal with the LeakyReLU gain) or ``"xavier"``
            (Xavier-uniform), for every convolution; biases zero.

    Inputs must have shape ``(B, in_channels, *spatial)`` with each spatial size divisible by
    :attr:`required_divisor`; otherwise ``forward`` raises ``ValueError``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: str = "instance",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        residual: bool = False,
        spatial_dims: int = 3,
        init: str = "kaiming",
    ):
        super().__init__()
        name = type(self).__name__
        channels = [int(c) for c in channels]
        spatial_dims = check_spatial_dims(spatial_dims)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{name}: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"{name}: channels must be a non-empty list of positive ints, got {channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        make_norm(norm, 1, spatial_dims)  # validates the norm kind early, with the list of valid kinds
        init = check_init(init)
        n_down = len(channels) - 1
        parsed = parse_strides(strides, n_down, spatial_dims, name)

        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels: tuple[int, ...] = tuple(channels)
        self.strides: tuple[Stride, ...] = parsed
        self.norm = str(norm)
        self.dropout = float(dropout)
        self.deep_supervision = bool(deep_supervision)
        self.residual = bool(residual)
        self.spatial_dims = spatial_dims
        self.init = init

        def block(cin: int, cout: int, stride: Stride | int = 1) -> nn.Module:
            return make_block(cin, cout, stride, norm, dropout, residual, spatial_dims)

        self.encoder = nn.ModuleList([block(in_channels, channels[0])])
        for i in range(1, len(channels)):
            self.encoder.append(block(channels[i - 1], channels[i], parsed[i - 1]))

        # Decoder stages ordered from lowest resolution to highest: stage k brings level
        # (n_down - k) up to level (n_down - k - 1).
        conv_t = conv_transpose_type(spatial_dims)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(n_down, 0, -1):
            stride = parsed[level - 1]
            self.upsample.append(conv_t(channels[level], channels[level - 1], kernel_size=stride, stride=stride))
            self.decoder.append(block(2 * channels[level - 1], channels[level - 1]))

        # Full-resolution 1x1(x1) head, plus (with deep supervision) one auxiliary head per lower-resolution
        # decoder stage, ordered like the decoder (lowest resolution first). Keeping the main head under
        # its own name makes its checkpoint keys independent of ``deep_supervision``.
        conv = conv_type(spatial_dims)
        self.head = conv(channels[0], out_channels, kernel_size=1)
        aux_levels = range(n_down, 1, -1) if deep_supervision else range(0)
        self.ds_heads = nn.ModuleList(conv(channels[level - 1], out_channels, kernel_size=1) for level in aux_levels)

        initialise(self, init)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Return logits ``(B, out_channels, *spatial)``, or in training mode with deep supervision a
        list of logits, highest resolution first (``[full, 1/2, 1/4, ...]``)."""
        self.check_input(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()  # bottleneck

        want_all = self.deep_supervision and self.training
        aux: list[Tensor] = []
        n_aux = len(self.ds_heads)  # the first n_aux decoder stages feed auxiliary heads
        for k, (up, stage) in enumerate(zip(self.upsample, self.decoder)):
            x = up(x)
            x = stage(torch.cat([x, skips.pop()], dim=1))
            if want_all and k < n_aux:
                aux.append(self.ds_heads[k](x))
        out = self.head(x)
        if not want_all:
            return out
        return [out] + aux[::-1]


class UNet3D(UNet):
    """:class:`UNet` with ``spatial_dims=3``, kept for configs that name ``strokelab.nn.unet.UNet3D``.

    Same arguments, behaviour, seeded weights and state-dict keys as the 3D ``UNet``; passing
    ``spatial_dims`` other than 3 raises ``ValueError``.
    """

    def __init__(self, *args, spatial_dims: int = 3, **kwargs):
        if spatial_dims != 3:
            raise ValueError(f"UNet3D is the 3D U-Net; use UNet(spatial_dims={spatial_dims}) for other dimensions")
        super().__init__(*args, spatial_dims=3, **kwargs)

"""nnU-Net-like 3D U-Net for binary (or multi-channel) voxel-wise prediction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from strokelab.nn.blocks import Stride, as_stride, init_weights, make_block, make_norm


class UNet3D(nn.Module):
    """3D U-Net in the style of nnU-Net.

    Each resolution stage has two 3x3x3 conv-norm-LeakyReLU(0.01) layers (or a residual block with
    ``residual=True``). The encoder goes down with a strided convolution (the first conv of each
    stage after the first), the decoder goes up with a transposed convolution using the same stride,
    concatenates the encoder skip and applies another stage; a 1x1x1 convolution maps to
    ``out_channels`` logits.

    Args:
        in_channels: number of input channels (e.g. perfusion maps cbf, cbv, mtt, tmax -> 4).
        out_channels: number of output channels (1 for binary lesion logits).
        channels: feature channels per resolution stage, highest resolution first. The number of
            down-sampling steps is ``len(channels) - 1``.
        strides: one stride per down-sampling step, each an int or ``[sx, sy, sz]``; e.g.
            ``[[2, 2, 1], [2, 2, 2], [2, 2, 2]]`` keeps the first step from halving thick-slice Z.
            Default: 2 in every axis for every step.
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"`` (see :func:`make_norm`).
        dropout: channel dropout probability after each convolution (0 disables it).
        deep_supervision: in training mode, ``forward`` returns a list of logits, one per decoder
            stage, highest resolution first: ``[full, 1/2, 1/4, ...]`` (relative to the
            down-sampling strides). In eval mode a single full-resolution tensor is returned (the
            auxiliary heads are skipped). The auxiliary heads live in ``ds_heads``, so the weights of
            a model trained with deep supervision load into one without it via
            ``load_state_dict(state, strict=False)``.
        residual: use residual blocks instead of plain double-conv stages.

    Inputs must have shape ``(B, in_channels, X, Y, Z)`` with ``X, Y, Z`` divisible by
    :attr:`required_divisor`; otherwise ``forward`` raises ``ValueError``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[Sequence[int]] | None = None,
        norm: str = "instance",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"UNet3D: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"UNet3D: channels must be a non-empty list of positive ints, got {channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet3D: dropout must be in [0, 1), got {dropout}")
        make_norm(norm, 1)  # validates the norm kind early, with the list of valid kinds
        n_down = len(channels) - 1
        if strides is None:
            parsed: list[Stride] = [(2, 2, 2)] * n_down
        else:
            parsed = [as_stride(s) for s in strides]
            if len(parsed) != n_down:
                raise ValueError(
                    f"UNet3D: got {len(parsed)} strides for {len(channels)} channel stages; "
                    f"need one stride per down-sampling step, i.e. len(channels) - 1 = {n_down}"
                )

        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels: tuple[int, ...] = tuple(channels)
        self.strides: tuple[Stride, ...] = tuple(parsed)
        self.norm = str(norm)
        self.dropout = float(dropout)
        self.deep_supervision = bool(deep_supervision)
        self.residual = bool(residual)

        def block(cin: int, cout: int, stride: Stride | int = 1) -> nn.Module:
            return make_block(cin, cout, stride, norm, dropout, residual)

        self.encoder = nn.ModuleList([block(in_channels, channels[0])])
        for i in range(1, len(channels)):
            self.encoder.append(block(channels[i - 1], channels[i], parsed[i - 1]))

        # Decoder stages ordered from lowest resolution to highest: stage k brings level
        # (n_down - k) up to level (n_down - k - 1).
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(n_down, 0, -1):
            stride = parsed[level - 1]
            self.upsample.append(nn.ConvTranspose3d(channels[level], channels[level - 1], kernel_size=stride, stride=stride))
            self.decoder.append(block(2 * channels[level - 1], channels[level - 1]))

        # Full-resolution 1x1x1 head, plus (with deep supervision) one auxiliary head per lower-resolution
        # decoder stage, ordered like the decoder (lowest resolution first). Keeping the main head under
        # its own name makes its checkpoint keys independent of ``deep_supervision``.
        self.head = nn.Conv3d(channels[0], out_channels, kernel_size=1)
        aux_levels = range(n_down, 1, -1) if deep_supervision else range(0)
        self.ds_heads = nn.ModuleList(nn.Conv3d(channels[level - 1], out_channels, kernel_size=1) for level in aux_levels)

        self.apply(init_weights)

    @property
    def required_divisor(self) -> tuple[int, int, int]:
        """Per-axis product of the strides: input X, Y, Z must be multiples of these."""
        div = [1, 1, 1]
        for s in self.strides:
            for a in range(3):
                div[a] *= s[a]
        return (div[0], div[1], div[2])

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not ``(B, in_channels, X, Y, Z)`` with divisible X, Y, Z."""
        if x.dim() != 5:
            raise ValueError(f"UNet3D expects a 5D input (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet3D was built for {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        spatial = tuple(x.shape[2:])
        div = self.required_divisor
        if any(s % d for s, d in zip(spatial, div)):
            raise ValueError(
                f"UNet3D input spatial size {spatial} is not divisible by the network's required divisor "
                f"{div} (product of strides {[list(s) for s in self.strides]}); pad or crop the input, "
                f"e.g. to {tuple(-(-s // d) * d for s, d in zip(spatial, div))}"
            )

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Return logits ``(B, out_channels, X, Y, Z)``, or in training mode with deep supervision a
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

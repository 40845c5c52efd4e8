"""Squeeze-and-Excitation channel recalibration (Hu et al. 2018), for 2D and 3D feature maps."""

from __future__ import annotations

from torch import Tensor, nn


class SEBlock(nn.Module):
    """Global average pool -> FC(C, C/r) -> ReLU -> FC(C/r, C) -> sigmoid -> scale each channel of ``x``.

    Args:
        channels: number of channels ``C``.
        reduction: the ratio ``r``; the hidden layer has ``max(1, C // r)`` units (Hu et al. use 16).
        spatial_dims: 2 for ``(N, C, H, W)``, 3 for ``(N, C, D, H, W)`` inputs; ``None`` accepts any
            number of spatial axes.

    The two fully connected layers are ``nn.Linear`` with biases (``fc1``, ``fc2``).
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_dims: int | None = 3):
        super().__init__()
        if channels < 1:
            raise ValueError(f"SEBlock: channels must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"SEBlock: reduction must be >= 1, got {reduction}")
        self.channels = int(channels)
        self.reduction = int(reduction)
        self.spatial_dims = None if spatial_dims is None else int(spatial_dims)
        self.hidden = max(1, self.channels // self.reduction)
        self.fc1 = nn.Linear(self.channels, self.hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(self.hidden, self.channels)
        self.gate = nn.Sigmoid()

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}, spatial_dims={self.spatial_dims}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or (self.spatial_dims is not None and x.dim() != self.spatial_dims + 2) or x.shape[1] != self.channels:
            raise ValueError(
                f"SEBlock was built for {self.channels} channels and spatial_dims={self.spatial_dims}, "
                f"got input shape {tuple(x.shape)}"
            )
        squeezed = x.mean(dim=tuple(range(2, x.dim())))  # (N, C)
        weights = self.gate(self.fc2(self.act(self.fc1(squeezed))))
        return x * weights.reshape(weights.shape + (1,) * (x.dim() - 2))

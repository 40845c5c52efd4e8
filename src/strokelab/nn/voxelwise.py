"""Voxel-wise regressors of the Stanford report (shared/seeds/001, IV.B): 1x1x1 convolutions only.

They collapse the channel axis (the perfusion series' time frames) into one value per voxel and never
mix neighbouring voxels: the report's "1 Layer" and "2 Layer" networks. Its third network, the U-Net, is
:class:`strokelab.nn.unet.UNet3D` with one output channel.
"""

from __future__ import annotations

from torch import nn


class VoxelwiseLinear(nn.Sequential):
    """The report's simplest model: a single 1x1x1 convolution with one filter (``in_channels + 1`` weights)."""

    def __init__(self, in_channels: int, out_channels: int = 1):
        super().__init__(nn.Conv3d(in_channels, out_channels, kernel_size=1))


class VoxelwiseTwoLayer(nn.Sequential):
    """The report's best model: batch norm -> 1x1x1 conv -> batch norm -> ReLU -> 1x1x1 conv.

    With 60 frames and ``hidden=12`` it has the report's 1033 parameters as Keras counts them (weights,
    biases, and the batch norms' scales, shifts and running statistics); the report names batch norm and
    two 1x1x1 convolution layers but no activation, and without one the model would be linear, so a ReLU
    sits between the layers.
    """

    def __init__(self, in_channels: int, hidden: int = 12, out_channels: int = 1):
        super().__init__(
            nn.BatchNorm3d(in_channels),
            nn.Conv3d(in_channels, hidden, kernel_size=1),
            nn.BatchNorm3d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, out_channels, kernel_size=1),
        )

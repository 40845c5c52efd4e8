"""Networks and their parts (2D and 3D), plain ``nn.Module`` s with no Lightning in them.

Networks: :class:`strokelab.nn.unet.UNet` (nnU-Net style; ``UNet3D`` is its 3D alias),
:class:`strokelab.nn.slnet.SLNet` and :class:`strokelab.nn.slnet.PlainUNet` (Wang et al. 2020),
:class:`strokelab.nn.fcn.FCN`, :class:`strokelab.nn.resunet.ResUNet`, :class:`strokelab.nn.r2unet.R2UNet`.
"""

from __future__ import annotations

from torch import nn


def count_parameters(net: nn.Module, trainable_only: bool = False) -> float:
    """Number of parameters of ``net`` in millions (buffers such as running statistics not included)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only) / 1e6

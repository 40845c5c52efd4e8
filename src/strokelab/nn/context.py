"""The image context encoder ``Phi_c`` of Wang et al. (2020), Sec. 3.2, Eq. 8 and Fig. 4.

``Phi_c`` maps an image (a pseudo-DWI ``I_g`` or the real DWI ``I_d``) to a short vector; the contextual loss
``l_h = || Phi_c(I_g) - Phi_c(I_d) ||_1`` (:class:`strokelab.losses.ContextLoss`) compares the two vectors. The
paper says: five convolutions with 3x3 kernels and stride 2x2, two adaptive average poolings, an output vector of
length 16. What Fig. 4 leaves open is fixed here as follows (the exact layer list, default widths, 2D)::

    conv1  3x3 stride 2   in_channels -> 16   LeakyReLU(0.01)
    conv2  3x3 stride 2   16 -> 32            LeakyReLU(0.01)
    conv3  3x3 stride 2   32 -> 64            LeakyReLU(0.01)
    pool1  AdaptiveAvgPool to 8 x 8           (any input size works from here on)
    conv4  3x3 stride 2   64 -> 64            LeakyReLU(0.01)
    conv5  3x3 stride 2   64 -> 16            (no activation: a signed linear read-out)
    pool2  AdaptiveAvgPool to 1 x 1, flatten  -> (B, 16)

All convolutions have padding 1 and a bias and no normalisation, so a stride-2 convolution maps a size ``n`` to
``ceil(n / 2)``: a size never drops below 1 (a 3D patch with 8 slices goes 8 -> 4 -> 2 -> 1 and stays 1). The
middle pool also brings small inputs up to its size (adaptive average pooling repeats values then), so a 64 x 64
slice and a 256 x 256 slice both reach ``conv4`` as 8 x 8. In 3D the kernels are 3x3x3 and the pools go to
``8 x 8 x 8`` and ``1 x 1 x 1`` unless ``mid_pool_size`` says otherwise (e.g. ``(8, 8, 2)`` for thin Z).

Note on training ``Phi_c``: Wang et al. update ``theta_c`` jointly with the other networks. ``l_h`` alone is
minimised by a constant encoder (every image maps to the same vector), so an encoder trained on ``l_h`` only may
collapse and make ``l_h`` trivially zero. A frozen encoder at its random Xavier initialisation does not collapse:
it is a fixed random non-linear projection, and ``l_h`` between an image and a perturbed copy grows with the
perturbation (see ``tests/test_synthesis.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from strokelab.nn import count_parameters
from strokelab.nn.blocks import (
    as_stride,
    check_init,
    check_input_shape,
    check_spatial_dims,
    conv_type,
    initialise,
    make_activation,
)

#: Default hidden widths of ``conv1`` ... ``conv4`` (``conv5`` outputs ``out_features``).
CONTEXT_CHANNELS: tuple[int, ...] = (16, 32, 64, 64)

#: Number of convolutions of Fig. 4.
N_CONVS = 5

#: Index (0-based) of the convolution after which the middle adaptive pool sits.
MID_POOL_AFTER = 2

_ADAPTIVE_AVG = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class ContextEncoder(nn.Module):
    """Wang et al.'s context encoder ``Phi_c`` (Fig. 4): five stride-2 3x3(x3) convolutions, two adaptive average
    pools, output ``(B, out_features)``. The layer list is in the module docstring.

    Args:
        in_channels: channels of the encoded image (1 for a DWI or pseudo-DWI).
        channels: widths of ``conv1`` ... ``conv4`` (4 positive ints); ``conv5`` outputs ``out_features``.
        spatial_dims: 2 (default; Wang works on axial slices) or 3.
        out_features: length of the output vector (the paper: 16).
        strides: one stride per convolution (5 entries, each an int or one int per spatial axis), default 2
            everywhere; e.g. ``[[2, 2, 1]] * 5`` keeps a thin Z axis (sizes never drop below 1 either way).
        mid_pool_size: output size of the middle adaptive pool (an int for every axis, or one per axis).
        activation: ``"leaky_relu"`` (default, slope 0.01) or ``"relu"`` between the convolutions.
        init: ``"xavier"`` (default; Wang et al. initialise all networks this way) or ``"kaiming"``.

    Input ``(B, in_channels, *spatial)`` of any spatial size (each axis >= 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = CONTEXT_CHANNELS,
        spatial_dims: int = 2,
        out_features: int = 16,
        strides: Sequence[int | Sequence[int]] | None = None,
        mid_pool_size: int | Sequence[int] = 8,
        activation: str = "leaky_relu",
        init: str = "xavier",
    ):
        super().__init__()
        name = type(self).__name__
        spatial_dims = check_spatial_dims(spatial_dims)
        channels = [int(c) for c in channels]
        if len(channels) != N_CONVS - 1 or any(c < 1 for c in channels):
            raise ValueError(
                f"{name}: channels must be {N_CONVS - 1} positive ints (widths of conv1..conv4; conv5 outputs "
                f"out_features), got {channels}"
            )
        if in_channels < 1 or out_features < 1:
            raise ValueError(f"{name}: in_channels and out_features must be >= 1, got {in_channels}, {out_features}")
        if strides is None:
            parsed = ((2,) * spatial_dims,) * N_CONVS
        else:
            parsed = tuple(as_stride(s, spatial_dims) for s in strides)
            if len(parsed) != N_CONVS:
                raise ValueError(f"{name}: need {N_CONVS} strides (one per convolution), got {len(parsed)}")
        pool_size = as_stride(mid_pool_size, spatial_dims)  # positive ints, one per axis
        make_activation(activation)  # validates the activation name
        init = check_init(init)

        conv = conv_type(spatial_dims)
        widths = [int(in_channels), *channels, int(out_features)]
        layers: list[nn.Module] = []
        for i in range(N_CONVS):
            layers.append(conv(widths[i], widths[i + 1], kernel_size=3, stride=parsed[i], padding=1))
            if i < N_CONVS - 1:
                layers.append(make_activation(activation))
            if i == MID_POOL_AFTER:
                layers.append(_ADAPTIVE_AVG[spatial_dims](pool_size))
        layers.append(_ADAPTIVE_AVG[spatial_dims](1))
        layers.append(nn.Flatten(1))
        self.layers = nn.Sequential(*layers)

        self.in_channels = int(in_channels)
        self.channels = tuple(channels)
        self.spatial_dims = spatial_dims
        self.out_features = int(out_features)
        self.strides = parsed
        self.mid_pool_size = pool_size
        self.activation = str(activation)
        self.init = init
        initialise(self, init)

    def forward(self, x: Tensor) -> Tensor:
        check_input_shape(self, x)
        return self.layers(x.to(torch.float32) if not x.is_floating_point() else x)

    def parameter_count(self) -> float:
        """Number of parameters in millions."""
        return count_parameters(self)

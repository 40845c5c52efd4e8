"""Building blocks for the 2D and 3D networks: layer lookup by dimension, normalisation factory,
convolution blocks and weight initialisation.

All blocks are plain ``nn.Module`` s over ``(B, C, X, Y)`` (``spatial_dims=2``) or ``(B, C, X, Y, Z)``
(``spatial_dims=3``, the default) tensors. They follow nnU-Net's conventions: 3x3(x3) convolutions with
padding 1, optional channel dropout right after the convolution, then normalisation, then
``LeakyReLU(0.01)`` (or ``ReLU`` with ``activation="relu"``, Ronneberger's U-Net and Wang's SLNet).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from strokelab.nn.norms import SwitchableNorm

#: Normalisation kinds accepted by :func:`make_norm` (and by the networks' ``norm=...``).
NORM_KINDS: tuple[str, ...] = ("instance", "batch", "group", "none", "switchable")

#: Activations accepted by the blocks' ``activation=...``.
ACTIVATIONS: tuple[str, ...] = ("leaky_relu", "relu")

#: Weight initialisations accepted by :func:`initialise` and by the networks' ``init=...``.
INIT_KINDS: tuple[str, ...] = ("kaiming", "xavier")

#: Spatial dimensionalities the networks are built for.
SPATIAL_DIMS: tuple[int, ...] = (2, 3)

#: Negative slope of every LeakyReLU in the networks (nnU-Net's value); also used for the
#: Kaiming initialisation.
LEAKY_SLOPE: float = 0.01

#: Upper bound on the number of groups used by ``make_norm("group", ...)``.
MAX_GROUPS: int = 8

#: A stride: one positive int per spatial axis.
Stride = tuple[int, ...]

_AXES = {2: "(X, Y)", 3: "(X, Y, Z)"}
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


class _GroupedInstanceNorm:
    """Instance normalisation computed by ``F.group_norm`` with one group per channel: the same statistics,
    parameters (``weight``, ``bias``; no running statistics) and result to float rounding as torch's
    ``instance_norm``, which on CPU is 1.6-4x slower forward and 1.4-2x slower forward + backward per layer
    (``benchmarks/instance_norm.py``: the default U-Net predicts 0.89x as long; its training step, dominated by
    the convolutions, is unchanged). Unbatched inputs keep torch's own path."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self._get_no_batch_dim() + 1 or self.track_running_stats:
            return super().forward(x)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


class InstanceNorm2d(_GroupedInstanceNorm, nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_GroupedInstanceNorm, nn.InstanceNorm3d):
    pass


_INSTANCE = {2: InstanceNorm2d, 3: InstanceNorm3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` as an int; raise ``ValueError`` unless it is 2 or 3."""
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def check_input_shape(module: nn.Module, x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, module.in_channels, *spatial)`` with ``module.spatial_dims``
    spatial axes (the encoders and discriminators, which take any spatial size)."""
    if x.dim() != module.spatial_dims + 2 or x.shape[1] != module.in_channels:
        raise ValueError(
            f"{type(module).__name__} ({module.spatial_dims}D, {module.in_channels} channels) expects "
            f"(B, {module.in_channels}, *{module.spatial_dims} spatial axes), got shape {tuple(x.shape)}"
        )


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims)]


def conv_transpose_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _CONV_T[check_spatial_dims(spatial_dims)]


def max_pool_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return _MAX_POOL[check_spatial_dims(spatial_dims)]


def dropout_type(spatial_dims: int) -> type[nn.Module]:
    """Channel dropout: ``nn.Dropout2d`` or ``nn.Dropout3d``."""
    return _DROPOUT[check_spatial_dims(spatial_dims)]


def _num_groups(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """Largest number of groups ``<= max_groups`` that divides ``channels`` (at least 1)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(kind: str, channels: int, spatial_dims: int = 3) -> nn.Module:
    """Return a normalisation layer for ``channels`` feature maps of a 2D or 3D network.

    Args:
        kind: ``"instance"`` (``InstanceNorm{2,3}d`` with learnable affine parameters, nnU-Net's
            default), ``"batch"`` (``BatchNorm{2,3}d``), ``"group"`` (``GroupNorm`` with the largest
            number of groups ``<= 8`` that divides ``channels``), ``"none"`` (identity) or
            ``"switchable"`` (:class:`~strokelab.nn.norms.SwitchableNorm`, Luo et al. 2018).
        channels: number of channels to normalise.
        spatial_dims: 2 or 3.

    Raises:
        ValueError: for an unknown ``kind``, a non-positive ``channels`` or ``spatial_dims`` not 2 or 3.
    """
    if channels < 1:
        raise ValueError(f"make_norm: channels must be >= 1, got {channels}")
    spatial_dims = check_spatial_dims(spatial_dims)
    kind = str(kind).lower()
    if kind == "instance":
        return _INSTANCE[spatial_dims](channels, affine=True)
    if kind == "batch":
        return _BATCH[spatial_dims](channels)
    if kind == "group":
        return nn.GroupNorm(_num_groups(channels), channels)
    if kind == "none":
        return nn.Identity()
    if kind == "switchable":
        return SwitchableNorm(channels, spatial_dims=spatial_dims)
    raise ValueError(f"make_norm: unknown norm kind {kind!r}; choose one of {', '.join(NORM_KINDS)}")


def make_activation(activation: str) -> nn.Module:
    """``"leaky_relu"`` (slope :data:`LEAKY_SLOPE`) or ``"relu"``, in place."""
    activation = str(activation).lower()
    if activation == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if activation == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")


def as_stride(stride: int | Sequence[int], spatial_dims: int = 3) -> Stride:
    """Normalise a stride given as an int or a sequence of ``spatial_dims`` ints to a tuple of positive ints.

    Raises:
        ValueError: if the stride does not have ``spatial_dims`` entries or an entry is not a positive integer.
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    if isinstance(stride, int):
        values = (stride,) * spatial_dims
    else:
        values = tuple(stride)
    if len(values) != spatial_dims:
        raise ValueError(f"stride must be an int or {spatial_dims} ints {_AXES[spatial_dims]}, got {list(values)}")
    out = []
    for v in values:
        if int(v) != v or int(v) < 1:
            raise ValueError(f"stride entries must be positive integers, got {list(values)}")
        out.append(int(v))
    return tuple(out)


def parse_strides(
    strides: Sequence[int | Sequence[int]] | None, n_down: int, spatial_dims: int, owner: str
) -> tuple[Stride, ...]:
    """One stride per down-sampling step (default 2 in every axis); ``owner`` names the network in errors."""
    if strides is None:
        return ((2,) * spatial_dims,) * n_down
    parsed = tuple(as_stride(s, spatial_dims) for s in strides)
    if len(parsed) != n_down:
        raise ValueError(
            f"{owner}: got {len(parsed)} strides for {n_down + 1} channel stages; "
            f"need one stride per down-sampling step, i.e. len(channels) - 1 = {n_down}"
        )
    return parsed


class ConvNormAct(nn.Module):
    """3x3(x3) convolution (optionally strided) -> dropout -> norm -> activation.

    The convolution has a bias only when ``norm="none"`` (a bias before a normalisation layer is
    redundant). With ``act=False`` the nonlinearity is omitted (used inside residual blocks).
    ``activation`` is ``"leaky_relu"`` (slope 0.01, nnU-Net) or ``"relu"``. ``kernel_size`` (odd, default
    3) sets a cubic kernel with "same" padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | Sequence[int] = 1,
        norm: str = "instance",
        dropout: float = 0.0,
        act: bool = True,
        spatial_dims: int = 3,
        activation: str = "leaky_relu",
        kernel_size: int = 3,
    ):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvNormAct: kernel_size must be a positive odd int, got {kernel_size}")
        self.conv = conv_type(spatial_dims)(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=as_stride(stride, spatial_dims),
            padding=kernel_size // 2,
            bias=str(norm).lower() == "none",
        )
        self.dropout = dropout_type(spatial_dims)(dropout) if dropout > 0 else nn.Identity()
        self.norm = make_norm(norm, out_channels, spatial_dims)
        self.act = make_activation(activation) if act else nn.Identity()

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
        spatial_dims: int = 3,
        activation: str = "leaky_relu",
    ):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, stride, norm, dropout, True, spatial_dims, activation)
        self.conv2 = ConvNormAct(out_channels, out_channels, 1, norm, dropout, True, spatial_dims, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class ResidualBlock(nn.Module):
    """Residual stage: ``act(conv-norm-act -> conv-norm  +  shortcut(x))``.

    The shortcut is the identity when shape is unchanged, otherwise a (strided) 1x1(x1) convolution
    followed by the same normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | Sequence[int] = 1,
        norm: str = "instance",
        dropout: float = 0.0,
        spatial_dims: int = 3,
        activation: str = "leaky_relu",
    ):
        super().__init__()
        stride = as_stride(stride, spatial_dims)
        self.conv1 = ConvNormAct(in_channels, out_channels, stride, norm, dropout, True, spatial_dims, activation)
        self.conv2 = ConvNormAct(out_channels, out_channels, 1, norm, dropout, False, spatial_dims, activation)
        if in_channels == out_channels and all(s == 1 for s in stride):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                conv_type(spatial_dims)(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                make_norm(norm, out_channels, spatial_dims),
            )
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def make_block(
    in_channels: int,
    out_channels: int,
    stride: int | Sequence[int] = 1,
    norm: str = "instance",
    dropout: float = 0.0,
    residual: bool = False,
    spatial_dims: int = 3,
    activation: str = "leaky_relu",
) -> nn.Module:
    """Return a :class:`ResidualBlock` if ``residual`` else a :class:`ConvBlock`."""
    cls = ResidualBlock if residual else ConvBlock
    return cls(in_channels, out_channels, stride, norm, dropout, spatial_dims, activation)


def check_init(kind: str) -> str:
    """Return ``kind`` in lower case; raise ``ValueError`` unless it is one of :data:`INIT_KINDS`."""
    kind = str(kind).lower()
    if kind not in INIT_KINDS:
        raise ValueError(f"unknown init {kind!r}; choose one of {', '.join(INIT_KINDS)}")
    return kind


def initialise(module: nn.Module, kind: str = "kaiming") -> None:
    """Initialise the weights of every convolution, transposed convolution and linear layer in ``module``
    (recursively) and zero their biases.

    ``"kaiming"``: ``kaiming_normal_(a=0.01)`` (LeakyReLU gain, nnU-Net). ``"xavier"``:
    ``xavier_uniform_`` (Glorot and Bengio 2010, gain 1; Wang et al. 2020 initialise all their networks
    this way), i.e. ``U(-b, b)`` with ``b = sqrt(6 / (fan_in + fan_out))``. Norm layers keep their
    defaults. Works for 1D, 2D and 3D layers alike.
    """
    kind = check_init(kind)
    # ``apply`` order (children before parents), so seeded weights match ``model.apply(init_weights)``.
    module.apply(init_weights if kind == "kaiming" else _xavier_init)


def _xavier_init(module: nn.Module) -> None:
    if isinstance(module, _CONV_TYPES):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal init (``a=0.01``, LeakyReLU gain) of one conv / transposed conv / linear layer, zero
    bias; other modules are left alone. Use with ``model.apply(init_weights)``; see :func:`initialise`."""
    if isinstance(module, _CONV_TYPES):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def bilinear_kernel(kernel_size: Sequence[int]) -> list[list[float]]:
    """Per-axis 1D (bi/tri)linear interpolation kernels for a transposed convolution of these kernel sizes
    (Long et al. 2015's upsampling initialisation); the full kernel is their outer product."""
    kernels = []
    for k in kernel_size:
        factor = (k + 1) // 2
        center = factor - 1 if k % 2 == 1 else factor - 0.5
        kernels.append([1.0 - abs(i - center) / factor for i in range(k)])
    return kernels


def upsampling_kernel_and_padding(stride: Stride) -> tuple[Stride, Stride]:
    """Kernel and padding of a transposed convolution that up-samples exactly by ``stride`` per axis with
    overlapping (interpolating) kernels: kernel ``2s`` (``2s - 1`` for odd ``s``), padding ``floor(s / 2)``."""
    kernel = tuple(2 * s - (s % 2) for s in stride)
    padding = tuple(s // 2 for s in stride)
    return kernel, padding

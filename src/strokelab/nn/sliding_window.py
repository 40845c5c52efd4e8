"""Sliding-window (patch-wise) inference over whole 2D images or 3D volumes, nnU-Net style.

Windows of ``patch_size`` tile the (padded) image with the requested overlap, the last window in each
axis flush with the border. Window predictions are blended with a Gaussian importance map (or
uniform weights) and normalised by the summed weights, so an identity predictor reproduces its input.
:func:`infer` also runs a 2D network over a 3D volume slice by slice.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Importance-map values are clamped to at least this fraction of the peak, so every voxel of a window
#: has a positive weight and the normalisation never divides by (almost) zero.
MIN_IMPORTANCE: float = 1e-6

WINDOW_MODES: tuple[str, ...] = ("gaussian", "constant")


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows of length ``patch`` covering ``[0, size)`` (``size >= patch``).

    As in nnU-Net: the target step is ``patch * (1 - overlap)`` (at least 1), the number of windows is
    ``ceil((size - patch) / step) + 1``, and the windows are spread evenly so that the first starts at 0
    and the last ends exactly at ``size``.
    """
    if size < patch:
        raise ValueError(f"window_starts: size {size} is smaller than the patch {patch}")
    if size == patch:
        return [0]
    target_step = max(patch * (1.0 - overlap), 1.0)
    n = math.ceil((size - patch) / target_step) + 1
    actual_step = (size - patch) / (n - 1)
    return [round(actual_step * i) for i in range(n)]


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gaussian weights of shape ``patch_size`` (float32), peak 1 at the patch centre.

    ``sigma = sigma_scale * patch_size`` per axis (nnU-Net); values are clamped to at least
    :data:`MIN_IMPORTANCE` so no voxel gets zero weight. Computed once per patch, sigma and device (a
    cached tensor: read it, do not modify it).
    """
    return _gaussian_importance_map(tuple(int(p) for p in patch_size), float(sigma_scale), str(torch.device(device or "cpu")))


@functools.lru_cache(maxsize=16)
def _gaussian_importance_map(patch_size: tuple[int, ...], sigma_scale: float, device: str) -> Tensor:
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    weights: Tensor | None = None
    for axis, p in enumerate(patch_size):
        coords = torch.arange(p, dtype=torch.float64, device=device)
        center = (p - 1) / 2.0
        sigma = sigma_scale * p
        g = torch.exp(-0.5 * ((coords - center) / sigma) ** 2)
        shape = [1] * len(patch_size)
        shape[axis] = p
        g = g.reshape(shape)
        weights = g if weights is None else weights * g
    assert weights is not None
    weights = weights / weights.max()
    return weights.clamp_min(MIN_IMPORTANCE).to(torch.float32)


def _predictor_device(predictor: Callable[[Tensor], Tensor]) -> torch.device | None:
    if isinstance(predictor, nn.Module):
        for p in itertools.chain(predictor.parameters(), predictor.buffers()):
            return p.device
    return None


def highest_resolution_output(out: Tensor | Sequence[Tensor]) -> Tensor:
    """The prediction to blend from a predictor's return value.

    A Tensor is returned as is. A list or tuple of Tensors is taken to be deep-supervision outputs,
    highest resolution first (``UNet(deep_supervision=True)`` in training mode), and its element 0 is
    returned. This is the only place in the inference path that reduces such a list; models in eval
    mode return a single Tensor, so it is only reached by predictors left in training mode or callables
    that return lists on purpose.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"predictor must return a Tensor or a list of Tensors, got {type(out).__name__}")


@torch.no_grad()
def sliding_window_inference(
    predictor: Callable[[Tensor], Tensor],
    image: Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    mirror_axes: Sequence[int] = (),
    device: torch.device | None = None,
) -> Tensor:
    """Predict a whole image window by window and blend the windows; 2D, 3D (or any number of spatial axes).

    Args:
        predictor: maps a batch of windows ``(n, C, *patch_size)`` to ``(n, out_C, *patch_size)`` (e.g. a
            ``UNet`` in eval mode; putting it in eval mode is the caller's job). It should return a
            Tensor; a list (deep supervision) is reduced by :func:`highest_resolution_output`.
        image: ``(B, C, X, Y)`` or ``(B, C, X, Y, Z)``: one spatial axis per entry of ``patch_size``.
        patch_size: window size, one int per spatial axis (``(px, py)`` or ``(px, py, pz)``). Axes where
            the image is smaller are zero-padded (symmetrically) to the patch size and the result is
            cropped back.
        overlap: fraction of the patch shared by neighbouring windows, in ``[0, 1)``; windows are
            spread evenly with the last one flush to the border, so the real overlap can be larger.
        batch_size: number of windows per predictor call (bounds memory). Windows of different images of
            the batch may share a call.
        mode: ``"gaussian"`` (nnU-Net importance weighting: window centres count more) or
            ``"constant"`` (plain average of overlapping windows).
        sigma_scale: Gaussian sigma as a fraction of the patch size.
        mirror_axes: spatial axes (0, 1[, 2] = X, Y[, Z]) for test-time mirroring: the prediction is the
            average over all ``2**len(mirror_axes)`` flip combinations (each flipped back).
        device: device to run ``predictor`` on; windows are moved there and blending happens there.
            Default: the device of ``predictor``'s parameters if it is an ``nn.Module`` with any,
            else ``image.device``.

    Returns:
        ``(B, out_C, *spatial)`` float32 blended predictions on ``image.device``, same spatial size as
        ``image``.
    """
    patch = tuple(int(p) for p in patch_size)
    if not patch or any(p < 1 for p in patch):
        raise ValueError(f"sliding_window_inference: patch_size must be positive ints, got {list(patch_size)}")
    n_dims = len(patch)
    if image.dim() != n_dims + 2:
        raise ValueError(
            f"sliding_window_inference: patch_size {list(patch)} has {n_dims} entries but the image of shape "
            f"{tuple(image.shape)} has {image.dim() - 2} spatial axes; give one patch_size entry per spatial "
            f"axis of a (B, C, *spatial) image"
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding_window_inference: overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"sliding_window_inference: batch_size must be >= 1, got {batch_size}")
    if mode not in WINDOW_MODES:
        raise ValueError(f"sliding_window_inference: mode must be one of {WINDOW_MODES}, got {mode!r}")
    axes = tuple(int(a) for a in mirror_axes)
    if any(not 0 <= a < n_dims for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(
            f"sliding_window_inference: mirror_axes must be distinct spatial axes among "
            f"{', '.join(str(a) for a in range(n_dims))}, got {list(mirror_axes)}"
        )

    if device is None:
        device = _predictor_device(predictor)
    device = image.device if device is None else torch.device(device)
    out_device = image.device

    # Pad axes that are smaller than the patch.
    spatial = tuple(image.shape[2:])
    pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch)]
    if any(before or after for before, after in pads):
        # F.pad takes pairs for the last axis first.
        flat = [v for before_after in reversed(pads) for v in before_after]
        image = F.pad(image, flat, mode="constant", value=0.0)
    padded = tuple(image.shape[2:])

    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch)]
    regions = [tuple(slice(a, a + p) for a, p in zip(loc, patch)) for loc in itertools.product(*starts)]

    if mode == "gaussian":
        importance = gaussian_importance_map(patch, sigma_scale, device=device)
    else:
        importance = torch.ones(patch, dtype=torch.float32, device=device)

    # Sum of weights per voxel: identical for every image of the batch, computed once.
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=device)
    for region in regions:
        weight_sum[region] += importance

    flip_sets = [tuple(a + 2 for a in combo) for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]

    def predict(windows: Tensor) -> Tensor:
        total: Tensor | None = None
        for dims in flip_sets:
            inp = torch.flip(windows, dims) if dims else windows
            out = highest_resolution_output(predictor(inp))
            if tuple(out.shape[2:]) != patch or out.shape[0] != windows.shape[0]:
                raise ValueError(
                    f"sliding_window_inference: predictor returned shape {tuple(out.shape)} for windows of "
                    f"shape {tuple(windows.shape)}; it must keep the batch size and spatial size"
                )
            out = out.to(device=device, dtype=torch.float32)
            if dims:
                out = torch.flip(out, dims)
            # Out of place: the predictor's output may alias its input (e.g. an identity predictor).
            total = out if total is None else total + out
        assert total is not None
        return total / len(flip_sets) if len(flip_sets) > 1 else total

    # Every (image, window) pair; predictor calls take up to batch_size of them, across images.
    jobs = [(b, region) for b in range(image.shape[0]) for region in regions]
    accum: Tensor | None = None
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        windows = torch.stack([image[(b, slice(None)) + region] for b, region in chunk]).to(device)
        preds = predict(windows).mul_(importance)  # in place: predict's output is a new tensor or the fresh windows
        if accum is None:
            accum = torch.zeros((image.shape[0], preds.shape[1]) + padded, dtype=torch.float32, device=device)
        for (b, region), pred in zip(chunk, preds):
            accum[(b, slice(None)) + region] += pred
    assert accum is not None
    accum /= weight_sum
    # Crop the padding back off.
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pads, spatial))
    return accum[(slice(None), slice(None)) + crop].to(device=out_device).contiguous()


def infer(predictor: Callable[[Tensor], Tensor], image: Tensor, settings: Mapping) -> Tensor:
    """:func:`sliding_window_inference` with a model's ``inference`` settings, as tasks and checkpoints store them.

    Settings: ``patch_size``, ``overlap``, ``batch_size``, optional ``mirror_axes`` and optional
    ``spatial_dims`` (the network's dimensionality):

    * absent: the number of ``patch_size`` entries decides (2D images with 2 entries, 3D with 3);
    * ``3``: 3D windows over ``(B, C, X, Y, Z)`` volumes;
    * ``2``: a 2D network. ``patch_size`` has 2 entries, or 3 with the last one 1. A ``(B, C, X, Y)``
      image is windowed directly; a ``(B, C, X, Y, Z)`` volume is predicted slice by slice along Z (the
      axial slices become a batch ``(B * Z, C, X, Y)``) and the result is ``(B, out_C, X, Y, Z)``.
      ``mirror_axes`` must then be among 0, 1 (flipping Z would change nothing for a slice-wise model).

    ``predictor`` should return a Tensor; a list is reduced by :func:`highest_resolution_output`.
    """
    patch = [int(p) for p in settings["patch_size"]]
    spatial_dims = settings.get("spatial_dims")
    mirror_axes = tuple(int(a) for a in (settings.get("mirror_axes") or ()))
    kwargs = dict(overlap=settings["overlap"], batch_size=settings["batch_size"], mirror_axes=mirror_axes)
    if spatial_dims is None or int(spatial_dims) == 3:
        if spatial_dims is not None and len(patch) != 3:
            raise ValueError(f"infer: spatial_dims 3 needs a 3-entry patch_size, got {patch}")
        return sliding_window_inference(predictor, image, patch, **kwargs)
    if int(spatial_dims) != 2:
        raise ValueError(f"infer: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if len(patch) == 3 and patch[2] == 1:
        patch = patch[:2]
    if len(patch) != 2:
        raise ValueError(f"infer: spatial_dims 2 needs patch_size (px, py) or (px, py, 1), got {patch}")
    if image.dim() == 4:
        return sliding_window_inference(predictor, image, patch, **kwargs)
    if image.dim() != 5:
        raise ValueError(f"infer: image must be (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(image.shape)}")
    if any(a not in (0, 1) for a in mirror_axes):
        raise ValueError(f"infer: a 2D network predicts slice by slice; mirror_axes must be among 0, 1, got {list(mirror_axes)}")
    b, c, x, y, z = image.shape
    slices = image.permute(0, 4, 1, 2, 3).reshape(b * z, c, x, y)
    out = sliding_window_inference(predictor, slices, patch, **kwargs)
    return out.reshape(b, z, out.shape[1], x, y).permute(0, 2, 3, 4, 1).contiguous()

"""Sliding-window (patch-wise) inference over whole 3D volumes, nnU-Net style.

Windows of ``patch_size`` tile the (padded) volume with the requested overlap, the last window in each
axis flush with the border. Window predictions are blended with a Gaussian importance map (or
uniform weights) and normalised by the summed weights, so an identity predictor reproduces its input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

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
    :data:`MIN_IMPORTANCE` so no voxel gets zero weight.
    """
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    weights: Tensor | None = None
    for axis, p in enumerate(patch_size):
        coords = torch.arange(p, dtype=torch.float64, device=device)
        center = (p - 1) / 2.0
        sigma = sigma_scale * p
        g = torch.exp(-0.5 * ((coords - center) / sigma) ** 2)
        shape = [1, 1, 1]
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


def _as_tensor_output(out: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], Tensor):
        return out[0]  # deep supervision: highest-resolution output first
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
    """Predict a whole volume window by window and blend the windows.

    Args:
        predictor: maps a batch of windows ``(n, C, px, py, pz)`` to ``(n, out_C, px, py, pz)`` (e.g. a
            ``UNet3D`` in eval mode; putting it in eval mode is the caller's job). If it returns a list
            (deep supervision), element 0 is used.
        image: ``(B, C, X, Y, Z)``.
        patch_size: window size ``(px, py, pz)``. Axes where the image is smaller are zero-padded
            (symmetrically) to the patch size and the result is cropped back.
        overlap: fraction of the patch shared by neighbouring windows, in ``[0, 1)``; windows are
            spread evenly with the last one flush to the border, so the real overlap can be larger.
        batch_size: number of windows per predictor call (bounds memory).
        mode: ``"gaussian"`` (nnU-Net importance weighting: window centres count more) or
            ``"constant"`` (plain average of overlapping windows).
        sigma_scale: Gaussian sigma as a fraction of the patch size.
        mirror_axes: spatial axes (0, 1, 2 = X, Y, Z) for test-time mirroring: the prediction is the
            average over all ``2**len(mirror_axes)`` flip combinations (each flipped back).
        device: device to run ``predictor`` on; windows are moved there and blending happens there.
            Default: the device of ``predictor``'s parameters if it is an ``nn.Module`` with any,
            else ``image.device``.

    Returns:
        ``(B, out_C, X, Y, Z)`` float32 blended predictions on ``image.device``, same spatial size as
        ``image``.
    """
    if image.dim() != 5:
        raise ValueError(f"sliding_window_inference: image must be (B, C, X, Y, Z), got {tuple(image.shape)}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or any(p < 1 for p in patch):
        raise ValueError(f"sliding_window_inference: patch_size must be 3 positive ints, got {list(patch_size)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding_window_inference: overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"sliding_window_inference: batch_size must be >= 1, got {batch_size}")
    if mode not in WINDOW_MODES:
        raise ValueError(f"sliding_window_inference: mode must be one of {WINDOW_MODES}, got {mode!r}")
    axes = tuple(int(a) for a in mirror_axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(
            f"sliding_window_inference: mirror_axes must be distinct spatial axes among 0, 1, 2, got {list(mirror_axes)}"
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
    locations = list(itertools.product(*starts))

    if mode == "gaussian":
        importance = gaussian_importance_map(patch, sigma_scale, device=device)
    else:
        importance = torch.ones(patch, dtype=torch.float32, device=device)

    # Sum of weights per voxel: identical for every image of the batch, computed once.
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=device)
    for x0, y0, z0 in locations:
        weight_sum[x0 : x0 + patch[0], y0 : y0 + patch[1], z0 : z0 + patch[2]] += importance

    flip_sets = [tuple(a + 2 for a in combo) for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]

    def predict(windows: Tensor) -> Tensor:
        total: Tensor | None = None
        for dims in flip_sets:
            inp = torch.flip(windows, dims) if dims else windows
            out = _as_tensor_output(predictor(inp))
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

    result: Tensor | None = None
    for b in range(image.shape[0]):
        accum: Tensor | None = None
        for i in range(0, len(locations), batch_size):
            chunk = locations[i : i + batch_size]
            windows = torch.stack(
                [image[b, :, x0 : x0 + patch[0], y0 : y0 + patch[1], z0 : z0 + patch[2]] for x0, y0, z0 in chunk]
            ).to(device)
            preds = predict(windows) * importance
            if accum is None:
                accum = torch.zeros((preds.shape[1],) + padded, dtype=torch.float32, device=device)
            for (x0, y0, z0), pred in zip(chunk, preds):
                accum[:, x0 : x0 + patch[0], y0 : y0 + patch[1], z0 : z0 + patch[2]] += pred
        assert accum is not None
        accum /= weight_sum
        # Crop the padding back off.
        accum = accum[
            :,
            pads[0][0] : pads[0][0] + spatial[0],
            pads[1][0] : pads[1][0] + spatial[1],
            pads[2][0] : pads[2][0] + spatial[2],
        ]
        if result is None:
            result = torch.empty((image.shape[0],) + tuple(accum.shape), dtype=torch.float32, device=out_device)
        result[b] = accum.to(out_device)
    assert result is not None
    return result


def infer(predictor: Callable[[Tensor], Tensor], image: Tensor, settings: dict) -> Tensor:
    """:func:`sliding_window_inference` with a model's ``inference`` settings (``patch_size``, ``overlap``,
    ``batch_size``, optional ``mirror_axes``), as tasks and checkpoints store them."""
    return sliding_window_inference(
        predictor,
        image,
        patch_size=settings["patch_size"],
        overlap=settings["overlap"],
        batch_size=settings["batch_size"],
        mirror_axes=tuple(settings.get("mirror_axes") or ()),
    )

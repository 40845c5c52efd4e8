"""The voxel-wise weight map ``A`` of Wang et al. (2020), Eq. 9 (numpy and scipy only, no torch).

``A_i = w`` on lesion voxels, else ``0.5 + exp(-d_i / D) / (exp(-d_i / D) + 1)`` where ``d_i`` is the Euclidean
distance from voxel ``i`` to the nearest lesion voxel. The background weight is ``0.5 + sigmoid(-d/D)``: 1.0 at
``d = 0`` (the formula's limit at the lesion border), just under 1 next to the lesion, decaying towards 0.5 far
away. The paper uses ``w = 1.5`` and ``D = 50`` for both the weighted L2 of the pseudo-DWI generator (Eq. 7) and
the weighted cross-entropy of the segmenter (Eq. 12, :class:`strokelab.losses.WCELoss`).

Distance unit: the paper works on 2D slices (256 x 256, pixel spacing 0.80-1.04 mm) and gives ``D`` with no
unit, i.e. in pixels of its training grid: ``spacing=None`` (the default) measures ``d`` in voxels of the array's
grid, the paper's choice. The platform's unit convention is mm: pass the grid's ``spacing`` (mm per axis) to measure
``d`` in mm, ``D`` then being mm too (on the paper's grid ``D = 50`` pixels is about 40-52 mm). On a 3D grid with
thick slices, voxel units count a step across slices like one in-plane; spacing in mm does not.

Note: ``from strokelab.losses import weight_map`` gives the function (the package re-exports it under the
module's name); the module itself is ``sys.modules["strokelab.losses.weight_map"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.special import expit


def weight_map(label: np.ndarray, w: float = 1.5, D: float = 50.0, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Wang et al.'s weight map ``A`` (Eq. 9) for a 2D or 3D lesion mask.

    Args:
        label: lesion mask, 2D or 3D; boolean, or numbers read as ``> 0.5`` (the platform's mask convention).
        w: weight of lesion voxels (the paper: 1.5; it asks for ``w >= 1``), > 0.
        D: decay length of the background weight, > 0, in the unit of the distances (voxels when ``spacing`` is
            None, else the unit of ``spacing``, mm on the platform). The paper: 50 (pixels).
        spacing: voxel size per axis for the distances (``sampling`` of ``scipy.ndimage.distance_transform_edt``);
            ``None`` measures distances in voxels of the grid, the paper's choice.

    Returns:
        float32 array of ``label``'s shape. With no lesion voxel every distance is infinite and ``A = 0.5``
        everywhere (the formula's limit); never NaN.
    """
    label = np.asarray(label)
    if label.ndim not in (2, 3):
        raise ValueError(f"weight_map: label must be 2D or 3D, got shape {label.shape}")
    if not w > 0:
        raise ValueError(f"weight_map: w must be > 0, got {w}")
    if not D > 0:
        raise ValueError(f"weight_map: D must be > 0, got {D}")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != label.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"weight_map: spacing must be {label.ndim} positive numbers, got {spacing}")
    lesion = label if label.dtype == bool else label > 0.5
    if not lesion.any():
        return np.full(lesion.shape, 0.5, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~lesion, sampling=spacing)  # 0 on the lesion
    background = 0.5 + expit(-distance / float(D))  # exp(-d/D) / (exp(-d/D) + 1), no overflow for large d
    return np.where(lesion, float(w), background).astype(np.float32)

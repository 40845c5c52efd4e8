"""The four ISLES'24 perfusion maps (CBF, CBV, MTT, Tmax) derived from a raw 4D CTP series.

One definition serves two users: the digital phantom, which derives its maps from its own simulated CTP
(``strokelab.data.phantom``, ``maps="deconvolved"``), and :func:`fill_missing_maps`, which derives the maps
of a case whose map files are missing from the case's CTP. Both use :data:`DERIVED_MAP_SETTINGS`
(block-circulant SVD, automatic AIF selection, in-plane and temporal smoothing) and the same
post-processing (:func:`isles_maps`): float32, 0 outside the brain and a small positive floor inside it,
so that ``map != 0`` is the brain mask, as in the vendor maps of ISLES'24.

Why this smoothing (measured on the 40 cases of the default phantom, 96x112x28 voxels of 2x2x5 mm, 32 frames
x 1.5 s, 8-15 HU of CTP noise; maps against ``phantom_truth/`` inside the brain, means over cases). Without
spatial smoothing a single voxel's curve is mostly noise (Pearson r of Tmax with its truth 0.04 on 10 cases).
With 1.5 s temporal smoothing and an in-plane Gaussian of 3 / 5 / 7 / 10 mm SD:

    Pearson r Tmax            0.55  0.75  0.82  0.83
    Dice of Tmax > 6 s        0.56  0.70  0.75  0.75
    Spearman r CBF            0.62  0.66  0.66  0.62
    Spearman r CBV            0.41  0.45  0.46  0.43
    Pearson r MTT             0.08  0.24  0.38  0.50

7 mm is the knee: Tmax stops improving, CBF and CBV start to lose the grey/white contrast. (1.0 s instead of
1.5 s temporal smoothing: Tmax r 0.78.) Systematic errors at 7 mm / 1.5 s, as real deconvolution has them:
Tmax is 1.85 s later than the truth (median; regularised deconvolution puts the residue's peak late), mean
CBF 0.74x, CBV 1.11x, MTT 1.50x the truth, and partial-volume arteries give CBF up to ~1000 ml/100g/min
(hence rank correlations for CBF and CBV: their Pearson r is ~0.14). On an ISLES'24-sized series (512x512x75
voxels of 0.45 mm, 45 frames) these settings cost 24.6 s on 2 cores, 14.8 s without smoothing: the 7 mm
Gaussian (15.6 voxels SD) is computed on 5x5 tiles (``maps._InPlaneGaussian``; 61 s voxel by voxel),
``benchmarks/perfusion_maps.py --exact-gaussian``.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import nibabel as nib
import numpy as np

from strokelab.errors import DataError
from strokelab.io import atomic_path, read_image
from strokelab.perfusion.maps import PerfusionResult, PerfusionSettings, compute_maps, load_ctp, map_image

ISLES_MAPS = ("cbf", "cbv", "mtt", "tmax")
# Maps derived from a raw CTP series: bcSVD (threshold 0.1), automatic AIF, 7 mm in-plane and 1.5 s temporal
# Gaussian smoothing (see the module docstring for the measurements behind the numbers).
DERIVED_MAP_SETTINGS = PerfusionSettings(spatial_sigma_mm=7.0, smoothing_sigma_s=1.5)
# Smallest value inside the brain (ml/100g/min, ml/100g, s, s): a brain voxel is never 0.
MAP_FLOORS = {"cbf": 0.5, "cbv": 0.05, "mtt": 0.2, "tmax": 0.05}
# Voxel sizes of a header and of the CTP agree when within this (mm).
SPACING_TOL_MM = 1e-3


def isles_maps(result: PerfusionResult) -> dict[str, np.ndarray]:
    """CBF, CBV, MTT and Tmax of a :class:`PerfusionResult` as written: float32 (C order), 0 outside the
    result's brain mask, at least :data:`MAP_FLOORS` inside it."""
    brain = np.ascontiguousarray(result.brain)
    out = {}
    for name in ISLES_MAPS:
        data = np.ascontiguousarray(result.maps[name], dtype=np.float32)
        out[name] = np.where(brain, np.maximum(data, np.float32(MAP_FLOORS[name])), np.float32(0)).astype(np.float32)
    return out


def derive_maps(
    series: np.ndarray,
    dt: float,
    spacing: tuple[float, ...],
    brain: np.ndarray | None = None,
    settings: PerfusionSettings = DERIVED_MAP_SETTINGS,
    source: str = "CTP series",
) -> dict[str, np.ndarray]:
    """The four ISLES maps of a 4D CTP series (X, Y, Z, N) in HU with frame interval ``dt`` (s) and voxel
    size ``spacing`` (mm): :func:`compute_maps` with automatic AIF selection, then :func:`isles_maps`.
    ``brain``: a brain mask on the series grid, else the automatic one. Errors name ``source``."""
    result = compute_maps(series, dt, settings, brain=brain, spacing=tuple(float(s) for s in spacing[:3]), source=source)
    return isles_maps(result)


def derived_map_name(case_id: str, name: str) -> str:
    """ISLES'24 file name of a map: ``<case>_ses-01_space-ncct_<map>.nii.gz``."""
    return f"{case_id}_ses-01_space-ncct_{name}.nii.gz"


def fill_missing_maps(cases: Iterable, out_dir: str | Path, settings: PerfusionSettings = DERIVED_MAP_SETTINGS) -> list[str]:
    """Derive the perfusion maps of cases whose map files are missing, from their raw CTP.

    ``cases`` are :class:`strokelab.data.layouts.Case` objects. A case is filled when one or more of
    cbf/cbv/mtt/tmax in ``case.images`` does not exist on disk and its CTP
    (``modality_path(case.root, case.id, "ctp")``) does: the CTP is read once, the four maps are computed
    with ``settings`` and written, all or none (temporary names, then renamed), as
    ``out_dir/<case>/<case>_ses-01_space-ncct_<map>.nii.gz``; the missing entries of ``case.images`` then
    point to them (maps that exist keep their paths). Cases with nothing missing, or with neither the map
    nor the CTP, are left alone (the caller's checks report a missing file).

    Header: the maps get the header (affine, sform and qform) of the first present 3D image of the case on
    the CTP's voxel grid (same shape, voxel sizes within 1e-3 mm), looked for among the other maps, the CTA
    and the lesion mask; otherwise the CTP's own spatial affine. This matters on ISLES'24, where the CTP's
    header lacks the gantry tilt that the maps, CTA and mask share on the same grid.

    Returns one line per filled case (for the caller to log). A bad CTP raises ``DataError`` naming it.
    """
    from strokelab.data.layouts import label_path, modality_path

    out_dir = Path(out_dir)
    lines = []
    for case in cases:
        missing = [m for m in ISLES_MAPS if m in case.images and not Path(case.images[m]).exists()]
        if not missing:
            continue
        ctp_path = modality_path(case.root, case.id, "ctp")
        if not ctp_path.exists():
            continue
        series, ctp_img, dt = load_ctp(ctp_path)
        zooms = tuple(float(z) for z in ctp_img.header.get_zooms()[:3])
        if not all(np.isfinite(z) and z > 0 for z in zooms):
            raise DataError(ctp_path, f"has voxel sizes {zooms} mm in its header", "re-export it with its voxel spacing")
        maps = derive_maps(series, dt, zooms, settings=settings, source=str(ctp_path))
        del series

        candidates = [Path(case.images.get(m) or modality_path(case.root, case.id, m)) for m in ISLES_MAPS if m not in missing]
        candidates.append(Path(case.images.get("cta") or modality_path(case.root, case.id, "cta")))
        candidates.append(Path(case.label) if case.label is not None else label_path(case.root, case.id))
        reference, ref_path = _grid_reference(candidates, ctp_img.shape[:3], zooms)
        if reference is None:
            reference = ctp_img

        folder = out_dir / case.id
        paths = {m: folder / derived_map_name(case.id, m) for m in ISLES_MAPS}
        with ExitStack() as stack:
            for name in ISLES_MAPS:
                nib.save(map_image(maps[name], reference), stack.enter_context(atomic_path(paths[name])))
        for name in missing:
            case.images[name] = paths[name]
        header = f"the header of {ref_path.name}" if ref_path is not None else "the CTP's own affine (no 3D image on its grid)"
        lines.append(
            f"{case.id}: {', '.join(missing)} missing; derived {', '.join(ISLES_MAPS)} from {ctp_path.name} "
            f"({settings.deconvolution.method}, automatic AIF) into {folder}, with {header}"
        )
    return lines


def _grid_reference(
    candidates: list[Path], shape: tuple[int, ...], zooms: tuple[float, ...]
) -> tuple[nib.Nifti1Image | None, Path | None]:
    """The first readable 3D image among ``candidates`` with this shape and these voxel sizes (only the
    header is read), or (None, None)."""
    for path in candidates:
        if not path.exists():
            continue
        try:
            img, img_shape = read_image(path)  # trailing length-1 dimensions beyond 3 dropped
            img_zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        except DataError:
            continue  # an unreadable or hostile image is the caller's checks' business, not a header source
        if img_shape == tuple(shape) and np.allclose(img_zooms, zooms, rtol=0.0, atol=SPACING_TOL_MM):
            return img, path
    return None, None

"""Integrity checks of a data set, before anything trains or predicts on it.

Every case is checked for: files present and readable, with a sane header (:func:`strokelab.io.read_image`:
real-valued voxels, positive spacing, a finite non-singular affine, defined scaling, a size the file can
hold); 3D where 3D is expected (the CTP is 4D);
the same shape and affine (within a tolerance, in mm) across the modalities and the label of a case;
no NaN/Inf voxels (or, with ``nan_policy="replace"``, replaced by 0 with a warning); label values 0/1
(read as ``> 0.5``; values like 0.99999999977 are fine, a 2 or a 0.5 is not).

List every problem of a data set at once::

    python -m strokelab.data.check ROOT [--modalities cbf cbv mtt tmax] [--no-label]
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from strokelab.data.layouts import TIME_SERIES, Case, discover, resolve_input
from strokelab.errors import DataError, DataSetError, StrokelabError
from strokelab.io import load_nifti, path_problem, read_image

log = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("cbf", "cbv", "mtt", "tmax")
LABEL_VALUE_TOL = 1e-3
READ_THREADS = 4  # files of a case read at once (read_parallel)
LABEL = "__label__"  # read_parallel's key for a case's lesion mask
DEFAULT_MAX_MISSING_FRAMES = 0.05  # Stanford report: up to 5 % of a series may be zero-filled


@dataclass
class LoadedCase:
    """A checked case in memory: float32 arrays in native geometry plus the reference header."""

    case: Case
    images: dict[str, np.ndarray]
    reference: nib.Nifti1Image
    label: np.ndarray | None = None  # bool
    warnings: list[str] = field(default_factory=list)


def _spatial_affine_close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return bool(np.max(np.abs(a - b)) <= tol)


def spatial_reference(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A 3D image with the spatial header of ``img`` (a 4D series gives its first frame's grid)."""
    if len(img.shape) == 3:
        return img
    header = img.header.copy()
    header.set_data_shape(img.shape[:3])
    return nib.Nifti1Image(np.zeros(img.shape[:3], np.uint8), img.affine, header=header)


def geometry_problem(
    path: Path, img: nib.Nifti1Image, ref_path: Path, ref: nib.Nifti1Image, tol: float, series: bool
) -> tuple[DataError | None, str | None]:
    """(error, warning) of an image against a case's reference grid.

    A 4D series on the same voxel grid (shape and voxel sizes) whose affine alone differs is taken to lie on
    the reference grid, with a warning: ISLES'24 writes its CTP headers without the gantry tilt and with
    another origin, while the CTP voxels are registered to the maps (shared/seeds/000, section 3.2).
    """
    if img.shape[:3] != ref.shape[:3]:
        return DataError(
            path,
            f"shape {img.shape[:3]} differs from {ref_path.name} {ref.shape[:3]}",
            "resample the case's images onto one grid",
        ), None
    if _spatial_affine_close(img.affine, ref.affine, tol):
        return None, None
    diff = float(np.max(np.abs(img.affine - ref.affine)))
    zooms, ref_zooms = np.asarray(img.header.get_zooms()[:3]), np.asarray(ref.header.get_zooms()[:3])
    if series and np.allclose(zooms, ref_zooms, atol=tol):
        return (
            None,
            f"{path}: affine differs from {ref_path.name} by {diff:.3g} on the same voxel grid: read on that grid",
        )
    return DataError(
        path,
        f"affine differs from {ref_path.name} by {diff:.3g} (tolerance {tol:g})",
        "register the images or raise data.preprocess.affine_tol_mm",
    ), None


def fill_missing_frames(data: np.ndarray, path: Path, max_missing: float) -> tuple[np.ndarray, str | None]:
    """Zero-fill the frames of a 4D series that hold no finite value or only zeros (dropped at export).

    As in the Stanford report (shared/seeds/001, IV.A): a series may miss at most ``max_missing`` of its frames.
    """
    missing = np.zeros(data.shape[-1], bool)
    for t in range(data.shape[-1]):  # frame by frame: no full-size temporary for an ISLES-sized series
        frame = data[..., t]
        finite = np.isfinite(frame)
        missing[t] = not finite.any() or not np.any(frame[finite])
    n = int(missing.sum())
    if n == 0:
        return data, None
    if n > max_missing * data.shape[-1]:
        raise DataError(
            path,
            f"{n} of {data.shape[-1]} frames are missing (all NaN or all 0); at most {max_missing:.0%} may be zero-filled",
            "re-export the series or raise data.preprocess.max_missing_frames",
        )
    data[..., missing] = 0.0
    return data, f"{path}: zero-filled {n} missing frame(s) {np.flatnonzero(missing).tolist()}"


def load_label(
    path: Path,
    reference: nib.Nifti1Image,
    affine_tol_mm: float = 1e-3,
    ref_name: str = "the images",
    read: tuple[np.ndarray, nib.Nifti1Image] | DataError | None = None,
) -> np.ndarray:
    """Read a lesion mask as ``> 0.5`` after checking it: readable, on the reference grid, values 0/1
    (``read``: the result of reading ``path`` already, by :func:`read_parallel`)."""
    if isinstance(read, DataError):
        raise read
    data, img = read if read is not None else load_nifti(path, expect_3d=True)
    if data.shape != reference.shape[:3]:
        raise DataError(
            path, f"shape {data.shape} differs from {ref_name} {reference.shape[:3]}", "resample the mask onto the images' grid"
        )
    if not _spatial_affine_close(img.affine, reference.affine, affine_tol_mm):
        diff = float(np.max(np.abs(img.affine - reference.affine)))
        raise DataError(
            path,
            f"affine differs from {ref_name} by {diff:.3g} (tolerance {affine_tol_mm:g})",
            "register the mask or raise data.preprocess.affine_tol_mm",
        )
    if not np.isfinite(data).all():
        raise DataError(path, "mask has NaN/Inf voxels", "fix the mask file")
    off = np.minimum(np.abs(data), np.abs(data - 1.0)) > LABEL_VALUE_TOL
    if off.any():
        values = np.unique(data[off])[:5]
        raise DataError(
            path, f"mask has values other than 0/1 (e.g. {', '.join(f'{v:g}' for v in values)})", "give a binary lesion mask"
        )
    return data > 0.5


def load_case(
    case: Case, nan_policy: str = "error", affine_tol_mm: float = 1e-3, max_missing_frames: float = DEFAULT_MAX_MISSING_FRAMES
) -> LoadedCase:
    """Read and check one case. Raises DataError on the first problem (see ``check_case`` for all)."""
    problems, loaded = _inspect(case, nan_policy, affine_tol_mm, max_missing_frames, stop_at_first=True)
    if problems:
        raise problems[0]
    assert loaded is not None
    return loaded


def check_case(
    case: Case, nan_policy: str = "error", affine_tol_mm: float = 1e-3, max_missing_frames: float = DEFAULT_MAX_MISSING_FRAMES
) -> list[DataError]:
    """All problems of one case (empty list: the case is usable)."""
    problems, _ = _inspect(case, nan_policy, affine_tol_mm, max_missing_frames, stop_at_first=False)
    return problems


def reference_modality(modalities) -> str | None:
    """The modality whose grid a case is checked against: the first 3D one (else the first series)."""
    modalities = list(modalities)
    return next((m for m in modalities if m not in TIME_SERIES), modalities[0] if modalities else None)


def read_parallel(files: dict[str, tuple[Path, bool]]) -> dict[str, tuple[np.ndarray, nib.Nifti1Image] | DataError]:
    """:func:`load_nifti` of each ``name: (path, expect_3d)``, several files at once (decompressing a
    ``.nii.gz`` releases the GIL, so two cores read two files): the data and image, or the file's DataError."""

    def read(item: tuple[Path, bool]):
        try:
            return load_nifti(*item)
        except DataError as err:
            return err

    if len(files) < 2:
        return {name: read(item) for name, item in files.items()}
    with ThreadPoolExecutor(max_workers=min(len(files), READ_THREADS)) as pool:
        return dict(zip(files, pool.map(read, files.values())))


def _inspect(
    case: Case, nan_policy: str, tol: float, max_missing: float, stop_at_first: bool
) -> tuple[list[DataError], LoadedCase | None]:
    if nan_policy not in {"error", "replace"}:
        raise DataError(None, f"nan_policy must be 'error' or 'replace', not '{nan_policy}'", "fix data.preprocess.nan_policy")
    problems: list[DataError] = []
    warnings: list[str] = []
    read: dict[str, tuple[Path, np.ndarray, nib.Nifti1Image]] = {}
    files = {m: (p, m not in TIME_SERIES) for m, p in case.images.items()}
    if case.label is not None:
        files[LABEL] = (case.label, True)
    loaded = read_parallel(files)
    for modality, path in case.images.items():
        result = loaded[modality]
        if isinstance(result, DataError):
            problems.append(result)
            if stop_at_first:
                return problems, None
            continue
        read[modality] = (Path(path), *result)
    ref_mod = reference_modality(read)
    if ref_mod is None:
        return problems, None
    ref_path, _, ref_img = read[ref_mod]
    reference = spatial_reference(ref_img)

    images: dict[str, np.ndarray] = {}
    for modality, (path, data, img) in read.items():
        series = modality in TIME_SERIES
        try:
            if modality != ref_mod:
                err, warning = geometry_problem(path, img, ref_path, reference, tol, series)
                if err is not None:
                    raise err
                if warning:
                    warnings.append(warning)
            if series:
                data, warning = fill_missing_frames(data, path, max_missing)
                if warning:
                    warnings.append(warning)
            bad = ~np.isfinite(data)
            if bad.any():
                n = int(bad.sum())
                if nan_policy != "replace":
                    raise DataError(path, f"has {n} NaN/Inf voxels", "fix the file or set data.preprocess.nan_policy=replace")
                data[bad] = 0.0
                warnings.append(f"{path}: replaced {n} NaN/Inf voxels by 0")
        except DataError as err:
            problems.append(err)
            if stop_at_first:
                return problems, None
            continue
        images[modality] = data

    label = None
    if case.label is not None:
        try:
            label = load_label(case.label, reference, tol, ref_path.name, read=loaded[LABEL])
        except DataError as err:
            problems.append(err)
    if problems:
        return problems, None
    for w in warnings:
        log.warning(w)
    return problems, LoadedCase(case, images, reference, label, warnings)


def check_headers(cases: list[Case], affine_tol_mm: float = 1e-3, reader: str | None = None) -> None:
    """Fast pre-flight over all cases (headers only: presence, 3D/4D, shapes, affines, and every header check of
    :func:`strokelab.io.read_image`: voxel type, spacing, scaling, declared size); raises all problems.

    Voxel-level checks (truncation, NaN/Inf, missing frames, label values) follow when each case is read.
    ``reader`` names what reads the images (e.g. a checkpoint's model) for the message about a missing one.
    """
    errors: list[DataError] = []
    for case in cases:
        headers: dict[str, tuple[Path, nib.Nifti1Image]] = {}
        for modality, path in case.images.items():
            if path_problem(path) is None and not Path(path).exists():  # unreachable: read_image says why
                if reader:
                    problem = f"case {case.id} lacks the input '{modality}' that {reader} reads"
                    errors.append(DataError(path, problem, "add the file, or use a model trained on what the case has"))
                else:
                    errors.append(DataError(path, "file is missing", "restore it or drop its modality"))
                continue
            try:
                img, _ = read_image(path, 4 if modality in TIME_SERIES else 3)
            except DataError as err:
                errors.append(err)
                continue
            headers[modality] = (Path(path), img)
        ref_mod = reference_modality(headers)
        if ref_mod is None:
            continue
        ref_path, ref_img = headers[ref_mod]
        for modality, (path, img) in headers.items():
            if modality != ref_mod:
                err, _ = geometry_problem(path, img, ref_path, ref_img, affine_tol_mm, modality in TIME_SERIES)
                if err is not None:
                    errors.append(err)
    if errors:
        raise errors[0] if len(errors) == 1 else DataSetError(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokelab.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="ISLES'24 or ISLES'18 data root, or one case folder")
    parser.add_argument("--modalities", nargs="+", default=list(DEFAULT_MODALITIES))
    parser.add_argument("--no-label", action="store_true", help="do not require follow-up lesion masks")
    parser.add_argument("--nan-policy", choices=["error", "replace"], default="error")
    parser.add_argument("--affine-tol-mm", type=float, default=1e-3)
    parser.add_argument("--max-missing-frames", type=float, default=DEFAULT_MAX_MISSING_FRAMES)
    args = parser.parse_args(argv)
    try:
        root, ids = resolve_input(args.root)
        cases = discover(root, args.modalities, with_label=not args.no_label, ids=ids)
    except StrokelabError as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    n_bad = 0
    for case in cases:
        problems = check_case(case, args.nan_policy, args.affine_tol_mm, args.max_missing_frames)
        n_bad += bool(problems)
        for err in problems:
            print(f"{case.id}: {err}")
    print(f"{len(cases)} cases checked, {n_bad} with problems" + ("" if n_bad else ": all usable"))
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())

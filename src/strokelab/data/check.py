"""Integrity checks of a data set, before anything trains or predicts on it.

Every case is checked for: files present and readable; 3D where 3D is expected (the CTP is 4D);
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
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from strokelab.data.layouts import TIME_SERIES, Case, discover, resolve_input
from strokelab.errors import DataError, DataSetError, StrokelabError
from strokelab.io import load_nifti

log = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("cbf", "cbv", "mtt", "tmax")
LABEL_VALUE_TOL = 1e-3


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


def load_label(path: Path, reference: nib.Nifti1Image, affine_tol_mm: float = 1e-3, ref_name: str = "the images") -> np.ndarray:
    """Read a lesion mask as ``> 0.5`` after checking it: readable, on the reference grid, values 0/1."""
    data, img = load_nifti(path, expect_3d=True)
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


def load_case(case: Case, nan_policy: str = "error", affine_tol_mm: float = 1e-3) -> LoadedCase:
    """Read and check one case. Raises DataError on the first problem (see ``check_case`` for all)."""
    problems, loaded = _inspect(case, nan_policy, affine_tol_mm, stop_at_first=True)
    if problems:
        raise problems[0]
    assert loaded is not None
    return loaded


def check_case(case: Case, nan_policy: str = "error", affine_tol_mm: float = 1e-3) -> list[DataError]:
    """All problems of one case (empty list: the case is usable)."""
    problems, _ = _inspect(case, nan_policy, affine_tol_mm, stop_at_first=False)
    return problems


def _inspect(case: Case, nan_policy: str, tol: float, stop_at_first: bool) -> tuple[list[DataError], LoadedCase | None]:
    if nan_policy not in {"error", "replace"}:
        raise DataError(None, f"nan_policy must be 'error' or 'replace', not '{nan_policy}'", "fix data.preprocess.nan_policy")
    problems: list[DataError] = []
    images: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    reference: nib.Nifti1Image | None = None
    ref_path: Path | None = None

    def problem(err: DataError) -> bool:
        problems.append(err)
        return stop_at_first

    for modality, path in case.images.items():
        try:
            data, img = load_nifti(path, expect_3d=modality not in TIME_SERIES)
        except DataError as err:
            if problem(err):
                return problems, None
            continue
        if reference is None:
            reference, ref_path = img, path
        elif data.shape[:3] != reference.shape[:3]:
            if problem(
                DataError(
                    path,
                    f"shape {data.shape[:3]} differs from {ref_path.name} {reference.shape[:3]}",
                    "resample the case's images onto one grid",
                )
            ):
                return problems, None
            continue
        elif not _spatial_affine_close(img.affine, reference.affine, tol):
            diff = float(np.max(np.abs(img.affine - reference.affine)))
            if problem(
                DataError(
                    path,
                    f"affine differs from {ref_path.name} by {diff:.3g} (tolerance {tol:g})",
                    "register the images or raise data.preprocess.affine_tol_mm",
                )
            ):
                return problems, None
            continue
        bad = ~np.isfinite(data)
        if bad.any():
            n = int(bad.sum())
            if nan_policy == "replace":
                data = np.where(bad, 0.0, data).astype(np.float32)
                warnings.append(f"{path}: replaced {n} NaN/Inf voxels by 0")
            elif problem(DataError(path, f"has {n} NaN/Inf voxels", "fix the file or set data.preprocess.nan_policy=replace")):
                return problems, None
            else:
                continue
        images[modality] = data

    label = None
    if case.label is not None and reference is not None:
        try:
            label = load_label(case.label, reference, tol, ref_path.name)
        except DataError as err:
            if problem(err):
                return problems, None
    if problems or reference is None:
        return problems, None
    for w in warnings:
        log.warning(w)
    return problems, LoadedCase(case, images, reference, label, warnings)


def check_headers(cases: list[Case], affine_tol_mm: float = 1e-3) -> None:
    """Fast pre-flight over all cases (headers only: presence, 3D/4D, shapes, affines); raises all problems.

    Voxel-level checks (truncation, NaN/Inf, label values) follow when each case is read.
    """
    errors: list[DataError] = []
    for case in cases:
        ref: tuple[Path, nib.Nifti1Image] | None = None
        for modality, path in case.images.items():
            if not Path(path).exists():
                errors.append(DataError(path, "file is missing", "restore it or drop its modality"))
                continue
            try:
                img = nib.load(str(path))
            except Exception as exc:  # noqa: BLE001 - any header failure is a bad file
                errors.append(
                    DataError(path, f"unreadable or truncated image header ({type(exc).__name__})", "re-export or re-download it")
                )
                continue
            want = 4 if modality in TIME_SERIES else 3
            ndim = len(img.shape) if not (len(img.shape) == 4 and img.shape[3] == 1) else 3
            if ndim != want:
                errors.append(DataError(path, f"is {ndim}D with shape {img.shape}, expected {want}D", "give the right file"))
            elif ref is None:
                ref = (path, img)
            elif img.shape[:3] != ref[1].shape[:3]:
                errors.append(
                    DataError(
                        path,
                        f"shape {img.shape[:3]} differs from {ref[0].name} {ref[1].shape[:3]}",
                        "resample the case's images onto one grid",
                    )
                )
            elif not _spatial_affine_close(img.affine, ref[1].affine, affine_tol_mm):
                diff = float(np.max(np.abs(img.affine - ref[1].affine)))
                errors.append(
                    DataError(
                        path,
                        f"affine differs from {ref[0].name} by {diff:.3g} (tolerance {affine_tol_mm:g})",
                        "register the images",
                    )
                )
    if errors:
        raise errors[0] if len(errors) == 1 else DataSetError(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokelab.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="ISLES'24-layout data root or one case folder")
    parser.add_argument("--modalities", nargs="+", default=list(DEFAULT_MODALITIES))
    parser.add_argument("--no-label", action="store_true", help="do not require follow-up lesion masks")
    parser.add_argument("--nan-policy", choices=["error", "replace"], default="error")
    parser.add_argument("--affine-tol-mm", type=float, default=1e-3)
    args = parser.parse_args(argv)
    try:
        root, ids = resolve_input(args.root)
        cases = discover(root, args.modalities, with_label=not args.no_label, ids=ids)
    except StrokelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_bad = 0
    for case in cases:
        problems = check_case(case, args.nan_policy, args.affine_tol_mm)
        n_bad += bool(problems)
        for err in problems:
            print(f"{case.id}: {err}")
    print(f"{len(cases)} cases checked, {n_bad} with problems" + ("" if n_bad else ": all usable"))
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Cross-validation folds in the format of ISLES'24's ``isles24_multimodal_5fold_NIHSSstratified.json``::

    {"training": [{"caseID": "sub-stroke0001", "fold": 0, "CBF": "<path>", ..., "label": "<path>"}, ...]}

Paths are relative to the data root. Without a fold file, folds are made deterministically and written
in the same format at the data root (name: ``strokelab.data.layouts.fold_file_name(n, layout)``):

* ISLES'24: stratified by the admission NIHSS of the clinical tables
  (``isles24_multimodal_{n}fold_NIHSSstratified.json``);
* ISLES'18 (no clinical tables): stratified by the lesion volume (ml) of each TRAINING case's OT mask
  (``isles18_multimodal_{n}fold_volumestratified.json``); TESTING cases have no mask and go into no fold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from strokelab.data.layouts import (
    LAYOUT_MODALITIES,
    case_ids,
    detect_layout,
    fold_file_name,
    label_path,
    layout_of,
    modality_path,
    training_case_ids,
)
from strokelab.errors import DataError
from strokelab.io import atomic_write_text, load_nifti


def stratified_folds(nihss: dict[str, float | None], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign folds so that each fold has a balanced distribution of a score (NIHSS, or lesion volume).

    Cases are sorted by the score (missing values take the median) and dealt out in blocks of
    ``n_folds``; within a block the fold order is a seeded permutation. Same input, same folds.
    """
    known = [v for v in nihss.values() if v is not None]
    fill = float(np.median(known)) if known else 0.0
    order = sorted(nihss, key=lambda cid: (fill if nihss[cid] is None else float(nihss[cid]), cid))
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    for start in range(0, len(order), n_folds):
        block = order[start : start + n_folds]
        perm = rng.permutation(n_folds)[: len(block)]
        for cid, fold in zip(block, perm):
            folds[cid] = int(fold)
    return folds


def fold_file_entries(root: Path, folds: dict[str, int]) -> dict:
    entries = []
    for cid in sorted(folds):
        entry: dict = {"caseID": cid, "fold": folds[cid]}
        for modality in LAYOUT_MODALITIES[layout_of(root)]:
            path = modality_path(root, cid, modality)
            if path.exists():
                entry[modality.upper()] = str(path.relative_to(root))
        entry["label"] = str(label_path(root, cid).relative_to(root))
        entries.append(entry)
    return {"training": entries}


def lesion_volume_ml(path: Path) -> float:
    """Volume (ml) of a lesion mask (voxels > 0.5); DataError naming the file if it is missing or unreadable."""
    data, img = load_nifti(path)
    return float((data > 0.5).sum()) * float(np.prod(img.header.get_zooms()[:3])) / 1000.0


def ensure_fold_file(root: str | Path, n_folds: int = 5, seed: int = 0) -> Path:
    """Return the data set's fold file, creating a stratified one if there is none (see the module docstring)."""
    from strokelab.data.clinical import read_clinical

    root = Path(root)
    layout = detect_layout(root)
    path = root / fold_file_name(n_folds, layout)
    if path.exists():
        return path
    ids = training_case_ids(root)
    if len(ids) < n_folds:
        raise DataError(root, f"has {len(ids)} training cases, fewer than {n_folds} folds", "add cases or lower data.n_folds")
    if layout == "isles24":
        scores = {cid: read_clinical(root, cid).get("nihss_admission") for cid in ids}
    else:
        scores = {cid: lesion_volume_ml(label_path(root, cid)) for cid in ids}
    atomic_write_text(path, json.dumps(fold_file_entries(root, stratified_folds(scores, n_folds, seed)), indent=1))
    return path


def read_fold_file(path: str | Path, root: str | Path) -> dict[str, int]:
    """Read a fold file; every case it names must exist under the data root."""
    path, root = Path(path), Path(root)
    if not path.exists():
        raise DataError(path, "fold file does not exist", "fix data.fold_file or delete the key to make folds")
    try:
        entries = json.loads(path.read_text())["training"]
        folds = {str(e["caseID"]): int(e["fold"]) for e in entries}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            path, f"is not a fold file ({type(exc).__name__}: {exc})", 'expected {"training": [{"caseID": ..., "fold": k}]}'
        ) from None
    present = set(case_ids(root))
    missing = sorted(set(folds) - present)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            path,
            f"names {len(missing)} case(s) missing from {_cases_folder(root)}: {shown}",
            "restore those cases or remove them from the fold file",
        )
    return folds


def _cases_folder(root: Path) -> str:
    return str(root / "derivatives") if layout_of(root) == "isles24" else f"{root} (TRAINING/, TESTING/)"

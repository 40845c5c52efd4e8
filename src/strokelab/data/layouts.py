"""Where the files of a case live on disk: the ISLES 2024 BIDS layout.

ISLES'24 (and the built-in phantom, which writes the same layout)::

    ROOT/derivatives/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_space-ncct_{cta,ctp}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-01/perfusion-maps/sub-strokeXXXX_ses-01_space-ncct_{cbf,cbv,mtt,tmax}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02[_space-ncct]_lesion-msk.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02_space-ncct_{dwi,adc}.nii.gz   (later release)
    ROOT/raw_data/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_ncct.nii.gz                      (NCCT defines "space-ncct")
    ROOT/phenotype/sub-strokeXXXX/ses-0{1,2}/*.xlsx|*.csv                                      (clinical tables)

A case may be given as the data root (every case under ``derivatives/``) or as one case folder
(``ROOT/derivatives/sub-strokeXXXX``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strokelab.errors import DataError

# Modality name -> (session, sub-folder, file suffix) inside derivatives/<case>/ (ncct is in raw_data/).
ISLES24_FILES: dict[str, tuple[str, str, str]] = {
    "cta": ("ses-01", "", "space-ncct_cta"),
    "ctp": ("ses-01", "", "space-ncct_ctp"),
    "cbf": ("ses-01", "perfusion-maps", "space-ncct_cbf"),
    "cbv": ("ses-01", "perfusion-maps", "space-ncct_cbv"),
    "mtt": ("ses-01", "perfusion-maps", "space-ncct_mtt"),
    "tmax": ("ses-01", "perfusion-maps", "space-ncct_tmax"),
    "dwi": ("ses-02", "", "space-ncct_dwi"),
    "adc": ("ses-02", "", "space-ncct_adc"),
    "ncct": ("ses-01", "", "ncct"),
}
# Modalities stored as 4D series (time last); everything else must be 3D.
TIME_SERIES = frozenset({"ctp"})
# Both namings of the follow-up lesion mask occur in the release; the first one that exists wins.
LABEL_SUFFIXES = ("space-ncct_lesion-msk", "lesion-msk")
CASE_PATTERN = re.compile(r"^sub-stroke\d+$")


def fold_file_name(n_folds: int = 5) -> str:
    """The ISLES'24 fold file's name for ``n_folds`` folds (the release ships the 5-fold one)."""
    return f"isles24_multimodal_{int(n_folds)}fold_NIHSSstratified.json"


FOLD_FILE_NAME = fold_file_name(5)
FOLD_FILE_GLOB = "isles24_multimodal_*fold_NIHSSstratified.json"


@dataclass
class Case:
    """One case: its id, a path per modality, the label path and the clinical table row."""

    id: str
    root: Path
    images: dict[str, Path]
    label: Path | None
    clinical: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None

    @property
    def centre(self) -> str | None:
        value = self.clinical.get("centre")
        return None if value is None else str(value)


def modality_path(root: Path, case_id: str, modality: str) -> Path:
    """Expected path of one modality of one case (whether or not it exists)."""
    if modality not in ISLES24_FILES:
        known = ", ".join(sorted(ISLES24_FILES))
        raise DataError(None, f"unknown modality '{modality}'", f"use one of: {known}")
    session, sub, suffix = ISLES24_FILES[modality]
    top = "raw_data" if modality == "ncct" else "derivatives"
    folder = root / top / case_id / session / sub if sub else root / top / case_id / session
    return folder / f"{case_id}_{session}_{suffix}.nii.gz"


def label_path(root: Path, case_id: str) -> Path:
    """Path of the follow-up lesion mask: the first naming that exists, else the canonical one."""
    folder = root / "derivatives" / case_id / "ses-02"
    candidates = [folder / f"{case_id}_ses-02_{suffix}.nii.gz" for suffix in LABEL_SUFFIXES]
    return next((p for p in candidates if p.exists()), candidates[0])


def resolve_input(path: str | Path) -> tuple[Path, list[str] | None]:
    """Turn a data root or a single case folder into (data root, case ids or None for all)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "does not exist", "give an ISLES'24 data root or a derivatives/sub-strokeXXXX folder")
    if CASE_PATTERN.match(path.name) and path.parent.name == "derivatives":
        return path.parent.parent, [path.name]
    if (path / "derivatives").is_dir():
        return path, None
    raise DataError(
        path,
        "is neither an ISLES'24 data root (no derivatives/ folder) nor a case folder",
        "point to the folder that holds derivatives/, or to derivatives/sub-strokeXXXX",
    )


def case_ids(root: Path) -> list[str]:
    """Sorted ids of all cases under ROOT/derivatives."""
    derivatives = root / "derivatives"
    if not derivatives.is_dir():
        raise DataError(root, "has no derivatives/ folder", "point data root to an ISLES'24-layout data set")
    ids = sorted(p.name for p in derivatives.iterdir() if p.is_dir() and CASE_PATTERN.match(p.name))
    if not ids:
        raise DataError(derivatives, "holds no sub-strokeXXXX case folders", "check the data root")
    return ids


def discover(root: str | Path, modalities: list[str], with_label: bool = True, ids: list[str] | None = None) -> list[Case]:
    """Build a Case per case id with the expected paths; files are not opened here (see checks)."""
    from strokelab.data.clinical import read_clinical

    root = Path(root)
    ids = case_ids(root) if ids is None else ids
    return [
        Case(
            id=cid,
            root=root,
            images={m: modality_path(root, cid, m) for m in modalities},
            label=label_path(root, cid) if with_label else None,
            clinical=read_clinical(root, cid),
        )
        for cid in ids
    ]

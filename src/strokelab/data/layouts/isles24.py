"""The ISLES 2024 BIDS layout (also what the built-in phantom writes by default)::

    ROOT/derivatives/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_space-ncct_{cta,ctp}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-01/perfusion-maps/sub-strokeXXXX_ses-01_space-ncct_{cbf,cbv,mtt,tmax}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02[_space-ncct]_lesion-msk.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02_space-ncct_{dwi,adc}.nii.gz   (later release)
    ROOT/raw_data/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_ncct.nii.gz                      (NCCT defines "space-ncct")
    ROOT/phenotype/sub-strokeXXXX/ses-0{1,2}/*.xlsx|*.csv                                      (clinical tables)

Case ids are the folder names (``sub-strokeXXXX``); a single case is given as ``ROOT/derivatives/sub-strokeXXXX``.
"""

from __future__ import annotations

import re
from pathlib import Path

from strokelab.errors import DataError, DataSetError
from strokelab.io import folder_problem

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
# Both namings of the follow-up lesion mask occur in the release; the first one that exists wins.
LABEL_SUFFIXES = ("space-ncct_lesion-msk", "lesion-msk")
CASE_PATTERN = re.compile(r"^sub-stroke\d+$")
FOLD_FILE_TEMPLATE = "isles24_multimodal_{n}fold_NIHSSstratified.json"


def is_root(root: Path) -> bool:
    return (root / "derivatives").is_dir()


def modality_path(root: Path, case_id: str, modality: str) -> Path:
    if modality not in ISLES24_FILES:
        known = ", ".join(sorted(ISLES24_FILES))
        raise DataError(None, f"unknown modality '{modality}'", f"use one of: {known}")
    session, sub, suffix = ISLES24_FILES[modality]
    top = "raw_data" if modality == "ncct" else "derivatives"
    folder = root / top / case_id / session / sub if sub else root / top / case_id / session
    return folder / f"{case_id}_{session}_{suffix}.nii.gz"


def _present(path: Path) -> bool:
    """Whether ``path`` is there, even as a broken link or behind a folder without permission (the
    reader then says what is wrong with it, instead of the other naming being reported missing)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return True


def label_path(root: Path, case_id: str) -> Path:
    folder = root / "derivatives" / case_id / "ses-02"
    candidates = [folder / f"{case_id}_ses-02_{suffix}.nii.gz" for suffix in LABEL_SUFFIXES]
    return next((p for p in candidates if _present(p)), candidates[0])


def case_folder(root: Path, case_id: str) -> Path:
    return root / "derivatives" / case_id


def case_ids(root: Path) -> list[str]:
    """The sorted case ids under ROOT/derivatives. An entry named like a case that is no usable folder (a
    symlink loop, a dangling symlink, a file, a folder that cannot be read) is refused, all at once, not
    skipped: a data set must not silently shrink."""
    derivatives = root / "derivatives"
    err = folder_problem(derivatives, "data folder")
    if err is not None:
        raise err
    entries = sorted(p for p in derivatives.iterdir() if CASE_PATTERN.match(p.name))
    problems = [err for p in entries if (err := folder_problem(p, "case folder")) is not None]
    if problems:
        raise problems[0] if len(problems) == 1 else DataSetError(problems)
    if not entries:
        raise DataError(derivatives, "holds no sub-strokeXXXX case folders", "check the data root")
    return [p.name for p in entries]


def case_folder_input(path: Path) -> tuple[Path, list[str]] | None:
    """(root, [id]) when ``path`` is ``ROOT/derivatives/sub-strokeXXXX``, else None."""
    if CASE_PATTERN.match(path.name) and path.parent.name == "derivatives":
        return path.parent.parent, [path.name]
    return None

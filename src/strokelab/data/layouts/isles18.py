"""The ISLES 2018 layout (the data set of Wang et al. 2020)::

    ROOT/TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<id>/SMIR.Brain.XX.O.<MOD>.<id>.nii
    ROOT/TESTING/case_N/...                      (the same without MR_DWI and OT)

``<MOD>`` is CT (the NCCT), CT_4DPWI (the 4D CTP), CT_CBF, CT_CBV, CT_MTT, CT_Tmax, MR_DWI or OT (the
lesion mask); ``<id>`` is a number unique per file. Slabs are 256x256 voxels in-plane with 2-22 slices
4-12 mm apart, 43-64 CTP frames; files are uncompressed ``.nii`` (``.nii.gz`` is read too), each with
its own header. A file is found by globbing its modality folder, so the ``<id>`` numbers never matter.

Case ids are the folder names, ``case_N``. TRAINING and TESTING may both start at ``case_1``: a TESTING
folder whose name is also a TRAINING folder's gets the id ``test_case_N`` (TESTING ids otherwise keep
their own name), so that ids stay unique under one root and map back to one folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from strokelab.errors import DataError, DataSetError
from strokelab.io import folder_problem

SPLITS = ("TRAINING", "TESTING")
# Platform modality name -> ISLES'18 modality tag; the label is OT.
ISLES18_MODALITIES: dict[str, str] = {
    "ncct": "CT",
    "ctp": "CT_4DPWI",
    "cbf": "CT_CBF",
    "cbv": "CT_CBV",
    "mtt": "CT_MTT",
    "tmax": "CT_Tmax",
    "dwi": "MR_DWI",
}
LABEL_TAG = "OT"
PREFIX = "SMIR.Brain.XX.O."
FOLDER_PATTERN = re.compile(r"^SMIR\.Brain\.XX\.O\.(?P<tag>[A-Za-z0-9_]+)\.(?P<id>\d+)$")
CASE_PATTERN = re.compile(r"^case_(?P<n>\d+)$")
TEST_PREFIX = "test_"
FOLD_FILE_TEMPLATE = "isles18_multimodal_{n}fold_volumestratified.json"


def is_root(root: Path) -> bool:
    return any((root / split).is_dir() for split in SPLITS)


def _case_folders_of(folder: Path) -> list[Path]:
    """The case_N folders of a split folder in numeric order ([] if it does not exist). An entry named like
    a case that is no usable folder (a symlink loop, a dangling symlink, a file, a folder that cannot be
    read) is refused, all at once, not skipped: a data set must not silently shrink."""
    err = folder_problem(folder, "split folder")
    if err is not None:
        raise err
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CASE_PATTERN.match(p.name)]
    problems = [err for p in found if (err := folder_problem(p, "case folder")) is not None]
    if problems:
        raise problems[0] if len(problems) == 1 else DataSetError(problems)
    return sorted(found, key=lambda p: int(CASE_PATTERN.match(p.name)["n"]))


def case_folders(root: Path) -> dict[str, Path]:
    """Case id -> case folder, TRAINING cases first, each split in numeric order."""
    training = _case_folders_of(root / "TRAINING")
    names = {p.name for p in training}
    folders = {p.name: p for p in training}
    for p in _case_folders_of(root / "TESTING"):
        folders[TEST_PREFIX + p.name if p.name in names else p.name] = p
    return folders


def case_id_of(root: Path, split: str, name: str) -> str:
    """The id of the case folder ``ROOT/<split>/<name>`` (see the module docstring)."""
    return TEST_PREFIX + name if split == "TESTING" and (root / "TRAINING" / name).is_dir() else name


def case_folder(root: Path, case_id: str) -> Path:
    """The folder of a case id (whether or not it exists)."""
    if case_id.startswith(TEST_PREFIX) and CASE_PATTERN.match(case_id[len(TEST_PREFIX) :]):
        return root / "TESTING" / case_id[len(TEST_PREFIX) :]
    training = root / "TRAINING" / case_id
    testing = root / "TESTING" / case_id
    return testing if not training.is_dir() and testing.is_dir() else training


def is_testing(root: Path, case_id: str) -> bool:
    return case_folder(root, case_id).parent.name == "TESTING"


def training_case_ids(root: Path) -> list[str]:
    return [p.name for p in _case_folders_of(root / "TRAINING")]


def tag_of(modality: str) -> str:
    if modality not in ISLES18_MODALITIES:
        known = ", ".join(sorted(ISLES18_MODALITIES))
        raise DataError(None, f"unknown modality '{modality}' for the ISLES'18 layout", f"use one of: {known}")
    return ISLES18_MODALITIES[modality]


def modality_folders(case_dir: Path) -> dict[str, list[Path]]:
    """Modality tag -> the SMIR.Brain.XX.O.<tag>.<id> folders of a case."""
    found: dict[str, list[Path]] = {}
    if folder_problem(case_dir) is None and case_dir.is_dir():  # else structure_problems reports it
        for p in sorted(case_dir.iterdir()):
            match = FOLDER_PATTERN.match(p.name)
            if match and (p.is_dir() or p.is_symlink()):  # a broken link is found, and reported by find_file
                found.setdefault(match["tag"], []).append(p)
    return found


def find_file(case_dir: Path, tag: str, what: str) -> Path:
    """The image of one modality tag. A missing folder or file gives the path looked for (which does not
    exist, as for ISLES'24: the checks report it); two folders or two files for one tag raise DataError."""
    folders = modality_folders(case_dir).get(tag, [])
    if not folders:
        return case_dir / f"{PREFIX}{tag}.*" / f"{PREFIX}{tag}.*.nii"
    if len(folders) > 1:
        names = ", ".join(p.name for p in folders)
        raise DataError(case_dir, f"holds {len(folders)} {PREFIX}{tag}.<id> folders for {what} ({names})", "keep one")
    folder = folders[0]
    err = folder_problem(folder, f"the folder of {what}")
    if err is not None:
        raise err
    # A broken link named like an image is kept: the reader reports it (a loop, a dangling link).
    files = sorted(
        p for p in folder.iterdir() if (p.is_file() or p.is_symlink()) and (p.name.endswith(".nii") or p.name.endswith(".nii.gz"))
    )
    if len(files) > 1:
        names = ", ".join(p.name for p in files)
        raise DataError(folder, f"holds {len(files)} image files for {what} ({names})", "keep one .nii file per modality folder")
    return files[0] if files else folder / f"{folder.name}.nii"


def modality_path(root: Path, case_id: str, modality: str) -> Path:
    return find_file(case_folder(root, case_id), tag_of(modality), f"'{modality}'")


def label_path(root: Path, case_id: str) -> Path:
    return find_file(case_folder(root, case_id), LABEL_TAG, "the lesion mask")


def structure_problems(root: Path, case_id: str, modalities: list[str], with_label: bool) -> list[DataError]:
    """What makes a case folder unusable before any file is opened: it is missing or unreachable (a symlink
    loop, a dangling symlink, no permission), holds no modality
    folders, lacks the folder of a wanted modality (or, in TRAINING, of the lesion mask OT), or holds
    two folders or two files for one modality."""
    case_dir = case_folder(root, case_id)
    err = folder_problem(case_dir, "case folder")
    if err is not None:
        return [err]
    if not case_dir.is_dir():
        return [DataError(case_dir, "case folder does not exist", "check the case id and the data root")]
    folders = modality_folders(case_dir)
    if not folders:
        return [
            DataError(
                case_dir, f"holds no modality folders ({PREFIX}<MOD>.<id>)", "restore the case's files or remove the folder"
            )
        ]
    wanted: list[tuple[str, str | None]] = [(tag_of(m), m) for m in modalities]
    if with_label and case_dir.parent.name == "TRAINING":
        wanted.append((LABEL_TAG, None))
    problems: list[DataError] = []
    for tag, modality in wanted:
        what = "the lesion mask" if modality is None else f"'{modality}'"
        if tag not in folders:
            fix = "restore it" if modality is None else f"restore it or drop {modality} from data.modalities"
            problems.append(DataError(case_dir, f"has no {PREFIX}{tag}.<id> folder for {what}", fix))
            continue
        try:
            find_file(case_dir, tag, what)
        except DataError as err:
            problems.append(err)
    return problems


def case_folder_input(path: Path) -> tuple[Path, list[str] | None] | None:
    """(root, ids) for ``ROOT/TRAINING/case_N``, ``ROOT/TESTING/case_N`` (one case) or ``ROOT/TRAINING``,
    ``ROOT/TESTING`` (every case of that split); None for anything else."""
    if CASE_PATTERN.match(path.name) and path.parent.name in SPLITS:
        root = path.parent.parent
        return root, [case_id_of(root, path.parent.name, path.name)]
    if path.name in SPLITS and path.is_dir():
        root = path.parent
        ids = [case_id_of(root, path.name, p.name) for p in _case_folders_of(path)]
        if not ids:
            raise DataError(path, "holds no case_N folders", "check the data root")
        return root, ids
    return None

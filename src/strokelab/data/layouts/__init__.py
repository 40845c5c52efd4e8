"""Where the files of a case live on disk: the ISLES 2024 BIDS layout and the ISLES 2018 layout.

One API for both, the layout detected from the data root's contents:

* ISLES'24 (:mod:`.isles24`; also the built-in phantom's default): ``ROOT/derivatives/sub-strokeXXXX/...``,
  case ids ``sub-strokeXXXX``;
* ISLES'18 (:mod:`.isles18`; the phantom with ``layout=isles18``): ``ROOT/TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<id>/``
  and ``ROOT/TESTING/case_N/...``, case ids ``case_N`` (``test_case_N`` for a TESTING folder whose name a
  TRAINING folder also has). Modalities: CT -> ``ncct``, CT_4DPWI -> ``ctp``, CT_CBF/CBV/MTT/Tmax ->
  ``cbf``/``cbv``/``mtt``/``tmax``, MR_DWI -> ``dwi``, OT -> the label.

A root holding ``derivatives/`` is ISLES'24; one holding ``TRAINING/`` and/or ``TESTING/`` is ISLES'18.
A case may be given as the data root (every case), as one case folder (``ROOT/derivatives/sub-strokeXXXX``,
``ROOT/TRAINING/case_N``, ``ROOT/TESTING/case_N``) or, for ISLES'18, as one split (``ROOT/TESTING``).

``modality_path`` and ``label_path`` give the path of a file whether or not it exists (the checks report a
missing one); for ISLES'18 the path is found by globbing the modality folder, and two folders or two files
for one modality raise :class:`DataError`. ``discover`` also refuses, for ISLES'18, a case folder without
modality folders and a missing modality folder (or, in TRAINING, a missing OT folder): all such problems
of the data set at once. TESTING cases have no lesion mask: their label path does not exist. On both layouts,
an entry named like a case folder that is not a usable folder (a symlink loop, a dangling symlink, a file,
a folder without read permission) is refused in one line naming it, never skipped.

Some inputs are not files but derived from one (``DERIVED_INPUTS``: Wang et al.'s temporal MIP and perfusion
window of the CTP); :func:`source_modalities` turns a list of input names into the files to read, and
``discover`` accepts either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strokelab.data.layouts import isles18, isles24
from strokelab.data.layouts.isles18 import ISLES18_MODALITIES
from strokelab.data.layouts.isles24 import CASE_PATTERN, ISLES24_FILES, LABEL_SUFFIXES
from strokelab.errors import DataError, DataSetError
from strokelab.io import folder_problem, path_problem

LAYOUTS = ("isles24", "isles18")
# Modalities stored as 4D series (time last); everything else must be 3D. ISLES'18's CT_4DPWI is "ctp".
TIME_SERIES = frozenset({"ctp"})
# Inputs computed from a modality file instead of read (input name -> the modality it is computed from):
# Wang et al. 2020's temporal MIP (Eq. 1) and perfusion-window series (Eq. 2-3), both from the raw CTP.
DERIVED_INPUTS: dict[str, str] = {"ctp_mip": "ctp", "ctp_window": "ctp"}
# Platform modality names each layout holds (besides the label).
LAYOUT_MODALITIES: dict[str, tuple[str, ...]] = {"isles24": tuple(ISLES24_FILES), "isles18": tuple(ISLES18_MODALITIES)}
_FOLD_TEMPLATES = {"isles24": isles24.FOLD_FILE_TEMPLATE, "isles18": isles18.FOLD_FILE_TEMPLATE}

__all__ = [
    "CASE_PATTERN",
    "DERIVED_INPUTS",
    "FOLD_FILE_GLOB",
    "FOLD_FILE_NAME",
    "ISLES18_MODALITIES",
    "ISLES24_FILES",
    "LABEL_SUFFIXES",
    "LAYOUTS",
    "LAYOUT_MODALITIES",
    "TIME_SERIES",
    "Case",
    "case_ids",
    "detect_layout",
    "discover",
    "fold_file_name",
    "label_path",
    "layout_of",
    "modality_path",
    "resolve_input",
    "source_modalities",
    "training_case_ids",
]


def source_modalities(names) -> list[str]:
    """The modality files to read for a list of input (or target) names: a derived input
    (``DERIVED_INPUTS``) becomes its source, order kept, duplicates dropped; e.g. ``[cbf, cbv, mtt, tmax,
    ctp_mip, ctp_window]`` -> ``[cbf, cbv, mtt, tmax, ctp]``."""
    return list(dict.fromkeys(DERIVED_INPUTS.get(str(n), str(n)) for n in names))


def fold_file_name(n_folds: int = 5, layout: str = "isles24") -> str:
    """The fold file's name for ``n_folds`` folds: ISLES'24's own naming (the release ships the 5-fold
    NIHSS-stratified one), ``isles18_multimodal_{n}fold_volumestratified.json`` for ISLES'18."""
    if layout not in _FOLD_TEMPLATES:
        raise DataError(None, f"unknown layout '{layout}'", f"use one of: {', '.join(LAYOUTS)}")
    return _FOLD_TEMPLATES[layout].format(n=int(n_folds))


FOLD_FILE_NAME = fold_file_name(5)
# Matches the fold files of both layouts.
FOLD_FILE_GLOB = "isles*_multimodal_*fold_*stratified.json"


@dataclass
class Case:
    """One case: its id, a path per modality, the label path and the clinical table row."""

    id: str
    root: Path
    images: dict[str, Path]
    label: Path | None
    clinical: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None
    layout: str = "isles24"

    @property
    def centre(self) -> str | None:
        value = self.clinical.get("centre")
        return None if value is None else str(value)


def detect_layout(root: str | Path) -> str:
    """``"isles24"`` for a root holding ``derivatives/``, ``"isles18"`` for one holding ``TRAINING/`` and/or
    ``TESTING/``; DataError for neither or both."""
    root = Path(root)
    has24, has18 = isles24.is_root(root), isles18.is_root(root)
    if has24 and has18:
        raise DataError(
            root,
            "holds both derivatives/ (ISLES'24) and TRAINING/ or TESTING/ (ISLES'18)",
            "keep one data set per data root",
        )
    if has24:
        return "isles24"
    if has18:
        return "isles18"
    raise DataError(
        root,
        "has no derivatives/ (ISLES'24) nor TRAINING/ or TESTING/ (ISLES'18) folder",
        "point data root to an ISLES'24 or ISLES'18 data set",
    )


def layout_of(root: str | Path) -> str:
    """The layout of ``root`` without raising: ISLES'18 where it clearly is one, else ISLES'24."""
    root = Path(root)
    return "isles18" if isles18.is_root(root) and not isles24.is_root(root) else "isles24"


def modality_path(root: Path, case_id: str, modality: str) -> Path:
    """Path of one modality of one case (whether or not it exists)."""
    module = isles18 if layout_of(root) == "isles18" else isles24
    return module.modality_path(Path(root), case_id, modality)


def label_path(root: Path, case_id: str) -> Path:
    """Path of the follow-up lesion mask: for ISLES'24 the first naming that exists, else the canonical one;
    for ISLES'18 the OT file (a TESTING case's does not exist)."""
    module = isles18 if layout_of(root) == "isles18" else isles24
    return module.label_path(Path(root), case_id)


def resolve_input(path: str | Path) -> tuple[Path, list[str] | None]:
    """Turn a data root or a single case folder into (data root, case ids or None for all)."""
    path = Path(path).expanduser()
    unreachable = path_problem(path, "input")
    if unreachable is not None:
        raise unreachable
    if not path.exists():
        raise DataError(
            path,
            "does not exist",
            "give an ISLES'24 or ISLES'18 data root, or a case folder (derivatives/sub-strokeXXXX, TRAINING/case_N)",
        )
    for module in (isles24, isles18):
        found = module.case_folder_input(path)
        if found is not None:
            return found
    if isles24.is_root(path) or isles18.is_root(path):
        detect_layout(path)  # refuses a root that holds both
        return path, None
    raise DataError(
        path,
        "is neither an ISLES'24 data root (no derivatives/ folder), an ISLES'18 data root (no TRAINING/ or TESTING/) "
        "nor a case folder",
        "point to the folder that holds derivatives/ or TRAINING/, or to one case folder in them",
    )


def case_ids(root: Path) -> list[str]:
    """Ids of all cases: sorted ``sub-strokeXXXX`` under ROOT/derivatives (ISLES'24); ``case_N`` of TRAINING,
    then of TESTING, each in numeric order (ISLES'18)."""
    root = Path(root)
    if detect_layout(root) == "isles24":
        return isles24.case_ids(root)
    ids = list(isles18.case_folders(root))
    if not ids:
        raise DataError(root, "holds no case_N folders in TRAINING/ or TESTING/", "check the data root")
    return ids


def training_case_ids(root: Path) -> list[str]:
    """The cases that go into cross-validation folds: every case (ISLES'24), the TRAINING cases (ISLES'18)."""
    root = Path(root)
    if detect_layout(root) == "isles24":
        return isles24.case_ids(root)
    ids = isles18.training_case_ids(root)
    if not ids:
        raise DataError(root / "TRAINING", "holds no case_N folders", "folds need the labelled TRAINING cases")
    return ids


def discover(root: str | Path, modalities: list[str], with_label: bool = True, ids: list[str] | None = None) -> list[Case]:
    """Build a Case per case id with the expected paths; files are not opened here (see checks).
    ``modalities`` may name derived inputs (``ctp_mip``): the case then holds their source (``ctp``).
    A case folder that is a symlink loop, a dangling symlink, a file or cannot be read is refused (all such
    problems at once), on both layouts; files inside are checked when read (:mod:`strokelab.io`)."""
    from strokelab.data.clinical import read_clinical

    root = Path(root)
    modalities = source_modalities(modalities)
    ids = case_ids(root) if ids is None else ids
    layout = layout_of(root)
    if layout == "isles18":
        for m in modalities:
            isles18.tag_of(m)  # an unknown modality is one error, not one per case
        problems = [err for cid in ids for err in isles18.structure_problems(root, cid, list(modalities), with_label)]
    else:  # a case folder that cannot be read would otherwise look like a case whose files are all missing
        folders = [isles24.case_folder(root, cid) for cid in ids]
        problems = [err for folder in folders if (err := folder_problem(folder, "case folder")) is not None]
    if problems:
        raise problems[0] if len(problems) == 1 else DataSetError(problems)
    return [
        Case(
            id=cid,
            root=root,
            images={m: modality_path(root, cid, m) for m in modalities},
            label=label_path(root, cid) if with_label else None,
            clinical=read_clinical(root, cid),
            layout=layout,
        )
        for cid in ids
    ]

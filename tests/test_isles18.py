"""The ISLES'18 layout: discovery, modality names, single-case input, TESTING cases, errors and folds.

Trees are written by hand in tmp_path: tiny slabs (16x16x3 voxels, 6 CTP frames), uncompressed .nii files
in ``ROOT/{TRAINING,TESTING}/case_N/SMIR.Brain.XX.O.<MOD>.<id>/SMIR.Brain.XX.O.<MOD>.<id>.nii``.
"""

from __future__ import annotations

import json
import shutil
from itertools import count
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokelab.data.check import load_case
from strokelab.data.folds import ensure_fold_file, read_fold_file
from strokelab.data.layouts import (
    FOLD_FILE_GLOB,
    TIME_SERIES,
    case_ids,
    detect_layout,
    discover,
    fold_file_name,
    label_path,
    modality_path,
    resolve_input,
)
from strokelab.errors import DataError, DataSetError

SHAPE = (16, 16, 3)
SPACING = (1.5, 1.5, 8.0)
ALL = ["ncct", "ctp", "cbf", "cbv", "mtt", "tmax", "dwi"]
TAGS = {"ncct": "CT", "ctp": "CT_4DPWI", "cbf": "CT_CBF", "cbv": "CT_CBV", "mtt": "CT_MTT", "tmax": "CT_Tmax", "dwi": "MR_DWI"}
_IDS = count(345561)


def _save(folder: Path, tag: str, data: np.ndarray) -> Path:
    name = f"SMIR.Brain.XX.O.{tag}.{next(_IDS)}"
    (folder / name).mkdir(parents=True)
    affine = np.diag([*SPACING, 1.0])
    path = folder / name / f"{name}.nii"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_case(root: Path, split: str, n: int, lesion_voxels: int = 4, ctp_3d: bool = False) -> Path:
    """One ISLES'18 case; TESTING cases get no MR_DWI and no OT. ``lesion_voxels`` sets the OT volume."""
    folder = root / split / f"case_{n}"
    rng = np.random.default_rng(n)
    for modality, tag in TAGS.items():
        if split == "TESTING" and modality == "dwi":
            continue
        if modality == "ctp":
            data = rng.normal(40, 5, SHAPE if ctp_3d else (*SHAPE, 6)).astype(np.int16)
        else:
            data = rng.uniform(1, 10, SHAPE).astype(np.float32)
        _save(folder, tag, data)
    if split == "TRAINING":
        mask = np.zeros(SHAPE, np.uint8)
        mask.flat[:lesion_voxels] = 1
        _save(folder, "OT", mask)
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    """TRAINING case_1, case_2, case_10 and TESTING case_1 (a clash) and case_11."""
    root = tmp_path / "ISLES2018"
    for n in (1, 2, 10):
        write_case(root, "TRAINING", n)
    for n in (1, 11):
        write_case(root, "TESTING", n)
    return root


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


# ---------------------------------------------------------------------------------------------- discovery
def test_layout_is_detected_and_cases_are_numbered_and_unique(root):
    assert detect_layout(root) == "isles18"
    # Numeric order, TRAINING first; TESTING/case_1 clashes with TRAINING/case_1 and is test_case_1.
    assert case_ids(root) == ["case_1", "case_2", "case_10", "test_case_1", "case_11"]
    assert modality_path(root, "test_case_1", "ncct").parents[1] == root / "TESTING" / "case_1"
    assert modality_path(root, "case_1", "ncct").parents[1] == root / "TRAINING" / "case_1"
    assert modality_path(root, "case_11", "ncct").parents[1] == root / "TESTING" / "case_11"


def test_discover_maps_every_modality_and_the_label(root):
    cases = discover(root, ALL, ids=["case_2"])
    case = cases[0]
    assert case.layout == "isles18" and case.clinical == {} and case.root == root
    for modality, tag in TAGS.items():
        path = case.images[modality]
        assert path.is_file() and path.suffix == ".nii", modality
        assert path.name.startswith(f"SMIR.Brain.XX.O.{tag}.") and path.parent.name == path.name[: -len(".nii")], modality
    assert case.label.is_file() and case.label.name.startswith("SMIR.Brain.XX.O.OT.")
    assert label_path(root, "case_2") == case.label
    assert "ctp" in TIME_SERIES  # CT_4DPWI is served as the 4D series the checks expect
    assert load_case(case).images["ctp"].ndim == 4


def test_testing_cases_have_no_label(root):
    cases = {c.id: c for c in discover(root, ["cbf", "tmax"])}
    assert len(cases) == 5
    for cid in ("test_case_1", "case_11"):
        assert not cases[cid].label.exists()
        assert cases[cid].images["tmax"].is_file()
    assert all(cases[cid].label.is_file() for cid in ("case_1", "case_2", "case_10"))
    with pytest.raises(DataError) as err:
        discover(root, ["dwi"], ids=["case_11"])
    _one_line(err, str(root / "TESTING" / "case_11"), "MR_DWI")


def test_resolve_input_accepts_root_case_folders_and_a_split(root):
    assert resolve_input(root) == (root, None)
    assert resolve_input(root / "TRAINING" / "case_10") == (root, ["case_10"])
    assert resolve_input(root / "TESTING" / "case_1") == (root, ["test_case_1"])
    assert resolve_input(root / "TESTING" / "case_11") == (root, ["case_11"])
    assert resolve_input(root / "TESTING") == (root, ["test_case_1", "case_11"])
    with pytest.raises(DataError, match="neither") as err:
        resolve_input(root / "TRAINING" / "case_1" / next((root / "TRAINING" / "case_1").iterdir()).name)
    assert "\n" not in str(err.value)


def test_a_3d_4dpwi_is_refused_by_the_checks(tmp_path):
    write_case(tmp_path, "TRAINING", 1, ctp_3d=True)
    case = discover(tmp_path, ["ctp", "cbf"])[0]
    with pytest.raises(DataError, match="expected a 4D series") as err:
        load_case(case)
    _one_line(err, "CT_4DPWI")


# ---------------------------------------------------------------------------------------------- errors
def _drop_folder(case: Path, tag: str) -> None:
    shutil.rmtree(next(p for p in case.iterdir() if p.name.startswith(f"SMIR.Brain.XX.O.{tag}.")))


def _second_file(case: Path, tag: str) -> None:
    folder = next(p for p in case.iterdir() if p.name.startswith(f"SMIR.Brain.XX.O.{tag}."))
    shutil.copy(next(folder.iterdir()), folder / "copy.nii")


def _second_folder(case: Path, tag: str) -> None:
    folder = next(p for p in case.iterdir() if p.name.startswith(f"SMIR.Brain.XX.O.{tag}."))
    shutil.copytree(folder, case / f"SMIR.Brain.XX.O.{tag}.999999")


def _empty(case: Path, tag: str) -> None:
    for sub in case.iterdir():
        shutil.rmtree(sub)


@pytest.mark.parametrize(
    "break_it, tag, where, message",
    [
        (_drop_folder, "CT_Tmax", "case", "has no SMIR.Brain.XX.O.CT_Tmax.<id> folder for 'tmax'"),
        (_drop_folder, "OT", "case", "has no SMIR.Brain.XX.O.OT.<id> folder for the lesion mask"),
        (_second_file, "CT_CBF", "folder", "holds 2 image files for 'cbf'"),
        (_second_folder, "CT_CBV", "case", "holds 2 SMIR.Brain.XX.O.CT_CBV.<id> folders for 'cbv'"),
        (_empty, "", "case", "holds no modality folders"),
    ],
    ids=["missing-folder", "missing-label", "two-files", "two-folders", "no-modalities"],
)
def test_broken_case_folders_give_one_line_naming_the_path(root, break_it, tag, where, message):
    case = root / "TRAINING" / "case_2"
    break_it(case, tag)
    with pytest.raises(DataError) as err:
        discover(root, ALL, ids=["case_1", "case_2", "case_10"])
    named = case if where == "case" else next(p for p in case.iterdir() if p.name.startswith(f"SMIR.Brain.XX.O.{tag}."))
    _one_line(err, f"{named}: ", message)


def test_every_broken_case_is_reported_at_once(root):
    _drop_folder(root / "TRAINING" / "case_1", "CT_MTT")
    _drop_folder(root / "TRAINING" / "case_10", "CT_CBF")
    with pytest.raises(DataSetError) as err:
        discover(root, ["cbf", "mtt"])
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert str(root / "TRAINING" / "case_1") in lines[0] and "CT_MTT" in lines[0]
    assert str(root / "TRAINING" / "case_10") in lines[1] and "CT_CBF" in lines[1]


def test_unknown_modality_and_ambiguous_or_foreign_roots(root, tmp_path):
    with pytest.raises(DataError) as err:
        discover(root, ["cta"])
    _one_line(err, "unknown modality 'cta' for the ISLES'18 layout", "tmax")
    (root / "derivatives").mkdir()
    with pytest.raises(DataError) as err:
        case_ids(root)
    _one_line(err, str(root), "holds both")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError) as err:
        case_ids(tmp_path / "other")
    _one_line(err, "TRAINING/")


# ---------------------------------------------------------------------------------------------- folds
def _volume_root(tmp_path: Path) -> Path:
    """Ten TRAINING cases with lesions of 2, 4, ..., 20 voxels, and two TESTING cases."""
    root = tmp_path / "folds"
    for n in range(1, 11):
        write_case(root, "TRAINING", n, lesion_voxels=2 * n)
    for n in (11, 12):
        write_case(root, "TESTING", n)
    return root


def test_folds_are_volume_stratified_deterministic_and_training_only(tmp_path):
    root = _volume_root(tmp_path)
    path = ensure_fold_file(root)
    assert path == root / fold_file_name(5, "isles18") and path.match(FOLD_FILE_GLOB)
    text = path.read_text()
    entries = json.loads(text)["training"]
    assert {e["caseID"] for e in entries} == {f"case_{n}" for n in range(1, 11)}  # no TESTING case
    assert {"caseID", "fold", "NCCT", "CTP", "CBF", "CBV", "MTT", "TMAX", "DWI", "label"} <= set(entries[0])
    assert all((root / e["label"]).is_file() and (root / e["CTP"]).is_file() for e in entries)
    folds = read_fold_file(path, root)
    assert sorted(np.bincount(list(folds.values()))) == [2, 2, 2, 2, 2]
    # Lesion volumes 2..20 voxels: each fold gets one of the five smallest and one of the five largest.
    for fold in range(5):
        sizes = sorted(int(c.split("_")[1]) for c, f in folds.items() if f == fold)
        assert sizes[0] <= 5 < sizes[1]
    path.unlink()
    assert ensure_fold_file(root).read_text() == text  # same data, same seed: the same file
    assert ensure_fold_file(root, n_folds=2).name == "isles18_multimodal_2fold_volumestratified.json"


def test_fold_file_checks_on_isles18(tmp_path):
    root = _volume_root(tmp_path)
    stale = root / "stale.json"
    stale.write_text(json.dumps({"training": [{"caseID": "case_99", "fold": 0}]}))
    with pytest.raises(DataError, match="case_99") as err:
        read_fold_file(stale, root)
    _one_line(err, str(stale), "TRAINING/, TESTING/")
    few = tmp_path / "few"
    for n in (1, 2):
        write_case(few, "TRAINING", n)
    write_case(few, "TESTING", 3)
    with pytest.raises(DataError, match="2 training cases, fewer than 5 folds"):
        ensure_fold_file(few)

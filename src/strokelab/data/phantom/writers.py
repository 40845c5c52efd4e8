"""Writing a phantom data set in a layout: ISLES'24 BIDS (the default) or ISLES'18.

ISLES'24 (XXXX = 0001, 0002, ...)::

    ROOT/derivatives/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_space-ncct_{cta,ctp}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-01/perfusion-maps/sub-strokeXXXX_ses-01_space-ncct_{cbf,cbv,mtt,tmax}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02[_space-ncct]_lesion-msk.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02_space-ncct_{dwi,adc}.nii.gz
    ROOT/raw_data/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_ncct.nii.gz
    ROOT/phenotype/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_demographic_baseline.csv
    ROOT/phenotype/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02_outcome.csv

Every third case (0003, 0006, ...) uses the mask naming without the space tag, as in the real release.

ISLES'18 (N = 1, 2, ...; the ``n_testing`` TESTING cases are numbered on after the TRAINING ones)::

    ROOT/TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<id>/SMIR.Brain.XX.O.<MOD>.<id>.nii
        MOD: CT (the NCCT), CT_4DPWI (the CTP), CT_CBF, CT_CBV, CT_MTT, CT_Tmax, MR_DWI, OT (the lesion mask)
    ROOT/TESTING/case_N/...   (the same without MR_DWI and OT)

uncompressed, ``<id> = 100000 + 10 * N + j`` (j: the position of MOD in the list above; unique per file).
No clinical tables (the release has none). Both layouts also get::

    ROOT/phantom_truth/<case>/<case>_{cbf,cbv,mtt,tmax,delay,tissue,territory,core,penumbra}.nii.gz
    ROOT/phantom_truth/cases.csv
    ROOT/dataset_description.json        (written last: its presence marks a complete data set)
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

from strokelab.data.layouts.isles18 import ISLES18_MODALITIES, LABEL_TAG
from strokelab.data.phantom.config import DATASET_NAME, PhantomConfig
from strokelab.data.phantom.kinetics import MAP_NAMES
from strokelab.data.phantom.lesion import DEMOGRAPHIC_COLUMNS, OUTCOME_COLUMNS
from strokelab.data.phantom.simulate import TRUTH_NAMES, _simulate_case
from strokelab.errors import DataError
from strokelab.io import atomic_write_text, save_nifti

# generate_case key -> ISLES'18 modality tag (the reader's table), in the order that numbers the file ids.
ISLES18_TAGS = {**ISLES18_MODALITIES, "lesion-msk": LABEL_TAG}
_ISLES18_TESTING_KEYS = ("ncct", "ctp", "cbf", "cbv", "mtt", "tmax")
_ISLES18_CASE = re.compile(r"^case_\d+$")
_ISLES24_CASE = re.compile(r"^sub-stroke\d+$")


def case_id(case_index: int, config: PhantomConfig | None = None) -> str:
    """Id of the case with 0-based index ``case_index``: 0 -> ``sub-stroke0001`` (ISLES'24, the default),
    0 -> ``case_1`` (ISLES'18)."""
    if config is not None and config.layout == "isles18":
        return f"case_{case_index + 1}"
    return f"sub-stroke{case_index + 1:04d}"


def is_testing(case_index: int, config: PhantomConfig | None) -> bool:
    """Whether a case goes under ISLES'18's TESTING/ (the ``n_testing`` after the ``n_cases`` TRAINING ones)."""
    return config is not None and config.layout == "isles18" and case_index >= config.n_cases


def case_files(case_index: int, config: PhantomConfig | None = None) -> dict[str, str]:
    """Relative path (POSIX, under the data root) of every image of a case, keyed like ``generate_case``.

    ISLES'24 by default; with an ISLES'18 ``config`` the ISLES'18 files (no CTA, no ADC; TESTING cases
    have no DWI and no mask)."""
    cid = case_id(case_index, config)
    truth = {f"truth_{t}": f"phantom_truth/{cid}/{cid}_{t}.nii.gz" for t in TRUTH_NAMES}
    if config is not None and config.layout == "isles18":
        testing = is_testing(case_index, config)
        folder = f"{'TESTING' if testing else 'TRAINING'}/{cid}"
        number = case_index + 1
        files = {}
        for j, (key, tag) in enumerate(ISLES18_TAGS.items()):
            if testing and key not in _ISLES18_TESTING_KEYS:
                continue
            name = f"SMIR.Brain.XX.O.{tag}.{100000 + 10 * number + j}"
            files[key] = f"{folder}/{name}/{name}.nii"
        return {**files, **truth}
    s1, s2 = f"derivatives/{cid}/ses-01", f"derivatives/{cid}/ses-02"
    # The real release uses two namings for the mask; every third case gets the one without space tag.
    mask = f"{cid}_ses-02_lesion-msk.nii.gz" if (case_index + 1) % 3 == 0 else f"{cid}_ses-02_space-ncct_lesion-msk.nii.gz"
    files = {
        "ncct": f"raw_data/{cid}/ses-01/{cid}_ses-01_ncct.nii.gz",
        "cta": f"{s1}/{cid}_ses-01_space-ncct_cta.nii.gz",
        "ctp": f"{s1}/{cid}_ses-01_space-ncct_ctp.nii.gz",
        **{m: f"{s1}/perfusion-maps/{cid}_ses-01_space-ncct_{m}.nii.gz" for m in MAP_NAMES},
        "lesion-msk": f"{s2}/{mask}",
        "dwi": f"{s2}/{cid}_ses-02_space-ncct_dwi.nii.gz",
        "adc": f"{s2}/{cid}_ses-02_space-ncct_adc.nii.gz",
    }
    files.update(truth)
    return files


def clinical_files(case_index: int, config: PhantomConfig | None = None) -> dict[str, str]:
    """Relative paths of the two clinical tables of a case (ISLES'24; ISLES'18 has none: empty)."""
    if config is not None and config.layout == "isles18":
        return {}
    cid = case_id(case_index)
    return {
        "demographic_baseline": f"phenotype/{cid}/ses-01/{cid}_ses-01_demographic_baseline.csv",
        "outcome": f"phenotype/{cid}/ses-02/{cid}_ses-02_outcome.csv",
    }


def _csv_text(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buf.getvalue()


def _prepare_root(root: Path, config: PhantomConfig) -> None:
    """Check that ``root`` may be (over)written, then clear the completion marker and stale outputs
    (fold files, cases beyond the config's, and the other layout's folders)."""
    if root.exists() and not root.is_dir():
        raise DataError(root, "exists and is not a folder", "give a folder for the phantom data set")
    description = root / "dataset_description.json"
    if root.exists() and any(root.iterdir()):
        is_phantom = (root / "phantom_truth").is_dir()
        if description.exists():
            try:
                is_phantom = json.loads(description.read_text()).get("Name") == DATASET_NAME
            except (OSError, ValueError, AttributeError):
                is_phantom = False
        if not is_phantom:
            raise DataError(
                root,
                "is not empty and holds no strokelab phantom",
                "give an empty or new folder; a real data set is never overwritten",
            )
    root.mkdir(parents=True, exist_ok=True)
    description.unlink(missing_ok=True)  # the data set is incomplete from now until the end
    (root / "phantom_truth").mkdir(exist_ok=True)  # marks the folder as a phantom, even if interrupted
    from strokelab.data.layouts import FOLD_FILE_GLOB  # fold files of an earlier run would be stale

    for fold_file in root.glob(FOLD_FILE_GLOB):
        fold_file.unlink()
    wanted = {case_id(i, config) for i in range(config.n_total)}
    if config.layout == "isles18":
        for top in ("derivatives", "raw_data", "phenotype"):  # an earlier ISLES'24 phantom
            if (root / top).is_dir():
                shutil.rmtree(root / top)
        split_of = {case_id(i, config): ("TESTING" if is_testing(i, config) else "TRAINING") for i in range(config.n_total)}
        for split in ("TRAINING", "TESTING"):
            folder = root / split
            if folder.is_dir():
                for sub in folder.iterdir():
                    if sub.is_dir() and _ISLES18_CASE.match(sub.name) and split_of.get(sub.name) != split:
                        shutil.rmtree(sub)
        pattern = _ISLES18_CASE
    else:
        for top in ("TRAINING", "TESTING"):  # an earlier ISLES'18 phantom
            if (root / top).is_dir():
                shutil.rmtree(root / top)
        for top in ("derivatives", "raw_data", "phenotype"):
            folder = root / top
            if folder.is_dir():
                for sub in folder.iterdir():
                    if sub.is_dir() and _ISLES24_CASE.match(sub.name) and sub.name not in wanted:
                        shutil.rmtree(sub)
        pattern = _ISLES24_CASE
    for sub in (root / "phantom_truth").iterdir():
        if sub.is_dir() and (_ISLES18_CASE.match(sub.name) or _ISLES24_CASE.match(sub.name)):
            if sub.name not in wanted or not pattern.match(sub.name):
                shutil.rmtree(sub)


def _write_case(root: str, case_index: int, config: PhantomConfig) -> dict[str, Any]:
    """Simulate and write one case (runs in a worker process); returns its row of cases.csv."""
    root_path = Path(root)
    case = _simulate_case(case_index, config)
    files = case_files(case_index, config)
    if config.layout == "isles18":
        # Remove modality folders that an earlier run (other ids, or TRAINING vs TESTING) left behind.
        folder = root_path / Path(files["ncct"]).parent.parent
        keep = {Path(rel).parent.name for key, rel in files.items() if not key.startswith("truth_")}
        if folder.is_dir():
            for sub in folder.iterdir():
                if sub.name not in keep:
                    shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
    else:
        # Remove the other mask naming in case an earlier run used it for this id.
        for stale in root_path.glob(f"derivatives/{case_id(case_index)}/ses-02/*lesion-msk.nii.gz"):
            if stale.relative_to(root_path).as_posix() != files["lesion-msk"]:
                stale.unlink()
    for key, img in case.images.items():
        if key in files:
            save_nifti(img, root_path / files[key])
    tables = clinical_files(case_index, config)
    if tables:
        atomic_write_text(root_path / tables["demographic_baseline"], _csv_text(DEMOGRAPHIC_COLUMNS, [case.demographic]))
        atomic_write_text(root_path / tables["outcome"], _csv_text(OUTCOME_COLUMNS, [case.outcome]))
    return case.truth

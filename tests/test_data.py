"""The data layer: layout reader, clinical tables, folds, checks, cached preprocessing, native geometry."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import MAPS, REAL_ISLES24_MASK

from strokelab.data.check import check_case, load_case
from strokelab.data.folds import ensure_fold_file, read_fold_file, stratified_folds
from strokelab.data.layouts import FOLD_FILE_NAME, discover, resolve_input
from strokelab.data.preprocess import Preprocessing, load_or_preprocess, preprocess_loaded, stack_inputs, to_native
from strokelab.errors import ConfigError, DataError
from strokelab.inference import mask_image


def test_discover_reads_layout_both_label_namings_and_clinical(tiny_root):
    cases = discover(tiny_root, list(MAPS))
    assert [c.id for c in cases] == [f"sub-stroke{i:04d}" for i in range(1, 11)]
    assert all(c.label.exists() for c in cases)
    assert cases[0].label.name == "sub-stroke0001_ses-02_lesion-msk.nii.gz"  # the naming without space-ncct
    assert cases[1].label.name == "sub-stroke0002_ses-02_space-ncct_lesion-msk.nii.gz"
    assert cases[3].images["tmax"].parent.name == "perfusion-maps"
    assert cases[3].clinical["nihss_admission"] == 6 and cases[3].centre == "C1"
    assert all(c.layout == "isles24" for c in cases)  # detected from derivatives/ (ISLES'18: tests/test_isles18.py)


def test_resolve_input_accepts_root_or_case_folder(tiny_root):
    assert resolve_input(tiny_root) == (tiny_root, None)
    assert resolve_input(tiny_root / "derivatives" / "sub-stroke0003") == (tiny_root, ["sub-stroke0003"])
    with pytest.raises(DataError, match="neither"):
        resolve_input(tiny_root / "phenotype")


def test_folds_are_nihss_stratified_deterministic_and_in_isles_format(tiny_root):
    path = ensure_fold_file(tiny_root)
    assert path.name == FOLD_FILE_NAME
    entries = json.loads(path.read_text())["training"]
    assert {"caseID", "fold", "CBF", "TMAX", "label"} <= set(entries[0])
    assert (tiny_root / entries[0]["CBF"]).exists()
    folds = read_fold_file(path, tiny_root)
    assert sorted(np.bincount(list(folds.values()))) == [2, 2, 2, 2, 2]
    # NIHSS 0..18 step 2: each fold gets one case from the lower and one from the upper half.
    nihss = {f"sub-stroke{i + 1:04d}": i * 2 for i in range(10)}
    for fold in range(5):
        scores = sorted(nihss[c] for c, f in folds.items() if f == fold)
        assert scores[0] < 10 <= scores[1]
    assert stratified_folds(nihss) == stratified_folds(nihss)


def test_fold_file_naming_missing_cases_is_refused(tiny_root):
    path = tiny_root / "folds.json"
    path.write_text(json.dumps({"training": [{"caseID": "sub-stroke0999", "fold": 0}]}))
    with pytest.raises(DataError, match="sub-stroke0999") as err:
        read_fold_file(path, tiny_root)
    assert str(path) in str(err.value)


def _case(root, cid="sub-stroke0001"):
    return discover(root, list(MAPS), ids=[cid])[0]


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda c: c.images["cbv"].unlink(), "file is missing"),
        (lambda c: c.images["mtt"].write_bytes(gzip.compress(b"\x5c\x01" * 100)[:60]), "unreadable or truncated"),
        (lambda c: nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), np.eye(4)), c.images["cbv"]), "shape"),
        (lambda c: nib.save(nib.Nifti1Image(np.zeros((32, 36, 10), np.float32), np.eye(4) * 2), c.images["cbv"]), "affine"),
        (
            lambda c: nib.save(
                nib.Nifti1Image(np.full((32, 36, 10), np.nan, np.float32), nib.load(c.images["cbf"]).affine), c.images["cbv"]
            ),
            "NaN",
        ),
        (
            lambda c: nib.save(
                nib.Nifti1Image(np.zeros((32, 36, 10, 3), np.float32), nib.load(c.images["cbf"]).affine), c.images["tmax"]
            ),
            "expected a 3D",
        ),
        (
            lambda c: nib.save(nib.Nifti1Image(np.full((32, 36, 10), 2, np.uint8), nib.load(c.images["cbf"]).affine), c.label),
            "values other than 0/1",
        ),
    ],
)
def test_bad_input_gives_one_clear_error_naming_the_file(tiny_root, break_it, message):
    case = _case(tiny_root)
    break_it(case)
    with pytest.raises(DataError, match=message) as err:
        load_case(case)
    assert "sub-stroke0001" in str(err.value) and "\n" not in str(err.value)


def test_nan_can_be_replaced_with_a_warning(tiny_root):
    case = _case(tiny_root)
    data = nib.load(case.images["cbv"]).get_fdata().astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(case.images["cbf"]).affine), case.images["cbv"])
    loaded = load_case(case, nan_policy="replace")
    assert np.isfinite(loaded.images["cbv"]).all() and "NaN" in loaded.warnings[0]


def test_almost_binary_real_masks_are_accepted(tiny_root):
    case = _case(tiny_root)
    mask = nib.load(case.label)
    nib.save(nib.Nifti1Image(mask.get_fdata() * 0.99999999977, mask.affine), case.label)
    assert load_case(case).label.sum() == (mask.get_fdata() > 0.5).sum()


def test_check_command_lists_every_problem_at_once(tiny_root):
    _case(tiny_root, "sub-stroke0002").images["cbv"].unlink()
    _case(tiny_root, "sub-stroke0005").images["tmax"].write_bytes(b"not an image")
    assert len(check_case(_case(tiny_root, "sub-stroke0002"))) == 1
    out = subprocess.run([sys.executable, "-m", "strokelab.data.check", str(tiny_root)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "sub-stroke0002" in out.stdout and "sub-stroke0005" in out.stdout and "2 with problems" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_preprocessing_resamples_crops_normalises_and_maps_back(tiny_root):
    case = _case(tiny_root)
    loaded = load_case(case)
    entry = preprocess_loaded(loaded, Preprocessing(spacing=(3.0, 3.0, 5.0), crop_margin_mm=3.0))
    image = stack_inputs(entry).numpy()
    assert image.shape[0] == 4 and image.shape[1] < 32 * 2 / 3 + 2  # 2 mm -> 3 mm, then cropped to the head
    spacing = np.linalg.norm(entry["affine"][:3, :3], axis=0)
    assert np.allclose(spacing, (3.0, 3.0, 5.0))
    fg = image[0] != 0
    assert abs(image[0][fg].mean()) < 1e-3 and abs(image[0][fg].std() - 1) < 1e-3
    label = entry["images"]["label"][0].numpy().astype(np.float32)
    back = to_native(label, entry["affine"], entry["native_shape"], entry["native_affine"]) > 0.5
    truth = loaded.label
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    assert back.shape == truth.shape and dice > 0.85


def test_cache_is_reused_and_redone_when_a_source_changes(tiny_root, tmp_path, monkeypatch):
    import strokelab.data.preprocess as prep_mod

    case, prep = _case(tiny_root), Preprocessing()
    calls = []
    real = prep_mod.preprocess_loaded
    monkeypatch.setattr(prep_mod, "preprocess_loaded", lambda *a: calls.append(1) or real(*a))
    first = load_or_preprocess(case, prep, tmp_path / "cache")
    second = load_or_preprocess(case, prep, tmp_path / "cache")
    assert len(calls) == 1 and np.array_equal(stack_inputs(first), stack_inputs(second))
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 1
    load_or_preprocess(case, Preprocessing(spacing=(3.0, 3.0, 5.0)), tmp_path / "cache")  # other config: other key
    assert len(calls) == 2
    data = nib.load(case.images["cbf"])
    nib.save(nib.Nifti1Image(data.get_fdata().astype(np.float32) * 2, data.affine), case.images["cbf"])
    load_or_preprocess(case, prep, tmp_path / "cache")
    assert len(calls) == 3


PARALLEL_PREPARE = """
import sys, torch, torch.storage
from strokelab.data.layouts import discover
from strokelab.data.preprocess import Preprocessing, prepare_cases, stack_inputs
root, cache, maps = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
cases = discover(root, maps)
# Held, as another thread of a long-lived process may hold it at the moment a worker is forked.
with torch.storage._share_memory_lock:
    entries = prepare_cases(cases, Preprocessing(), cache, workers=2)
again = prepare_cases(cases, Preprocessing(), None)
assert [len(stack_inputs(e)) for e in entries] == [len(stack_inputs(e)) for e in again]
assert all(torch.equal(stack_inputs(a), stack_inputs(b)) for a, b in zip(entries, again))
print("ok", len(entries))
"""


def test_parallel_preprocessing_does_not_hang_on_locks_held_in_the_parent(tiny_root, tmp_path):
    """The second run of a Table I multirun hung: a forked preprocessing worker inherited torch's
    storage-sharing lock, held in the parent, and waited on it to send back its tensors. Workers start
    fresh and send back nothing but problems; the entries are read from the cache in the parent."""
    result = subprocess.run(
        [sys.executable, "-c", PARALLEL_PREPARE, str(tiny_root), str(tmp_path / "cache"), ",".join(MAPS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ok", "10"]
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 10


def test_preprocessing_config_errors_are_clear():
    with pytest.raises(ConfigError, match="spacing"):
        Preprocessing.from_config({"spacing": [1, 2]})
    with pytest.raises(ConfigError, match="unknown key"):
        Preprocessing.from_config({"spacingg": [1, 2, 3]})


def test_written_mask_has_exactly_the_reference_geometry(tmp_path):
    ref = nib.load(REAL_ISLES24_MASK)
    mask = np.zeros(ref.shape, bool)
    mask[200:220, 300:310, 30:40] = True
    path = tmp_path / "pred.nii.gz"
    nib.save(mask_image(mask, ref), path)
    out = nib.load(path)
    assert out.shape == ref.shape and np.array_equal(out.affine, ref.affine)
    assert np.array_equal(out.header.get_sform(), ref.header.get_sform())
    assert np.array_equal(out.header.get_qform(), ref.header.get_qform())
    assert out.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(out.dataobj), mask.astype(np.uint8))


def test_to_native_round_trip_on_real_isles_geometry():
    ref = nib.load(REAL_ISLES24_MASK)
    truth = np.asarray(ref.dataobj) > 0.5
    prep = Preprocessing(spacing=(2.0, 2.0, 4.0), crop_to_head=False)
    from strokelab.data.check import LoadedCase
    from strokelab.data.layouts import Case

    loaded = LoadedCase(
        Case("x", REAL_ISLES24_MASK.parent, {"tmax": REAL_ISLES24_MASK}, None), {"tmax": truth.astype(np.float32)}, ref, None
    )
    entry = preprocess_loaded(loaded, Preprocessing(spacing=prep.spacing, normalize="none", crop_to_head=False))
    back = to_native(entry["images"]["tmax"][0].numpy(), entry["affine"], entry["native_shape"], entry["native_affine"]) > 0.5
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    assert back.shape == truth.shape and dice > 0.9


def test_clinical_xlsx_tables_are_read_with_normalised_names(tiny_root):
    import pandas as pd

    from strokelab.data.clinical import read_clinical

    folder = tiny_root / "phenotype" / "sub-stroke0004"
    (folder / "ses-01" / "sub-stroke0004_ses-01_demographic_baseline.csv").unlink()
    pd.DataFrame([{"Age": 81, "Center": "B", "NIHSS at admission": 17}]).to_excel(
        folder / "ses-01" / "sub-stroke0004_ses-01_demographic_baseline.xlsx", index=False
    )
    (folder / "ses-02").mkdir()
    pd.DataFrame([{"mRS 3 months": 4}]).to_excel(folder / "ses-02" / "sub-stroke0004_ses-02_outcome.xlsx", index=False)
    clinical = read_clinical(tiny_root, "sub-stroke0004")
    assert clinical == {"age": 81, "centre": "B", "nihss_admission": 17, "mrs_3month": 4}
    broken = folder / "ses-02" / "sub-stroke0004_ses-02_outcome.xlsx"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="unreadable clinical table") as err:
        read_clinical(tiny_root, "sub-stroke0004")
    assert "outcome.xlsx" in str(err.value)

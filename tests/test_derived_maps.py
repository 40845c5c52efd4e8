"""Perfusion maps derived from the raw CTP of a case whose map files are missing (strokelab.perfusion.derive)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from strokelab.data.layouts import Case, label_path, modality_path
from strokelab.data.phantom import PhantomConfig, case_files, case_id, generate
from strokelab.errors import DataError
from strokelab.perfusion.derive import DERIVED_MAP_SETTINGS, ISLES_MAPS, fill_missing_maps

# The default grid (2x2x5 mm, 32 frames x 1.5 s), where the settings were measured; two cases take ~2 s.
CONFIG = PhantomConfig(n_cases=2, seed=3)


def _arr(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _case(root: Path, cid: str) -> Case:
    return Case(
        id=cid,
        root=root,
        images={m: modality_path(root, cid, m) for m in (*ISLES_MAPS, "cta")},
        label=label_path(root, cid),
    )


def _untilt_ctp(root: Path, cid: str) -> np.ndarray:
    """Rewrite the CTP's header as in ISLES'24: identity direction (no gantry tilt) and another origin, same
    voxels. Returns the new affine."""
    path = modality_path(root, cid, "ctp")
    img = nib.load(path)
    affine = np.diag([*img.header.get_zooms()[:3], 1.0])
    affine[:3, 3] = (-95.0, 110.0, -200.0)
    new = nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header)
    new.set_sform(affine, code=1)
    new.set_qform(affine, code=1)
    nib.save(new, path)
    return affine


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("derive") / "ds"
    generate(root, CONFIG)
    return root


@pytest.fixture
def root(source, tmp_path) -> Path:
    """A fresh copy of the phantom's cases (the truth stays in the module's copy)."""
    dst = tmp_path / "ds"
    shutil.copytree(source / "derivatives", dst / "derivatives")
    return dst


def test_fills_the_four_maps_with_the_tilted_header_of_the_case(root, source, tmp_path):
    cid = case_id(0)
    ctp_affine = _untilt_ctp(root, cid)
    for m in ISLES_MAPS:
        modality_path(root, cid, m).unlink()
    case = _case(root, cid)
    cta = nib.load(case.images["cta"])
    out = tmp_path / "derived"

    lines = fill_missing_maps([case], out)

    assert len(lines) == 1 and cid in lines[0] and "cbf, cbv, mtt, tmax missing" in lines[0]
    assert "\n" not in lines[0]
    for m in ISLES_MAPS:
        path = case.images[m]
        assert path == out / cid / f"{cid}_ses-01_space-ncct_{m}.nii.gz" and path.is_file()
        img = nib.load(path)
        assert img.shape == cta.shape and img.get_data_dtype() == np.float32
        # The tilted affine that the CTA, the mask and the maps share, not the CTP's untilted one.
        np.testing.assert_allclose(img.affine, cta.affine, atol=1e-5)
        np.testing.assert_allclose(img.get_sform(), cta.get_sform(), atol=1e-5)
        np.testing.assert_allclose(img.get_qform(), cta.get_qform(), atol=1e-5)
        assert np.abs(img.affine - ctp_affine).max() > 1.0
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]

    # The maps follow the phantom's truth inside the brain, as the phantom's own derived maps do.
    files = case_files(0)
    tissue = _arr(source / files["truth_tissue"])
    tmax, truth = _arr(case.images["tmax"]), _arr(source / files["truth_tmax"])
    brain = np.isin(tissue, (4, 5)) & (tmax > 0)
    assert brain.sum() > 0.9 * np.isin(tissue, (4, 5)).sum()  # the automatic brain mask covers the brain
    assert stats.pearsonr(tmax[brain], truth[brain])[0] > 0.6
    cbf, truth_cbf = _arr(case.images["cbf"]), _arr(source / files["truth_cbf"])
    assert stats.spearmanr(cbf[brain], truth_cbf[brain])[0] > 0.45
    # Same numbers as the phantom's own maps, which use the same settings (over its own brain mask).
    phantom_tmax = _arr(source / files["tmax"])
    assert stats.pearsonr(tmax[brain], phantom_tmax[brain])[0] > 0.9


def test_a_present_map_is_kept_and_gives_the_header(root, tmp_path):
    cid = case_id(1)
    _untilt_ctp(root, cid)
    for m in ("cbf", "cbv", "mtt"):
        modality_path(root, cid, m).unlink()
    case = _case(root, cid)
    tmax_path = case.images["tmax"]
    tmax_img = nib.load(tmax_path)

    lines = fill_missing_maps([case], tmp_path / "derived")

    assert len(lines) == 1 and "cbf, cbv, mtt missing" in lines[0] and tmax_path.name in lines[0]
    assert case.images["tmax"] == tmax_path  # kept
    for m in ("cbf", "cbv", "mtt"):
        assert case.images[m].parent == tmp_path / "derived" / cid
        np.testing.assert_allclose(nib.load(case.images[m]).affine, tmax_img.affine, atol=1e-5)


def test_cases_with_nothing_missing_or_no_ctp_are_left_alone(root, tmp_path):
    complete = _case(root, case_id(0))
    before = dict(complete.images)
    no_ctp = _case(root, case_id(1))
    no_ctp.images["tmax"].unlink()
    modality_path(root, case_id(1), "ctp").unlink()
    before_no_ctp = dict(no_ctp.images)

    assert fill_missing_maps([complete, no_ctp], tmp_path / "derived") == []
    assert complete.images == before and no_ctp.images == before_no_ctp
    assert not (tmp_path / "derived").exists()


def test_without_a_3d_image_on_its_grid_the_ctp_affine_is_used(root, tmp_path):
    cid = case_id(0)
    ctp_affine = _untilt_ctp(root, cid)
    for m in ISLES_MAPS:
        modality_path(root, cid, m).unlink()
    # The CTA is on another grid (half the voxels in-plane), and there is no lesion mask.
    cta_path = modality_path(root, cid, "cta")
    cta = nib.load(cta_path)
    nib.save(nib.Nifti1Image(np.asarray(cta.dataobj)[::2, ::2], cta.affine @ np.diag([2.0, 2.0, 1.0, 1.0])), cta_path)
    label_path(root, cid).unlink()
    case = _case(root, cid)

    lines = fill_missing_maps([case], tmp_path / "derived")

    assert "CTP's own affine" in lines[0]
    for m in ISLES_MAPS:
        img = nib.load(case.images[m])
        np.testing.assert_allclose(img.affine, ctp_affine, atol=1e-5)
        assert img.shape == cta.shape


def test_a_truncated_ctp_is_a_one_line_data_error_naming_the_file(root, tmp_path):
    cid = case_id(0)
    modality_path(root, cid, "tmax").unlink()
    ctp = modality_path(root, cid, "ctp")
    ctp.write_bytes(ctp.read_bytes()[: ctp.stat().st_size // 2])
    case = _case(root, cid)

    with pytest.raises(DataError) as err:
        fill_missing_maps([case], tmp_path / "derived")

    assert str(ctp) in str(err.value) and "\n" not in str(err.value)
    assert case.images["tmax"] == modality_path(root, cid, "tmax")
    assert not (tmp_path / "derived").exists()


def test_settings_are_the_documented_ones():
    assert DERIVED_MAP_SETTINGS.deconvolution.method == "bcsvd"
    assert DERIVED_MAP_SETTINGS.spatial_sigma_mm > 0 and DERIVED_MAP_SETTINGS.smoothing_sigma_s > 0

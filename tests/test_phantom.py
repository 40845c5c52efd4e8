"""The digital stroke phantom: layout, geometry, physics and determinism (tiny volumes, fast)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from strokelab.data import phantom
from strokelab.data.phantom import (
    DEMOGRAPHIC_COLUMNS,
    OUTCOME_COLUMNS,
    PhantomConfig,
    case_files,
    case_id,
    clinical_files,
    generate,
    generate_case,
    is_current,
)
from strokelab.errors import ConfigError, DataError

# A small grid over the same field of view as the default (so the head is adult-sized), 16 frames x 3 s.
TINY = PhantomConfig(n_cases=3, seed=7, shape=(48, 56, 14), spacing=(4.0, 4.0, 10.0), n_frames=16, frame_interval_s=3.0)
# The tiny grid of the brief: default voxel size, so the head is shrunk to fit the small field of view.
SMALL_FOV = PhantomConfig(n_cases=3, seed=1, shape=(40, 48, 12), n_frames=16, frame_interval_s=3.0)


def _arr(img: nib.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "ds"
    ids = generate(root, TINY, workers=1)
    assert ids == ["sub-stroke0001", "sub-stroke0002", "sub-stroke0003"]
    return root


@pytest.fixture(scope="module")
def cases() -> dict[int, dict[str, nib.Nifti1Image]]:
    return {i: generate_case(i, TINY) for i in range(TINY.n_cases)}


def _load(root: Path, index: int) -> dict[str, nib.Nifti1Image]:
    return {key: nib.load(root / rel) for key, rel in case_files(index).items()}


# ---------------------------------------------------------------------------------------------- layout
def test_layout_has_exact_isles24_names(dataset):
    for i in range(3):
        cid = case_id(i)
        expected = [
            f"derivatives/{cid}/ses-01/{cid}_ses-01_space-ncct_cta.nii.gz",
            f"derivatives/{cid}/ses-01/{cid}_ses-01_space-ncct_ctp.nii.gz",
            *(
                f"derivatives/{cid}/ses-01/perfusion-maps/{cid}_ses-01_space-ncct_{m}.nii.gz"
                for m in ("cbf", "cbv", "mtt", "tmax")
            ),
            f"derivatives/{cid}/ses-02/{cid}_ses-02_space-ncct_dwi.nii.gz",
            f"derivatives/{cid}/ses-02/{cid}_ses-02_space-ncct_adc.nii.gz",
            f"raw_data/{cid}/ses-01/{cid}_ses-01_ncct.nii.gz",
            f"phenotype/{cid}/ses-01/{cid}_ses-01_demographic_baseline.csv",
            f"phenotype/{cid}/ses-02/{cid}_ses-02_outcome.csv",
            *(f"phantom_truth/{cid}/{cid}_{t}.nii.gz" for t in phantom.TRUTH_NAMES),
        ]
        for rel in expected:
            assert (dataset / rel).is_file(), rel

    # Every third case uses the mask naming without the space tag, the others the space-ncct one; never both.
    def ses2(cid: str) -> Path:
        return dataset / "derivatives" / cid / "ses-02"

    for cid, plain in (("sub-stroke0001", False), ("sub-stroke0002", False), ("sub-stroke0003", True)):
        with_space = ses2(cid) / f"{cid}_ses-02_space-ncct_lesion-msk.nii.gz"
        without = ses2(cid) / f"{cid}_ses-02_lesion-msk.nii.gz"
        assert without.is_file() == plain and with_space.is_file() == (not plain)
    assert sorted(p.name for p in (dataset / "derivatives").iterdir()) == [case_id(i) for i in range(3)]


def test_dataset_description_and_truth_table(dataset):
    desc = json.loads((dataset / "dataset_description.json").read_text())
    assert desc["Name"] == "strokelab phantom"
    assert desc["seed"] == 7 and desc["n_cases"] == 3
    assert desc["generator_version"] == phantom.GENERATOR_VERSION
    assert PhantomConfig(**desc["phantom_config"]) == TINY  # the config round-trips through JSON
    table = pd.read_csv(dataset / "phantom_truth" / "cases.csv")
    assert list(table["case"]) == [case_id(i) for i in range(3)]
    for col in ("reperfusion", "territory", "side", "core_ml", "penumbra_ml", "lesion_ml"):
        assert col in table.columns
    assert table["reperfusion"].between(0, 1).all()
    assert set(table["territory"]) <= {"ACA", "MCA", "PCA"} and set(table["side"]) <= {"L", "R"}
    # Volumes agree with the written masks.
    for i, row in table.iterrows():
        imgs = _load(dataset, i)
        vox_ml = float(np.prod(TINY.spacing)) / 1000
        assert row["lesion_ml"] == pytest.approx(_arr(imgs["lesion-msk"]).sum() * vox_ml, abs=0.01)
        assert row["core_ml"] == pytest.approx(_arr(imgs["truth_core"]).sum() * vox_ml, abs=0.01)


def test_no_temporary_files_left(dataset):
    leftovers = [p for p in dataset.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------- geometry
def test_one_oblique_grid_per_case(dataset):
    for i in range(3):
        imgs = _load(dataset, i)
        ref = imgs["ncct"]
        assert ref.shape == TINY.shape
        for key, img in imgs.items():
            assert img.shape[:3] == ref.shape, key
            np.testing.assert_array_equal(img.affine, ref.affine, err_msg=key)
        aff = ref.affine[:3, :3]
        # Column norms are the voxel sizes; the gantry tilt makes the affine non-diagonal.
        np.testing.assert_allclose(np.linalg.norm(aff, axis=0), TINY.spacing, rtol=1e-6)
        assert np.abs(aff - np.diag(np.diag(aff))).max() > 0.5
        tilt = np.degrees(np.arctan2(aff[2, 1], aff[1, 1]))
        assert abs(tilt - TINY.tilt_deg) <= TINY.tilt_jitter_deg + 1e-6
        assert nib.aff2axcodes(ref.affine) == ("L", "A", "S")
        # The head is centred: the grid centre maps to (near) the world origin.
        centre = ref.affine @ np.r_[(np.array(TINY.shape) - 1) / 2, 1]
        np.testing.assert_allclose(centre[:3], 0, atol=1e-3)


def test_ctp_is_4d_with_frames_and_interval(dataset):
    img = _load(dataset, 0)["ctp"]
    assert img.shape == (*TINY.shape, TINY.n_frames)
    assert img.get_data_dtype() == np.int16
    assert img.header.get_zooms()[3] == pytest.approx(TINY.frame_interval_s)
    assert img.header.get_xyzt_units() == ("mm", "sec")


def test_ct_numbers_and_bolus_passage(cases):
    imgs = cases[0]
    tissue = _arr(imgs["truth_tissue"])
    ncct = _arr(imgs["ncct"]).astype(float)
    ctp = _arr(imgs["ctp"]).astype(float)
    assert np.median(ncct[tissue == 0]) == -1000  # air
    assert 35 <= np.median(ncct[tissue == 4]) <= 45  # grey matter
    assert 25 <= np.median(ncct[tissue == 5]) <= 35  # white matter
    assert np.median(ncct[tissue == 3]) < 15  # CSF
    assert 700 <= np.median(ncct[tissue == 2]) <= 1000  # bone
    # The first frame (before the bolus) matches the NCCT; grey matter then enhances by several HU.
    gm = tissue == 4
    assert abs(ctp[gm, 0].mean() - ncct[gm].mean()) < 2.0
    curve = ctp[gm].mean(axis=0) - ctp[gm, 0].mean()
    assert curve.max() > 4.0 and np.argmax(curve) > 1
    # Arteries are bright in the CTA.
    assert _arr(imgs["cta"])[tissue != 2].max() > 150


# ---------------------------------------------------------------------------------------------- maps
def test_maps_finite_physiological_and_zero_outside_brain(cases):
    limits = {"cbf": 200.0, "cbv": 20.0, "mtt": 45.0, "tmax": 40.0}
    for imgs in cases.values():
        tissue = _arr(imgs["truth_tissue"])
        brain = (tissue == 4) | (tissue == 5)
        for name, hi in limits.items():
            for key in (name, f"truth_{name}"):
                data = _arr(imgs[key])
                assert data.dtype == np.float32, key
                assert np.isfinite(data).all(), key
                assert (data[~brain] == 0).all(), key
                assert (data[brain] > 0).all(), key
                # Deconvolved maps keep the partial-volume arteries (CBF up to ~1000 ml/100g/min), as real ones do.
                top = data[brain].max() if key.startswith("truth_") else np.percentile(data[brain], 95)
                assert top < hi, key
        tmax = _arr(imgs["truth_tmax"])
        assert np.percentile(tmax[brain], 25) < 2.0  # most of the brain is normally perfused (Tmax 0-2 s)


@pytest.fixture(scope="module")
def default_grid_cases() -> dict[int, dict[str, nib.Nifti1Image]]:
    """Two cases of the default grid (2x2x5 mm, 32 frames x 1.5 s), where the derived maps were measured."""
    return {i: generate_case(i, PhantomConfig()) for i in range(2)}


def test_derived_maps_follow_the_truth_inside_the_brain(default_grid_cases):
    """The default maps are deconvolved from the simulated CTP (bcSVD, automatic AIF, the smoothing of
    DERIVED_MAP_SETTINGS). On the 40 default cases: Spearman r of CBF 0.66 (0.50-0.78), of CBV 0.46
    (0.27-0.65), Pearson r of Tmax 0.82 (0.38-0.95), Tmax 1.85 s late (1.6-2.1), CBF 0.74x (0.64-0.95).
    Pearson r of CBF and CBV is ~0.14: partial-volume arteries inside the brain reach ~1000 ml/100g/min."""
    for i, imgs in default_grid_cases.items():
        tissue = _arr(imgs["truth_tissue"])
        brain = (tissue == 4) | (tissue == 5)

        def both(name: str) -> tuple[np.ndarray, np.ndarray]:
            return _arr(imgs[name])[brain].astype(float), _arr(imgs[f"truth_{name}"])[brain].astype(float)

        cbf, cbv, tmax = both("cbf"), both("cbv"), both("tmax")
        assert stats.spearmanr(*cbf)[0] > 0.45, i  # 0.65, 0.56 measured for cases 0, 1
        assert stats.spearmanr(*cbv)[0] > 0.25, i  # 0.40, 0.44
        assert stats.pearsonr(*tmax)[0] > 0.55, i  # 0.73, 0.69
        assert 1.0 < np.median(tmax[0] - tmax[1]) < 3.0, i  # the deconvolution's Tmax delay, ~1.9 s
        assert 0.55 < cbf[0].mean() / cbf[1].mean() < 1.05, i
        # The hypoperfused region (Tmax > 6 s) is found; with the late Tmax it comes out larger.
        hypo, found = tmax[1] > 6, tmax[0] > 6
        assert (hypo & found).sum() > 0.8 * hypo.sum(), i


def test_vendor_maps_are_the_truth_blurred_with_noise_and_nothing_else_changes(cases):
    vendor = dataclasses.replace(TINY, maps="vendor")
    for i, imgs in cases.items():
        other = generate_case(i, vendor)
        tissue = _arr(imgs["truth_tissue"])
        brain = (tissue == 4) | (tissue == 5)
        for key in imgs:
            same = np.array_equal(_arr(imgs[key]), _arr(other[key]))
            assert same == (key not in phantom.MAP_NAMES), key
        for name in phantom.MAP_NAMES:
            data = _arr(other[name])
            assert data.dtype == np.float32 and (data[~brain] == 0).all() and (data[brain] > 0).all(), name
            assert stats.pearsonr(data[brain], _arr(other[f"truth_{name}"])[brain])[0] > 0.7, name


@pytest.mark.parametrize("config", [TINY, SMALL_FOV], ids=["tiny", "small-fov"])
def test_normal_grey_and_white_matter_perfusion(config):
    for i in range(2):
        imgs = generate_case(i, config)
        tissue, territory = _arr(imgs["truth_tissue"]), _arr(imgs["truth_territory"])
        table = phantom._simulate_case(i, config).truth
        healthy = territory >= 4 if table["side"] == "L" else (territory >= 1) & (territory <= 3)
        cbf, cbv, mtt, tmax = (_arr(imgs[f"truth_{m}"]) for m in ("cbf", "cbv", "mtt", "tmax"))
        gm, wm = healthy & (tissue == 4), healthy & (tissue == 5)
        assert gm.sum() > 100 and wm.sum() > 100
        assert cbf[gm].mean() == pytest.approx(55, rel=0.2)
        assert cbf[wm].mean() == pytest.approx(25, rel=0.2)
        assert cbv[gm].mean() == pytest.approx(4, rel=0.2)
        assert cbv[wm].mean() == pytest.approx(2, rel=0.2)
        assert 3.5 < mtt[gm].mean() < 6.0
        assert tmax[gm | wm].max() < 2.5
        # Derived maps keep some grey/white contrast (smoothing blurs the thin cortex; medians, as arteries
        # in the grey matter reach ~1000 ml/100g/min); vendor-like maps more of it.
        map_cbf = _arr(imgs["cbf"])
        assert np.median(map_cbf[gm]) > 1.1 * np.median(map_cbf[wm])
        vendor_cbf = _arr(generate_case(i, dataclasses.replace(config, maps="vendor"))["cbf"])
        assert vendor_cbf[gm].mean() > 1.4 * vendor_cbf[wm].mean()


def test_central_volume_theorem_on_truth(cases):
    for imgs in cases.values():
        cbf, cbv, mtt = (_arr(imgs[f"truth_{m}"]).astype(float) for m in ("cbf", "cbv", "mtt"))
        brain = cbf > 0
        np.testing.assert_allclose(cbv[brain], cbf[brain] * mtt[brain] / 60.0, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- lesion
def test_lesion_mask_binary_inside_brain_and_seen_on_adc(cases):
    n_with_lesion = 0
    for imgs in cases.values():
        mask = _arr(imgs["lesion-msk"])
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        tissue = _arr(imgs["truth_tissue"])
        brain = (tissue == 4) | (tissue == 5)
        assert not (mask.astype(bool) & ~brain).any()
        if mask.sum() >= 5:
            n_with_lesion += 1
            adc = _arr(imgs["adc"]).astype(float)
            dwi = _arr(imgs["dwi"]).astype(float)
            normal = brain & (mask == 0)
            assert adc[mask == 1].mean() < 0.75 * adc[normal].mean()
            assert 350 < np.median(adc[mask == 1]) < 600 and 650 < np.median(adc[normal]) < 950
            assert dwi[mask == 1].mean() > 1.2 * dwi[normal].mean()
    assert n_with_lesion >= 1


def test_final_lesion_is_not_a_single_threshold(cases):
    checked = 0
    for imgs in cases.values():
        mask = _arr(imgs["lesion-msk"]).astype(bool)
        core = _arr(imgs["truth_core"]).astype(bool)
        penumbra = _arr(imgs["truth_penumbra"]).astype(bool)
        tmax = _arr(imgs["truth_tmax"])
        assert not (core & penumbra).any()
        np.testing.assert_array_equal(penumbra, (tmax > 6) & ~core)
        if mask.any() or core.any() or penumbra.any():
            checked += 1
            assert not np.array_equal(mask, tmax > 6)
            assert not np.array_equal(mask, core)
            assert not np.array_equal(mask, core | penumbra)
            if mask.sum() >= 5 and (core | penumbra).any():
                # ...but the infarct lies mostly in tissue that was hypoperfused.
                assert (mask & (core | penumbra)).sum() >= 0.5 * mask.sum()
    assert checked >= 2


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_arrays_other_seed_different():
    a, b = generate_case(1, TINY), generate_case(1, TINY)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(_arr(a[key]), _arr(b[key]), err_msg=key)
        np.testing.assert_array_equal(a[key].affine, b[key].affine)
    c = generate_case(1, PhantomConfig(**{**TINY.to_dict(), "seed": TINY.seed + 1}))
    for key in ("ncct", "ctp", "cbf", "tmax", "truth_tissue"):
        assert not np.array_equal(_arr(a[key]), _arr(c[key])), key
    # Cases of one data set differ from each other, and a case does not depend on n_cases.
    assert not np.array_equal(_arr(a["ncct"]), _arr(generate_case(0, TINY)["ncct"]))
    d = generate_case(1, PhantomConfig(**{**TINY.to_dict(), "n_cases": 9}))
    np.testing.assert_array_equal(_arr(a["ctp"]), _arr(d["ctp"]))


def test_worker_count_does_not_change_the_data(dataset, tmp_path):
    root = tmp_path / "two-workers"
    generate(root, TINY, workers=2)
    for i in range(TINY.n_cases):
        for rel in case_files(i).values():
            np.testing.assert_array_equal(_arr(nib.load(root / rel)), _arr(nib.load(dataset / rel)), err_msg=rel)
        for rel in clinical_files(i).values():
            assert (root / rel).read_text() == (dataset / rel).read_text()
    assert (root / "phantom_truth/cases.csv").read_text() == (dataset / "phantom_truth/cases.csv").read_text()


# ---------------------------------------------------------------------------------------------- clinical
def test_clinical_tables(dataset):
    for i in range(3):
        paths = clinical_files(i)
        demo = pd.read_csv(dataset / paths["demographic_baseline"])
        out = pd.read_csv(dataset / paths["outcome"])
        assert tuple(demo.columns) == DEMOGRAPHIC_COLUMNS and len(demo) == 1
        assert tuple(out.columns) == OUTCOME_COLUMNS and len(out) == 1
        row, res = demo.iloc[0], out.iloc[0]
        assert 18 <= row["age"] <= 100 and row["sex"] in {"M", "F"} and row["centre"] in {"C1", "C2", "C3", "C4"}
        assert 0 <= row["nihss_admission"] <= 42 and 0 <= row["mrs_admission"] <= 5
        assert row["onset_to_ct_min"] > 0
        assert row["thrombolysis"] in (0, 1) and row["thrombectomy"] in (0, 1)
        treated = row["thrombolysis"] == 1 or row["thrombectomy"] == 1
        assert pd.isna(row["ct_to_reperfusion_min"]) == (not treated)
        assert 0 <= res["mrs_3month"] <= 6 and 0 <= res["nihss_24h"] <= 42
    # A blank cell, not "None" or "nan", marks "no treatment".
    text = (dataset / clinical_files(0)["demographic_baseline"]).read_text()
    assert "None" not in text and "nan" not in text


def test_clinical_tables_are_read_by_the_project_reader(dataset):
    from strokelab.data.clinical import read_clinical

    row = read_clinical(dataset, "sub-stroke0001")
    assert {"nihss_admission", "mrs_3month", "centre", "age"} <= set(row)


# ---------------------------------------------------------------------------------------------- robustness
def test_interrupted_run_leaves_no_partial_files(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = nib.save

    def flaky_save(img, path):
        calls["n"] += 1
        if calls["n"] == 6:
            Path(path).write_bytes(b"half a file")
            raise KeyboardInterrupt
        real_save(img, path)

    monkeypatch.setattr(nib, "save", flaky_save)
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        generate(root, TINY, workers=1)
    written = [p for p in root.rglob("*.nii.gz")]
    assert len(written) == 5
    for p in written:
        nib.load(p).get_fdata()  # each written file is complete
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]
    assert not (root / "dataset_description.json").exists()
    # Running again completes the data set in the same folder.
    monkeypatch.setattr(nib, "save", real_save)
    generate(root, TINY, workers=1)
    assert (root / "dataset_description.json").is_file()


def test_refuses_foreign_folder_and_replaces_an_earlier_phantom(tmp_path):
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate(foreign, TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate(a_file, TINY)
    # An earlier phantom with more cases is overwritten, stale cases and fold file removed.
    root = tmp_path / "ds"
    generate(root, PhantomConfig(**{**TINY.to_dict(), "n_cases": 3}))
    (root / "isles24_multimodal_5fold_NIHSSstratified.json").write_text("{}")
    generate(root, PhantomConfig(**{**TINY.to_dict(), "n_cases": 2}))
    assert sorted(p.name for p in (root / "derivatives").iterdir()) == ["sub-stroke0001", "sub-stroke0002"]
    assert not (root / "phantom_truth" / "sub-stroke0003").exists()
    assert not (root / "isles24_multimodal_5fold_NIHSSstratified.json").exists()
    assert json.loads((root / "dataset_description.json").read_text())["n_cases"] == 2


def test_config_validation_and_coercion():
    cfg = PhantomConfig(shape=[48, 56, 14], spacing=[4, 4, 10])  # lists, as from YAML
    assert cfg.shape == (48, 56, 14) and cfg.spacing == (4.0, 4.0, 10.0)
    hash(cfg)
    for bad in (
        {"n_cases": 0},
        {"shape": (4, 4, 4)},
        {"spacing": (2.0, 0.0, 5.0)},
        {"n_frames": 4},
        {"frame_interval_s": 0.1},
        {"aif_peak_hu": (500, 200)},
        {"territory_weights": (0, 0, 0)},
        {"mild_fraction": 1.5},
        {"maps": "bogus"},
    ):
        with pytest.raises(ConfigError):
            PhantomConfig(**bad)
    with pytest.raises(ConfigError):
        generate("/nonexistent/never", TINY, workers=0)


def test_is_current_detects_a_stale_phantom(dataset, tmp_path, monkeypatch):
    assert is_current(dataset, TINY)
    assert is_current(dataset, TINY.to_dict())  # as the data config gives it
    for change in ({"seed": 8}, {"n_cases": 2}, {"maps": "vendor"}, {"ctp_noise_hu": (0.0, 0.0)}):
        assert not is_current(dataset, dataclasses.replace(TINY, **change)), change
    assert not is_current(tmp_path / "missing", TINY)
    # An older generator, a description without config, a broken or foreign one: not current.
    description = json.loads((dataset / "dataset_description.json").read_text())
    for name, text in (
        ("old", json.dumps({**description, "generator_version": "1.0.0"})),
        ("no-config", json.dumps({k: v for k, v in description.items() if k != "phantom_config"})),
        ("bad-config", json.dumps({**description, "phantom_config": {**description["phantom_config"], "n_cases": 0}})),
        ("broken", "{not json"),
        ("foreign", json.dumps({"Name": "ISLES 2024", "BIDSVersion": "1.9.0"})),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset_description.json").write_text(text)
        assert not is_current(tmp_path / name, TINY), name
    monkeypatch.setattr(phantom, "GENERATOR_VERSION", "99.0.0")
    assert not is_current(dataset, TINY)


def test_data_module_regenerates_a_stale_phantom_and_reuses_a_current_one(tmp_path):
    from strokelab.data.datamodule import StrokeDataModule

    small = dataclasses.replace(TINY, n_cases=2)
    root = tmp_path / "ds"
    generate(root, small)
    description = root / "dataset_description.json"
    old = json.loads(description.read_text())
    description.write_text(json.dumps({**old, "generator_version": "1.0.0"}))  # written by an older generator
    tmax = root / case_files(0)["tmax"]
    tmax.write_bytes(b"stale")

    StrokeDataModule(str(root), ["cbf"], phantom=small.to_dict()).ensure_data()
    assert is_current(root, small) and nib.load(tmax).shape == small.shape
    stamp = description.stat().st_mtime_ns
    StrokeDataModule(str(root), ["cbf"], phantom=small.to_dict()).ensure_data()
    assert description.stat().st_mtime_ns == stamp  # current: reused, not rewritten
    one = dataclasses.replace(small, n_cases=1)
    StrokeDataModule(str(root), ["cbf"], phantom=one.to_dict()).ensure_data()  # another config: rewritten
    assert is_current(root, one) and not (root / "derivatives" / case_id(1)).exists()
    # A real data set at the root is never overwritten.
    real = tmp_path / "real"
    (real / "derivatives").mkdir(parents=True)
    (real / "dataset_description.json").write_text(json.dumps({"Name": "ISLES 2024"}))
    with pytest.raises(DataError, match="holds no strokelab phantom"):
        StrokeDataModule(str(real), ["cbf"], phantom=small.to_dict()).ensure_data()
    assert json.loads((real / "dataset_description.json").read_text()) == {"Name": "ISLES 2024"}


def test_command_line(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("strokelab.data.folds")
    fake.ensure_fold_file = lambda root: calls.append(Path(root)) or Path(root) / "folds.json"
    monkeypatch.setitem(sys.modules, "strokelab.data.folds", fake)
    root = tmp_path / "cli"  # the CLI uses the default grid: two cases take a few seconds
    assert phantom.main([str(root), "--cases", "2", "--seed", "3", "--workers", "1"]) == 0
    assert calls == [root]
    assert json.loads((root / "dataset_description.json").read_text())["seed"] == 3
    assert "wrote 2 phantom cases" in capsys.readouterr().out
    # A user error is one line on stderr and a non-zero exit code.
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    assert phantom.main([str(tmp_path / "foreign"), "--cases", "2"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- ISLES'18 layout
# Two TRAINING cases and one TESTING case on thick slabs: 48x48 voxels of 4.5 mm, 3-5 slices 9 mm apart,
# 43-50 frames 1 s apart (an adult head in the field of view, few voxels).
TINY18 = PhantomConfig(
    layout="isles18",
    n_cases=2,
    n_testing=1,
    seed=3,
    shape=(48, 48, 4),
    spacing=(4.5, 4.5, 9.0),
    n_slices_range=(3, 5),
    n_frames=43,
    n_frames_range=(43, 50),
    frame_interval_s=1.0,
)
ISLES18_MODALITIES = ["ncct", "ctp", "cbf", "cbv", "mtt", "tmax", "dwi"]


@pytest.fixture(scope="module")
def dataset18(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom18") / "ds"
    assert generate(root, TINY18, workers=1) == ["case_1", "case_2", "case_3"]
    return root


def test_isles18_phantom_is_read_by_the_layout_reader(dataset18):
    from strokelab.data.check import load_case
    from strokelab.data.layouts import case_ids, detect_layout, discover

    assert detect_layout(dataset18) == "isles18"
    assert case_ids(dataset18) == ["case_1", "case_2", "case_3"]
    assert sorted(p.name for p in (dataset18 / "TRAINING").iterdir()) == ["case_1", "case_2"]
    assert sorted(p.name for p in (dataset18 / "TESTING").iterdir()) == ["case_3"]
    assert not (dataset18 / "derivatives").exists() and not (dataset18 / "phenotype").exists()
    ids = set()
    for case in discover(dataset18, ISLES18_MODALITIES, ids=["case_1", "case_2"]):
        assert case.layout == "isles18" and case.label.is_file()
        for path in [*case.images.values(), case.label]:
            assert path.suffix == ".nii" and path.read_bytes()[344:348] == b"n+1\x00", path  # uncompressed NIfTI-1
            ids.add(path.name.split(".")[-2])
        loaded = load_case(case)  # the platform's checks accept it: one grid, a 4D CTP, a binary mask
        ctp = nib.load(case.images["ctp"])
        assert ctp.shape[:2] == (48, 48) and 3 <= ctp.shape[2] <= 5 and 43 <= ctp.shape[3] <= 50
        assert ctp.header.get_zooms()[2:] == pytest.approx((9.0, 1.0))
        assert loaded.images["ctp"].shape == ctp.shape
    assert len(ids) == 16  # every file has its own id
    testing = discover(dataset18, ISLES18_MODALITIES[:-1], ids=["case_3"])[0]
    assert all(p.is_file() for p in testing.images.values()) and not testing.label.exists()
    assert not [p for p in (dataset18 / "TESTING" / "case_3").iterdir() if ".MR_DWI." in p.name or ".OT." in p.name]
    table = pd.read_csv(dataset18 / "phantom_truth" / "cases.csv")
    assert list(table["case"]) == ["case_1", "case_2", "case_3"]
    assert (dataset18 / "phantom_truth" / "case_3" / "case_3_tmax.nii.gz").is_file()


def test_isles18_dwi_is_the_isles24_dwi_with_a_bright_lesion(dataset18):
    from strokelab.data.layouts import discover

    as_isles24 = dataclasses.replace(TINY18, layout="isles24", n_testing=0)
    for i, case in enumerate(discover(dataset18, ["dwi", "tmax"], ids=["case_1", "case_2"])):
        written = _arr(nib.load(case.images["dwi"]))
        images = generate_case(i, as_isles24)
        np.testing.assert_array_equal(written, _arr(images["dwi"]))
        mask = _arr(nib.load(case.label)).astype(bool)
        np.testing.assert_array_equal(mask, _arr(images["lesion-msk"]).astype(bool))
        tissue = _arr(images["truth_tissue"])
        brain = (tissue == 4) | (tissue == 5)
        assert mask.sum() >= 5  # 15 and 49 ml: both cases have a lesion
        assert written[mask].mean() > 1.2 * written[brain & ~mask].mean()
        # The maps deconvolved from the thick-slab CTP follow the truth (Pearson r of Tmax 0.59, 0.77 measured).
        tmax = _arr(nib.load(case.images["tmax"]))
        assert stats.pearsonr(tmax[brain], _arr(images["truth_tmax"])[brain])[0] > 0.4


def test_isles18_is_current_and_switching_layouts(dataset18, tmp_path):
    assert is_current(dataset18, TINY18) and is_current(dataset18, TINY18.to_dict())
    assert not is_current(dataset18, dataclasses.replace(TINY18, layout="isles24", n_testing=0))
    assert not is_current(dataset18, dataclasses.replace(TINY18, n_testing=0))
    # A phantom root rewritten in the other layout holds that layout only.
    root = tmp_path / "switch"
    shutil.copytree(dataset18, root)
    (root / "isles18_multimodal_5fold_volumestratified.json").write_text("{}")
    one = dataclasses.replace(TINY, n_cases=1)
    generate(root, one)
    assert not (root / "TRAINING").exists() and not (root / "TESTING").exists()
    assert sorted(p.name for p in (root / "phantom_truth").iterdir() if p.is_dir()) == ["sub-stroke0001"]
    assert not (root / "isles18_multimodal_5fold_volumestratified.json").exists()  # a stale fold file
    assert is_current(root, one) and not is_current(root, TINY18)


def test_isles18_config_defaults_and_per_case_grids():
    cfg = PhantomConfig(layout="isles18")
    assert cfg.shape[:2] == (128, 128) and cfg.spacing[:2] == (1.8, 1.8) and cfg.frame_interval_s == 1.0
    assert PhantomConfig(**cfg.to_dict()) == cfg
    grids = [phantom.case_config(i, cfg) for i in range(12)]
    assert all(4 <= g.shape[2] <= 8 and 8.0 <= g.spacing[2] <= 10.0 and 43 <= g.n_frames <= 64 for g in grids)
    assert len({g.shape[2] for g in grids}) > 1 and len({g.n_frames for g in grids}) > 1  # they vary per case
    fixed = PhantomConfig(layout="isles18", shape=(64, 64, 6))  # a given shape is one grid for every case
    assert fixed.n_slices_range is None and phantom.case_config(5, fixed).shape == (64, 64, 6)
    assert PhantomConfig() == PhantomConfig(shape=(96, 112, 28), spacing=(2.0, 2.0, 5.0), n_frames=32, frame_interval_s=1.5)
    for bad in (
        {"layout": "isles99"},
        {"n_testing": 2},  # TESTING cases exist in the ISLES'18 layout only
        {"layout": "isles18", "n_testing": -1},
        {"layout": "isles18", "n_slices_range": (5, 3)},
        {"layout": "isles18", "n_frames_range": (10, 30)},  # 10 frames of 1 s cover too little
        {"shape": (64, 64, 1)},
    ):
        with pytest.raises(ConfigError):
            PhantomConfig(**bad)


def test_command_line_writes_isles18(tmp_path):
    import subprocess

    root = tmp_path / "cli18"  # the ISLES'18 default grid: five cases (enough for the 5-fold file) take seconds
    args = [str(root), "--layout", "isles18", "--cases", "5", "--testing", "1", "--workers", "1", "--maps", "vendor"]
    out = subprocess.run([sys.executable, "-m", "strokelab.data.phantom", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wrote 6 phantom cases" in out.stdout and "isles18_multimodal_5fold_volumestratified.json" in out.stdout
    assert is_current(root, PhantomConfig(layout="isles18", n_cases=5, n_testing=1, maps="vendor"))
    assert len(list((root / "TRAINING").glob("case_*/SMIR.Brain.XX.O.OT.*/*.nii"))) == 5

"""The data side of Wang et al.'s pseudo-DWI chain: CTP-derived inputs (temporal MIP, perfusion window) and
the DWI as a [0, 1] synthesis target.

Cases are written by hand in tmp_path in the ISLES'18 layout (tiny slabs: 20x18x3 voxels, 24 CTP frames,
a head with a skull ring and a gamma-variate bolus in the brain), plus one ISLES'24-layout case.
"""

from __future__ import annotations

from itertools import count
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_case as write_isles24_case
from conftest import write_ctp

from strokelab.data.check import LoadedCase, load_case
from strokelab.data.layouts import DERIVED_INPUTS, discover, source_modalities
from strokelab.data.preprocess import (
    CACHE_VERSION,
    UNIT_SCALED_TARGETS,
    Preprocessing,
    Serve,
    load_or_preprocess,
    preprocess_loaded,
    resample_to_spacing,
    scale_to_unit,
)
from strokelab.errors import ConfigError, DataError
from strokelab.perfusion.temporal import accumulated_intensity, crop_and_resample, perfusion_window, temporal_mip

SHAPE = (20, 18, 3)
SPACING = (2.0, 2.0, 8.0)
FRAMES = 24
WANG_INPUTS = ["cbf", "cbv", "mtt", "tmax", "ctp_mip", "ctp_window"]
TAGS = {"ctp": "CT_4DPWI", "cbf": "CT_CBF", "cbv": "CT_CBV", "mtt": "CT_MTT", "tmax": "CT_Tmax", "dwi": "MR_DWI"}
_IDS = count(700001)


def _head(shape=SHAPE):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape[:2]], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))[..., None] * np.ones(shape[2])
    return radius < 0.7, radius < 0.85  # brain, head (brain + skull)


def ctp_series(seed: int = 0, frames: int = FRAMES) -> np.ndarray:
    """HU, time last: air -1000, skull 1000, brain 35 + a gamma-variate bolus (40 HU at frame 8) and its
    recirculation (10 HU at frame 22) + noise: the window closes before the last frame."""
    rng = np.random.default_rng(seed)
    brain, head = _head()
    hu = np.where(brain, 35.0, np.where(head, 1000.0, -1000.0))
    t = np.arange(frames, dtype=float)
    first, second = np.clip(t - 2.0, 0, None) / 6.0, np.clip(t - 17.0, 0, None) / 5.0
    bolus = 40.0 * first**2 * np.exp(2.0 - 2.0 * first) + 10.0 * second**2 * np.exp(2.0 - 2.0 * second)
    series = hu[..., None] + brain[..., None] * bolus + rng.normal(0, 1.0, (*SHAPE, frames))
    return series.astype(np.float32)


def _save(folder: Path, tag: str, data: np.ndarray) -> Path:
    name = f"SMIR.Brain.XX.O.{tag}.{next(_IDS)}"
    (folder / name).mkdir(parents=True)
    path = folder / name / f"{name}.nii"
    nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1.0])), path)
    return path


def write_case(root: Path, n: int = 1, with_ctp: bool = True) -> Path:
    """One ISLES'18 TRAINING case: maps and a DWI in the brain (0 outside), a CTP, a lesion mask."""
    folder = root / "TRAINING" / f"case_{n}"
    rng = np.random.default_rng(n)
    brain, _ = _head()
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[8:12, 7:11, 1] = 1
    for modality, tag in TAGS.items():
        if modality == "ctp":
            if with_ctp:
                _save(folder, tag, ctp_series(n))
            continue
        if modality == "dwi":  # lesion bright, a few hot voxels above the 99th percentile
            data = np.where(brain, 400.0 + rng.normal(0, 20, SHAPE) + 300.0 * lesion, 0.0)
            data[10, 2, 0] = 5000.0
        else:
            data = np.where(brain, rng.uniform(1, 10, SHAPE), 0.0)
        _save(folder, tag, data.astype(np.float32))
    _save(folder, "OT", lesion)
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "ISLES2018"
    write_case(root, 1)
    return root


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


def _entry(root: Path, prep: Preprocessing, serve: Serve, cache_dir=None) -> dict:
    (case,) = discover(root, serve.modalities, with_label=serve.needs_label)
    return load_or_preprocess(case, prep, cache_dir, serve)


def _native(root: Path, tag: str) -> np.ndarray:
    (path,) = (root / "TRAINING" / "case_1").glob(f"SMIR.Brain.XX.O.{tag}.*/*.nii")
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


# ------------------------------------------------------------------------------------- names and files
def test_source_modalities_maps_derived_inputs_to_their_file_in_order():
    assert DERIVED_INPUTS == {"ctp_mip": "ctp", "ctp_window": "ctp"}
    assert source_modalities(WANG_INPUTS) == ["cbf", "cbv", "mtt", "tmax", "ctp"]
    assert source_modalities(["ctp_window", "cbf", "ctp", "ctp_mip"]) == ["ctp", "cbf"]
    assert source_modalities([]) == []


def test_serve_reads_the_ctp_for_derived_inputs_and_refuses_them_as_targets():
    serve = Serve.make(WANG_INPUTS, ("label", "dwi"))
    assert serve.modalities == ["cbf", "cbv", "mtt", "tmax", "ctp", "dwi"]
    assert Serve.make(["ctp", "ctp_mip"]).modalities == ["ctp"]
    assert "dwi" in UNIT_SCALED_TARGETS
    with pytest.raises(ConfigError) as err:
        Serve.make(["cbf"], ("ctp_mip",))
    _one_line(err, "model.targets", "ctp_mip")


def test_discover_accepts_derived_input_names(root):
    (case,) = discover(root, WANG_INPUTS)
    assert list(case.images) == ["cbf", "cbv", "mtt", "tmax", "ctp"]


# ------------------------------------------------------------------------------------- preprocessing
def test_wang_inputs_and_targets_have_the_right_shapes_and_window(root):
    prep = Preprocessing(spacing=(4.0, 4.0, None))
    serve = Serve.make(WANG_INPUTS, ("label", "dwi"))
    entry = _entry(root, prep, serve)
    images = entry["images"]
    assert entry["inputs"] == WANG_INPUTS
    assert entry["channels"] == {"cbf": 1, "cbv": 1, "mtt": 1, "tmax": 1, "ctp_mip": 1, "ctp_window": 6}
    assert "ctp" not in images  # read only as the source of the derived inputs
    spatial = images["cbf"].shape[1:]
    for name in (*WANG_INPUTS, "label", "dwi"):
        assert images[name].shape[1:] == spatial, name
    # The window is Eq. 2-3 on q(t) of the raw series (whole volume, K = 5).
    expected = perfusion_window(accumulated_intensity(_native(root, "CT_4DPWI")), 5)
    window = entry["stats"]["ctp_window"]["window"]
    assert (window["start"], window["end"], window["found_start"], window["found_end"]) == (
        expected.start,
        expected.end,
        expected.found_start,
        expected.found_end,
    )
    assert window["found_start"] and window["found_end"] and window["start"] <= 2 and window["end"] == 17  # not the last frame
    assert window["source_frames"] == FRAMES and window["k"] == 5


def test_derived_inputs_equal_the_temporal_features_before_normalisation(root):
    prep = Preprocessing(spacing=(None, None, None), crop_to_head=False, normalize="none", window_frames=4, window_k=3)
    entry = _entry(root, prep, Serve.make(["ctp_mip", "ctp_window"], ()))
    raw = _native(root, "CT_4DPWI")
    np.testing.assert_allclose(entry["images"]["ctp_mip"][0].numpy(), temporal_mip(raw), atol=1e-4)
    window = perfusion_window(accumulated_intensity(raw), 3)
    cropped = np.moveaxis(crop_and_resample(raw, window.start, window.end, 4), -1, 0)
    assert entry["images"]["ctp_window"].shape == (4, *SHAPE)
    np.testing.assert_allclose(entry["images"]["ctp_window"].numpy(), cropped, atol=1e-4)


def test_derived_inputs_are_zscored_over_the_head(root):
    prep = Preprocessing(spacing=(None, None, None), crop_to_head=False)
    entry = _entry(root, prep, Serve.make(["ctp_mip", "ctp_window"], ()))
    raw = _native(root, "CT_4DPWI")
    mip = temporal_mip(raw)
    head = mip > -300.0  # CT foreground of the MIP
    out = entry["images"]["ctp_mip"][0].numpy()
    assert abs(out[head].mean()) < 1e-4 and abs(out[head].std() - 1) < 1e-3 and (out[~head] == 0).all()
    stats = entry["stats"]["ctp_mip"]
    assert stats["mean"] == pytest.approx(float(mip[head].mean()), rel=1e-5)
    # One mean/std over all window channels (their own means differ: the bolus passes through them).
    series = entry["images"]["ctp_window"].numpy()
    region = np.broadcast_to(series.mean(axis=0) != 0, series.shape)
    assert abs(series[region].mean()) < 1e-4 and abs(series[region].std() - 1) < 1e-3
    assert np.ptp(series[:, region[0]].mean(axis=1)) > 0.05
    assert "window" in entry["stats"]["ctp_window"] and "std" in entry["stats"]["ctp_window"]


def test_dwi_target_is_unit_scaled_on_the_native_grid_then_resampled(root):
    prep = Preprocessing(spacing=(3.0, 3.0, None), crop_to_head=False, target_range=(0.0, 0.5))
    entry = _entry(root, prep, Serve.make(["cbf", "ctp_mip"], ("label", "dwi")))
    dwi = entry["images"]["dwi"][0].numpy()
    assert dwi.min() >= 0.0 and dwi.max() <= 1.0 and dwi.max() > 0.9  # target_range does not apply
    scaled, _ = resample_to_spacing({"dwi": scale_to_unit(_native(root, "MR_DWI"))}, np.diag([*SPACING, 1.0]), prep.spacing)
    np.testing.assert_allclose(dwi, scaled["dwi"], atol=1e-6)


def test_dwi_as_an_input_is_zscored_like_any_mr_image(root):
    prep = Preprocessing(spacing=(None, None, None), crop_to_head=False)
    entry = _entry(root, prep, Serve.make(["dwi", "ctp_mip"], ("label",)))
    dwi = entry["images"]["dwi"][0].numpy()
    inside = _native(root, "MR_DWI") != 0
    assert abs(dwi[inside].mean()) < 1e-4 and abs(dwi[inside].std() - 1) < 1e-3 and dwi.min() < 0 and dwi.max() > 1
    assert set(entry["stats"]["dwi"]) == {"mean", "std"}


def test_raw_ctp_is_served_only_when_asked_for(root):
    prep = Preprocessing(spacing=(None, None, None), frames=8)
    entry = _entry(root, prep, Serve.make(["ctp", "ctp_mip"], ()))
    assert entry["channels"] == {"ctp": 8, "ctp_mip": 1}


# ------------------------------------------------------------------------------------- scale_to_unit
def test_scale_to_unit_ignores_air_and_keeps_zero_outside():
    rng = np.random.default_rng(0)
    head = rng.uniform(100, 200, (10, 10, 4)).astype(np.float32)
    small, large = np.zeros((12, 12, 4), np.float32), np.zeros((40, 40, 4), np.float32)
    small[1:11, 1:11], large[1:11, 1:11] = head, head
    a, b = scale_to_unit(small), scale_to_unit(large)
    assert a.dtype == np.float32 and a.shape == small.shape
    np.testing.assert_array_equal(a[1:11, 1:11], b[1:11, 1:11])  # the air does not move the scale
    assert (a[0] == 0).all() and (b[20:] == 0).all()
    assert a.min() == 0.0 and a.max() == 1.0
    low, high = head.min(), np.percentile(head, 99)
    assert (a[1:11, 1:11] == 1.0).sum() >= 4  # the top 1 % clipped to 1
    inside = head < high
    np.testing.assert_allclose(a[1:11, 1:11][inside], (head[inside] - low) / (high - low), rtol=1e-5)


def test_scale_to_unit_of_a_constant_or_empty_volume_is_zero():
    for volume in (np.full((4, 4, 2), 7.0), np.zeros((4, 4, 2)), np.where(np.eye(4)[..., None] > 0, 3.0, 0.0)):
        out = scale_to_unit(volume)
        assert out.dtype == np.float32 and not out.any() and np.isfinite(out).all()


# ------------------------------------------------------------------------------------- errors and cache
def test_a_case_without_ctp_asked_for_ctp_mip_fails_in_one_line(tmp_path):
    root = tmp_path / "ISLES2018"
    write_case(root, 1, with_ctp=False)
    serve = Serve.make(["cbf", "ctp_mip"], ("label",))
    with pytest.raises(DataError) as err:
        discover(root, serve.modalities)
    _one_line(err, "case_1", "CT_4DPWI", "'ctp'")
    # A case read without its CTP (by hand) is refused by name, not with a KeyError.
    (case,) = discover(root, ["cbf"])
    loaded = load_case(case)
    with pytest.raises(DataError) as err:
        preprocess_loaded(loaded, Preprocessing(), serve)
    _one_line(err, "case case_1", "'ctp_mip'", "'ctp'")


def test_isles24_case_without_ctp_names_the_missing_file(tmp_path):
    root = tmp_path / "isles"
    write_isles24_case(root, "sub-stroke0001", shape=(16, 16, 4))
    (case,) = discover(root, Serve.make(["cbf", "ctp_window"]).modalities)
    with pytest.raises(DataError) as err:
        load_or_preprocess(case, Preprocessing(), None, Serve.make(["cbf", "ctp_window"]))
    _one_line(err, "sub-stroke0001_ses-01_space-ncct_ctp.nii.gz", "missing")


def test_isles24_case_with_ctp(tmp_path):
    root = tmp_path / "isles"
    write_isles24_case(root, "sub-stroke0001", shape=(16, 16, 4))
    path = write_ctp(root, "sub-stroke0001", frames=20)
    serve = Serve.make(WANG_INPUTS, ("label",))
    (case,) = discover(root, serve.modalities)
    entry = load_or_preprocess(case, Preprocessing(), None, serve)
    assert entry["channels"]["ctp_window"] == 6 and entry["images"]["ctp_window"].shape[1:] == entry["images"]["cbf"].shape[1:]
    expected = perfusion_window(accumulated_intensity(np.asarray(nib.load(path).dataobj, dtype=np.float32)))
    window = entry["stats"]["ctp_window"]["window"]
    assert (window["start"], window["end"]) == (expected.start, expected.end)


def test_cache_key_follows_the_window_settings(root, tmp_path):
    serve = Serve.make(WANG_INPUTS, ("label", "dwi"))
    base = Preprocessing()
    assert (base.window_frames, base.window_k) == (6, 5) and CACHE_VERSION >= 4
    keys = {base.key(serve), Preprocessing(window_frames=8).key(serve), Preprocessing(window_k=4).key(serve)}
    assert len(keys) == 3
    assert Preprocessing.from_config({"window_frames": 8}) == Preprocessing(window_frames=8)
    for bad in ({"window_frames": 0}, {"window_k": 2.5}, {"window_k": -1}):
        with pytest.raises(ConfigError) as err:
            Preprocessing.from_config(bad)
        _one_line(err, f"data.preprocess.{next(iter(bad))}")
    cache = tmp_path / "cache"
    _entry(root, Preprocessing(spacing=(None, None, None)), serve, cache)
    _entry(root, Preprocessing(spacing=(None, None, None), window_frames=4), serve, cache)
    assert len(list(cache.glob("*/case_1.pt"))) == 2


def test_loaded_case_api_is_unchanged():
    assert {"case", "images", "reference", "label", "warnings"} <= set(LoadedCase.__dataclass_fields__)

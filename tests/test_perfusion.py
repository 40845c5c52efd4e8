"""Tracer-kinetic perfusion analysis: deconvolution, units, maps, the Kudo phantom and the command line.

Every assertion compares with a truth known independently of the code under test: the parameters a curve
was simulated with, exact integrals, matrices built another way (numpy's SVD, numpy's convolution), or the
digital stroke phantom's truth maps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import oblique_affine
from scipy import ndimage, stats

from strokelab.data.phantom import HCT_LARGE_VESSEL, HCT_SMALL_VESSEL, K_H, RHO_TISSUE, PhantomConfig, generate_case
from strokelab.errors import ConfigError, DataError
from strokelab.perfusion import (
    METHODS,
    CurveAnalyser,
    DeconvolutionSettings,
    Deconvolver,
    PerfusionSettings,
    circulant_matrix,
    compute_maps,
    deconvolve,
    oscillation_index,
)
from strokelab.perfusion.kudo import (
    KudoConfig,
    accuracy_table,
    delay_table,
    evaluate,
    gamma_variate,
    gamma_variate_area,
    kudo_phantom,
    residue_function,
)
from strokelab.perfusion.maps import baseline_frame_count, bolus_arrival, brain_mask

DT = 1.0


def gv(t, t0=3.0, alpha=3.0, beta=1.5, peak=300.0):
    return gamma_variate(t, t0, alpha, beta, peak)


# ==================================================================================================
# A small synthetic CTP with known arteries, a vein, normal tissue and a hypoperfused region
# ==================================================================================================
def _tissue_curve(t, cbf, mtt, delay, fine=0.02, aif_kw=None):
    """Tissue enhancement (HU) of the indicator-dilution model, exponential residue, on a fine grid."""
    tf = np.arange(0, t[-1] + 1, fine)
    conv = np.convolve(gv(tf, **(aif_kw or {})), np.exp(-tf / mtt))[: tf.size] * fine
    return (RHO_TISSUE / K_H) * cbf / 6000.0 * np.interp(t - delay, tf, conv, left=0.0)


def make_ctp(shape=(40, 44, 6), n=50, dt=1.0, noise=0.0, seed=0, order="F"):
    """int16 CTP (HU) and its truth: brain, artery, vein, lesion masks and the simulated parameters."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    r2 = (x / 0.8) ** 2 + (y / 0.9) ** 2
    brain2 = r2 < 0.75
    base2 = np.where(r2 < 1.0, 30.0, -1000.0)
    base2[(r2 >= 0.8) & (r2 < 0.95)] = 900.0  # skull
    base2[brain2] = 35.0
    artery2 = (np.abs(x + 0.3) < 0.05) & (np.abs(y) < 0.05)
    vein2 = (np.abs(x) < 0.06) & (np.abs(y + 0.7) < 0.06)
    lesion2 = brain2 & ((x - 0.35) ** 2 + y**2 < 0.1)
    t = np.arange(n) * dt
    normal = _tissue_curve(t, 50.0, 4.0, 0.5)
    lesion = _tissue_curve(t, 15.0, 10.0, 4.0)
    art = gv(t)
    tf = np.arange(0, t[-1] + 1, 0.02)
    vein = 1.0 * np.interp(t - 5.0, tf, np.convolve(gv(tf), np.exp(-tf / 3.0) / 3.0)[: tf.size] * 0.02, left=0.0)
    curves = np.zeros(shape[:2] + (n,))
    curves[brain2] = normal
    curves[lesion2] = lesion
    curves[artery2] = art
    curves[vein2] = vein
    series = np.repeat(np.repeat(base2[:, :, None], shape[2], 2)[..., None], n, 3) + np.repeat(curves[:, :, None, :], shape[2], 2)
    head = (r2 < 1.0)[:, :, None, None]
    if noise:
        series = series + rng.normal(0, noise, series.shape) * head
    series = np.asarray(np.clip(np.rint(series), -1024, 3071), np.int16, order=order)
    rep = lambda m: np.repeat(m[:, :, None], shape[2], 2)  # noqa: E731
    truth = {"brain": rep(brain2), "artery": rep(artery2), "vein": rep(vein2), "lesion": rep(lesion2 & ~artery2 & ~vein2)}
    truth["normal"] = truth["brain"] & ~truth["lesion"] & ~rep(artery2 | vein2 | lesion2)
    return series, truth


@pytest.fixture(scope="module")
def ctp():
    return make_ctp()


# ==================================================================================================
# Deconvolution
# ==================================================================================================
def test_circulant_inverse_is_the_truncated_svd_of_the_wu_matrix():
    """The FFT-built inverse equals the pseudo-inverse from numpy's SVD of the Simpson-weighted circulant matrix."""
    t = np.arange(24.0)
    aif = gv(t, t0=2.0, beta=1.0) + 5 * np.sin(t)  # not symmetric, not smooth
    d = circulant_matrix(aif, 1.5)
    # Wu et al.: entries dt * (p[m-1] + 4 p[m] + p[m+1]) / 6 of the zero-padded AIF, circulant in (i - j) mod 2N.
    p = np.r_[aif, np.zeros(24)]
    assert d.shape == (48, 48)
    assert d[5, 2] == pytest.approx(1.5 * (p[2] + 4 * p[3] + p[4]) / 6)
    assert d[0, 47] == pytest.approx(1.5 * (p[0] + 4 * p[1] + p[2]) / 6)
    u, s, vt = np.linalg.svd(d)
    for threshold in (0.0, 0.1, 0.3):
        keep = s >= threshold * s[0]
        pinv = (vt[keep].T / s[keep]) @ u[:, keep].T
        w = Deconvolver(aif, 1.5, DeconvolutionSettings(bcsvd_threshold=threshold)).weights[0]
        np.testing.assert_allclose(w, pinv[:, :24].T, atol=1e-6 * np.abs(pinv).max())
    lam = 0.1 * s[0]
    tik = (vt.T * (s / (s**2 + lam**2))) @ u.T
    w = Deconvolver(aif, 1.5, DeconvolutionSettings(method="tikhonov")).weights[0]
    np.testing.assert_allclose(w, tik[:, :24].T, atol=1e-6 * np.abs(tik).max())


def test_ssvd_recovers_a_residue_from_the_discrete_convolution():
    """Without truncation sSVD inverts c = dt * (aif * k) (numpy's convolution) exactly."""
    rng = np.random.default_rng(0)
    aif = np.r_[100.0, 60.0, 30.0, 10.0, np.zeros(26)]  # well conditioned
    k = rng.uniform(0, 0.01, (5, 30))
    curves = np.stack([0.8 * np.convolve(aif, row)[:30] for row in k])
    est = deconvolve(curves, aif, 0.8, method="ssvd", ssvd_threshold=0.0)
    np.testing.assert_allclose(est, k, rtol=1e-3, atol=1e-7)


def test_bcsvd_residue_shifts_with_the_delay_and_nothing_else():
    """A tissue curve delayed by s frames gives the same residue, circularly shifted by s (Wu et al.)."""
    t = np.arange(40.0)
    aif = gv(t)
    tf = np.arange(0, 40, 0.02)
    base = np.interp(t, tf, np.convolve(gv(tf), np.exp(-tf / 3.0))[: tf.size] * 0.02) * 0.01
    base[28:] = 0.0  # the curve must fit the window after the shift
    dec = Deconvolver(aif, DT, DeconvolutionSettings(method="bcsvd"))
    k0 = dec.residue(base)
    for s in (1, 3, 7):
        ks = dec.residue(np.r_[np.zeros(s), base[:-s]])
        np.testing.assert_allclose(ks, np.roll(k0, s), atol=1e-6 * np.abs(k0).max())
    ssvd = Deconvolver(aif, DT, DeconvolutionSettings(method="ssvd"))
    assert ssvd.residue(np.r_[np.zeros(7), base[:-7]]).max() < 0.95 * ssvd.residue(base).max()


@pytest.mark.parametrize("method", METHODS)
def test_blocks_of_curves_equal_curves_one_by_one(method):
    rng = np.random.default_rng(1)
    t = np.arange(30.0)
    aif = gv(t)
    curves = (np.outer(rng.uniform(0.5, 2, 300), _tissue_curve(t, 40, 5, 1)) + rng.normal(0, 1.0, (300, 30))).astype(np.float32)
    dec = Deconvolver(aif, DT, DeconvolutionSettings(method=method))
    block, level = dec.residue(curves, return_level=True)
    for i in (0, 17, 299):
        one, lev = dec.residue(curves[i], return_level=True)
        np.testing.assert_allclose(block[i], one, rtol=1e-4, atol=1e-6 * np.abs(one).max())
        assert lev == level[i]


def test_osvd_takes_the_least_truncation_with_oscillation_under_the_limit():
    rng = np.random.default_rng(2)
    t = np.arange(40.0)
    aif = gv(t)
    curves = np.outer(rng.uniform(0.5, 2, 200), _tissue_curve(t, 40, 5, 2)) + rng.normal(0, 1.5, (200, 40))
    settings = DeconvolutionSettings(method="osvd")
    k, level = Deconvolver(aif, DT, settings).residue(curves, return_level=True)
    per_level = {
        lev: oscillation_index(Deconvolver(aif, DT, DeconvolutionSettings(bcsvd_threshold=lev)).residue(curves))
        for lev in settings.osvd_thresholds
    }
    last = settings.osvd_thresholds[-1]
    for i in range(200):
        chosen = float(level[i])
        if chosen != last:
            assert per_level[chosen][i] < settings.osvd_oi
        for lev in settings.osvd_thresholds:
            if lev < chosen - 1e-6:
                assert per_level[lev][i] >= settings.osvd_oi
    assert (oscillation_index(k) < settings.osvd_oi).mean() > 0.95


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="method"):
        DeconvolutionSettings(method="fft")
    with pytest.raises(ConfigError, match="bcsvd_threshold"):
        DeconvolutionSettings(bcsvd_threshold=1.5)
    with pytest.raises(ConfigError, match="osvd_thresholds"):
        DeconvolutionSettings(osvd_thresholds=(0.3, 0.1))
    with pytest.raises(ConfigError, match="hct_large_vessel"):
        PerfusionSettings(hct_large_vessel=1.2)
    assert PerfusionSettings().kh == pytest.approx((1 - 0.45) / (1 - 0.25))
    assert PerfusionSettings(deconvolution={"method": "osvd"}).deconvolution.method == "osvd"
    with pytest.raises(DataError, match="AIF"):
        Deconvolver(np.zeros(20), DT)


# ==================================================================================================
# Units: CBF from the residue peak, CBV from the areas (dt on both), MTT by the central volume theorem
# ==================================================================================================
def test_cbf_units_follow_the_indicator_dilution_model():
    """A curve made with F in ml/100g/min by the phantom's scaling (rho/kH * F/6000) gives back F."""
    aif = np.r_[100.0, 60.0, 30.0, 10.0, np.zeros(36)]
    t = np.arange(40) * 1.5
    for cbf, mtt in ((60.0, 3.0), (20.0, 8.0)):
        k = (RHO_TISSUE / K_H) * cbf / 6000.0 * residue_function("exponential", t, mtt)
        curve = 1.5 * np.convolve(aif, k)[:40]
        est = CurveAnalyser(aif, 1.5, PerfusionSettings().with_method("ssvd", 0.0))(curve[None])
        assert est["cbf"][0] == pytest.approx(cbf, rel=1e-3)
        assert est["tmax"][0] == pytest.approx(0.0, abs=1e-6)
        # Constants are configurable: kH and rho scale CBF as the derivation says.
        other = PerfusionSettings(tissue_density=1.0, hct_large_vessel=0.40).with_method("ssvd", 0.0)
        est2 = CurveAnalyser(aif, 1.5, other)(curve[None])
        assert est2["cbf"][0] == pytest.approx(cbf * (0.6 / 0.75) / K_H * RHO_TISSUE, rel=1e-3)
    assert HCT_LARGE_VESSEL == PerfusionSettings().hct_large_vessel and HCT_SMALL_VESSEL == PerfusionSettings().hct_small_vessel


@pytest.mark.parametrize("dt", [0.5, 1.0, 2.0])
def test_cbv_is_the_area_ratio_with_dt_on_both_sides(dt):
    """Exact truth: area(AIF) = gamma-variate integral, area(C) = rho/kH * CBV/100 * area(AIF). The estimate
    must not change with the frame interval (integrating only one of the two curves with dt would scale
    CBV by dt: 2x at 2 s)."""
    cfg = KudoConfig(cbv=(2.0, 4.0), mtt=(4.0, 10.0), delay=(0.0, 3.0), dt=dt, n_frames=int(90 / dt))
    ph = kudo_phantom(cfg)
    aif_area = gamma_variate_area(cfg.aif_alpha, cfg.aif_beta, cfg.aif_peak_hu)
    assert np.trapezoid(ph.aif, dx=dt) == pytest.approx(aif_area, rel=0.01)
    est = CurveAnalyser(ph.aif, dt)(ph.curves)
    np.testing.assert_allclose(est["cbv"], ph.truth["cbv"], rtol=0.02)
    # The same tissue, area by area: the tissue curve's area is (rho/kH) * CBV/100 * area(AIF).
    np.testing.assert_allclose(
        np.trapezoid(ph.curves, dx=dt, axis=1), RHO_TISSUE / K_H * ph.truth["cbv"] / 100 * aif_area, rtol=0.02
    )
    np.testing.assert_allclose(est["mtt"], 60 * est["cbv"] / est["cbf"], rtol=1e-5)


# ==================================================================================================
# The Kudo phantom
# ==================================================================================================
@pytest.fixture(scope="module")
def kudo():
    return kudo_phantom(KudoConfig())


def test_kudo_phantom_is_what_it_says(kudo):
    t = np.arange(0, 50, 0.001)
    for kind in ("exponential", "box", "linear"):
        r = residue_function(kind, t, 6.0)
        assert r[0] == 1.0 and np.trapezoid(r, t) == pytest.approx(6.0, rel=1e-3)
    truth = kudo.truth
    assert kudo.curves.shape == (540, 90)
    np.testing.assert_allclose(truth["cbf"], 60 * truth["cbv"] / truth["mtt"])
    assert np.all(np.abs(kudo.curves[:, 0]) < 1e-6) and np.all(kudo.curves[:, -1] < 0.01 * kudo.curves.max(axis=1))


@pytest.mark.parametrize("method", METHODS)
def test_kudo_noise_free_cbv_within_a_few_percent(kudo, method):
    est, truth, _ = evaluate(kudo, method, 0.0, 1, 0)
    assert np.abs(est["cbv"] / truth["cbv"] - 1).max() < 0.03


def test_kudo_bcsvd_cbf_does_not_depend_on_delay_and_ssvd_underestimates_with_delay():
    rows = {r["method"]: r for r in delay_table(KudoConfig(mtt=(2.0, 4.0)))}
    for method in ("bcsvd", "osvd", "tikhonov"):
        ratios = [rows[method][d] for d in KudoConfig().delay]
        assert max(ratios) - min(ratios) < 0.005 * max(ratios)
    ssvd = rows["ssvd"]
    for d in (1.0, 2.0, 3.0, 4.0, 5.0):
        assert ssvd[d] < 0.9 * ssvd[0.0]
    assert ssvd[5.0] < rows["bcsvd"][5.0]


def test_kudo_bcsvd_tmax_within_one_frame_of_delay_plus_residue_peak():
    """With residues that are smooth on the frame scale (bolus dispersion tau = 2 s) bcSVD's Tmax is within
    one frame of delay + residue peak; whatever the residue, Tmax - delay does not depend on the delay."""
    cfg = KudoConfig(dispersion_s=2.0)
    ph = kudo_phantom(cfg)
    est, truth, _ = evaluate(ph, "bcsvd", 0.0, 1, 0)
    peaked = truth["residue"] != "box"  # a dispersed box has a broad flat top: its peak time is ill-posed
    assert np.abs(est["tmax"] - truth["tmax"])[peaked].max() <= cfg.dt
    assert np.all(truth["tmax"] > truth["delay"])
    for phantom in (ph, kudo_phantom(KudoConfig())):
        e, tr, _ = evaluate(phantom, "bcsvd", 0.0, 1, 0)
        offset = (e["tmax"] - tr["delay"]).reshape(-1, len(cfg.delay))
        assert np.ptp(offset, axis=1).max() < 0.05 * cfg.dt
        assert np.all(e["tmax"] >= tr["delay"] - 0.5 * cfg.dt)  # never before the bolus arrives


def test_kudo_mtt_is_sensible(kudo):
    est, truth, _ = evaluate(kudo, "bcsvd", 0.0, 1, 0)
    assert stats.pearsonr(est["mtt"], truth["mtt"])[0] > 0.9
    rel = est["mtt"] / truth["mtt"]
    assert np.all(rel > 0.7) and np.median(np.abs(rel - 1)) < 0.3
    long = truth["mtt"] >= 8
    assert np.median(np.abs(rel[long] - 1)) < 0.15


@pytest.mark.parametrize("noise", [1.0, 3.0])
def test_kudo_osvd_oscillates_less_than_ssvd_at_the_same_noise(kudo, noise):
    n = kudo.curves.shape[1]
    _, _, k_osvd = evaluate(kudo, "osvd", noise, 3, 0)
    _, _, k_ssvd = evaluate(kudo, "ssvd", noise, 3, 0)
    oi_o, oi_s = oscillation_index(k_osvd[:, :n]), oscillation_index(k_ssvd[:, :n])
    fin = np.isfinite(oi_o) & np.isfinite(oi_s)
    assert np.mean(oi_o[fin]) < np.mean(oi_s[fin])
    # oSVD caps the oscillation: its worst residues oscillate much less (at 1 HU the typical one may
    # oscillate slightly more than sSVD's, since oSVD then truncates less than sSVD's fixed 0.2).
    assert np.percentile(oi_o[fin], 90) < 0.8 * np.percentile(oi_s[fin], 90)
    if noise >= 3:
        assert np.median(oi_o[fin]) < np.median(oi_s[fin])


def test_kudo_accuracy_table_and_command():
    cfg = KudoConfig(cbv=(2.0, 4.0), mtt=(4.0, 8.0), delay=(0.0, 2.0), noise_hu=(0.0, 2.0), repeats=2)
    rows = accuracy_table(cfg)
    assert len(rows) == len(METHODS) * 2
    for row in rows:
        assert {"cbf_bias", "cbf_r", "cbv_bias", "cbv_r", "mtt_bias", "tmax_bias", "ttp_r", "oi"} <= set(row)
        if row["noise_hu"] == 0:
            assert abs(row["cbv_bias"]) < 3 and row["cbv_r"] > 0.99
    out = subprocess.run(
        [sys.executable, "-m", "strokelab.perfusion.kudo", "--repeats", "1"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("| bcsvd |") >= 3 and "Delay sensitivity" in out.stdout


# ==================================================================================================
# The pipeline on volumes
# ==================================================================================================
def test_bolus_arrival_and_baseline_frames():
    curve = np.r_[np.full(6, 40.0), 40 + np.array([2.0, 20, 80, 150, 100, 50, 20, 5])]
    assert bolus_arrival(curve, 0.1) == 7
    assert baseline_frame_count(curve, 0.1) == 6
    assert baseline_frame_count(np.r_[40.0, 200.0, 100.0], 0.1) == 1
    assert bolus_arrival(np.full(10, 3.0)) == 0


def test_synthetic_ctp_maps_match_the_simulated_parameters(ctp):
    series, truth = ctp
    res = compute_maps(series, DT)
    brain = res.brain
    inplane = np.zeros((3, 3, 3), bool)
    inplane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    core = ndimage.binary_erosion(truth["brain"], inplane, iterations=2)  # all but the 2 voxels next to the skull
    assert brain[core].all() and not brain[series[..., 0] > 500].any()  # brain in, skull out
    # The automatic AIF comes from the artery, not from the vein; the baseline ends before the bolus (t0 = 3 s).
    assert truth["artery"][tuple(res.aif_voxels.T)].all()
    assert res.baseline_frames <= 3
    np.testing.assert_allclose(res.aif, gv(np.arange(series.shape[3]) * DT), atol=1.5)
    m = res.maps
    normal, lesion = truth["normal"] & brain, truth["lesion"] & brain
    ratio = lambda name: np.median(m[name][lesion]) / np.median(m[name][normal])  # noqa: E731
    assert ratio("cbv") == pytest.approx(15 * 10 / (50 * 4), rel=0.05)  # CBV = CBF * MTT: exact from areas
    assert np.median(m["cbv"][normal]) == pytest.approx(50 * 4 / 60, rel=0.05)
    assert 0.2 < ratio("cbf") < 0.45  # true 0.3; truncation lowers the short-MTT (normal) CBF more
    # Truncation lowers the CBF of short transit times (here MTT 4 s: about a third lower at 0.1); weaker
    # truncation brings it towards the truth.
    assert 0.55 * 50 < np.median(m["cbf"][normal]) < 0.8 * 50
    weak = compute_maps(series, DT, PerfusionSettings().with_method("bcsvd", 0.02))
    assert abs(np.median(weak.maps["cbf"][normal]) - 50) < 0.6 * abs(np.median(m["cbf"][normal]) - 50)
    assert np.median(m["tmax"][lesion]) - np.median(m["tmax"][normal]) == pytest.approx(3.5, abs=DT)
    assert np.median(m["ttp"][lesion]) > np.median(m["ttp"][normal]) + 3
    assert all(np.all(v[~brain] == 0) and v.dtype == np.float32 for v in m.values())


def test_given_aif_mask_curve_and_vof_scaling(ctp):
    series, truth = ctp
    auto = compute_maps(series, DT)
    by_mask = compute_maps(series, DT, aif_mask=truth["artery"])
    np.testing.assert_allclose(by_mask.aif, gv(np.arange(series.shape[3]) * DT), atol=1.0)
    by_curve = compute_maps(series, DT, aif_curve=gv(np.arange(series.shape[3]) * DT) + 40.0)  # HU, baseline 40
    np.testing.assert_allclose(by_curve.maps["cbf"], by_mask.maps["cbf"], rtol=0.02, atol=0.5)
    assert by_curve.aif_voxels.shape == (0, 3)
    np.testing.assert_allclose(auto.maps["cbv"], by_mask.maps["cbv"], rtol=0.05, atol=0.05)
    # VOF: the vein carries the same tracer amount (area) as the artery here, so the AIF is scaled by ~1,
    # and after halving the AIF mask's enhancement (partial volume) VOF scaling restores it.
    vof = compute_maps(series, DT, PerfusionSettings(vof_scaling=True), aif_mask=truth["artery"])
    assert vof.vof is not None and vof.aif_scale == pytest.approx(1.0, abs=0.05)
    t = np.arange(series.shape[3]) * DT
    half = compute_maps(series, DT, PerfusionSettings(vof_scaling=True), aif_curve=0.5 * gv(t))
    assert half.aif_scale == pytest.approx(2.0, rel=0.05)
    np.testing.assert_allclose(np.median(half.maps["cbv"][truth["normal"]]), 50 * 4 / 60, rtol=0.06)
    with pytest.raises(DataError, match="no voxel"):
        compute_maps(series, DT, aif_mask=np.zeros(series.shape[:3]))
    with pytest.raises(DataError, match="does not enhance"):
        compute_maps(series, DT, aif_mask=series[..., 0] < -500)  # air


def test_maps_do_not_depend_on_chunking_or_memory_order(ctp):
    series, _ = ctp
    ref = compute_maps(series, DT, PerfusionSettings(chunk_voxels=8192))
    small = compute_maps(series, DT, PerfusionSettings(chunk_voxels=37))
    c_order = compute_maps(np.ascontiguousarray(series), DT)
    for name in ref.maps:
        np.testing.assert_allclose(small.maps[name], ref.maps[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c_order.maps[name], ref.maps[name], rtol=1e-5, atol=1e-5)
    # The smoothed path (exact and tiled Gaussian) reads frames of either memory order alike.
    for sigma_mm in (2.0, 14.0):
        settings = PerfusionSettings(spatial_sigma_mm=sigma_mm)
        fortran = compute_maps(np.asfortranarray(series), DT, settings, spacing=(2.0, 2.0, 5.0))
        c_order = compute_maps(np.ascontiguousarray(series), DT, settings, spacing=(2.0, 2.0, 5.0))
        for name in fortran.maps:
            np.testing.assert_allclose(c_order.maps[name], fortran.maps[name], rtol=1e-5, atol=1e-5)


def test_spatial_and_temporal_smoothing_reduce_noise_and_keep_the_level():
    series, truth = make_ctp(noise=8.0, seed=3)
    spacing = (2.0, 2.0, 5.0)  # sigma 2 mm = 1 voxel
    raw = compute_maps(series, DT)
    smooth = compute_maps(series, DT, PerfusionSettings(spatial_sigma_mm=2.0, smoothing_sigma_s=1.0), spacing=spacing)
    clean = compute_maps(make_ctp()[0], DT, PerfusionSettings(smoothing_sigma_s=1.0))
    # Normal tissue at least 3 sigma from anything else (lesion, vessels, edge of the brain).
    other = ~truth["normal"]
    far = truth["normal"] & ~ndimage.binary_dilation(other, np.ones((7, 7, 1), bool))
    assert far.sum() > 300
    for name in ("cbf", "cbv", "tmax"):
        assert np.std(smooth.maps[name][far]) < 0.5 * np.std(raw.maps[name][far])
        # Smoothing the noisy data lands near the noise-free value (raw CBF is biased up by noise peaks).
        assert np.median(smooth.maps[name][far]) == pytest.approx(np.median(clean.maps[name][far]), rel=0.15)
    # Vessels do not bleed into their neighbours: tissue next to the artery keeps tissue-like CBV.
    near_artery = ndimage.binary_dilation(truth["artery"], np.ones((3, 3, 1), bool)) & truth["normal"]
    assert np.median(smooth.maps["cbv"][near_artery]) < 1.5 * np.median(smooth.maps["cbv"][far])
    with pytest.raises(ConfigError, match="spacing"):
        compute_maps(series, DT, PerfusionSettings(spatial_sigma_mm=2.0))


def _in_plane_gaussian(field: np.ndarray, mask: np.ndarray, sigma_yx: tuple[float, float]) -> np.ndarray:
    from strokelab.perfusion.maps import _InPlaneGaussian

    smooth = _InPlaneGaussian(mask, sigma_yx)
    slab = smooth.buffer()
    slab[:, : field.shape[1], : field.shape[2]] = field
    return smooth(slab)


def test_in_plane_gaussian_is_the_plain_gaussian_when_narrow_and_close_to_it_when_tiled():
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 197, 183), bool)
    mask[:, 10:190, 5:180] = True
    noise = rng.normal(size=mask.shape).astype(np.float32)
    # Narrow (< 6 voxels SD): no tiles, exactly scipy's Gaussian with zeros beyond the slab.
    exact = ndimage.gaussian_filter(noise, (0, 2.5, 4.0), mode="constant", truncate=3.0)
    np.testing.assert_allclose(_in_plane_gaussian(noise, mask, (2.5, 4.0)), exact[mask], atol=1e-6)
    # Wide (15.6 voxels, 7 mm on 0.45 mm voxels: tiles of 5): the impulse response has the requested SD
    # wherever the impulse falls relative to the tiles, and smoothed noise matches the plain Gaussian.
    sigma = 7.0 / 0.45
    for cy, cx in ((98, 90), (100, 93), (102, 91)):
        impulse = np.zeros(mask.shape, np.float32)
        impulse[1, cy, cx] = 1.0
        response = _in_plane_gaussian(impulse, mask, (sigma, sigma))
        _, yy, xx = np.nonzero(mask)
        total = response.sum()
        assert total == pytest.approx(1.0, abs=0.02)
        sd_y = np.sqrt(np.sum(response * (yy - cy) ** 2) / total)
        sd_x = np.sqrt(np.sum(response * (xx - cx) ** 2) / total)
        assert sd_y == pytest.approx(sigma, rel=0.03) and sd_x == pytest.approx(sigma, rel=0.03)
    # White noise (a raw CTP voxel's): the same noise reduction, nearly the same values (aliasing by the
    # tiles is the difference); a field correlated over 4 voxels: the same values.
    exact = ndimage.gaussian_filter(noise, (0, sigma, sigma), mode="constant", truncate=3.0)[mask]
    tiled = _in_plane_gaussian(noise, mask, (sigma, sigma))
    assert tiled.std() == pytest.approx(exact.std(), rel=0.03)
    assert np.corrcoef(tiled, exact)[0, 1] > 0.99
    field = ndimage.gaussian_filter(noise, (0, 4, 4))
    exact = ndimage.gaussian_filter(field, (0, sigma, sigma), mode="constant", truncate=3.0)[mask]
    tiled = _in_plane_gaussian(field, mask, (sigma, sigma))
    assert np.abs(tiled - exact).max() < 0.1 * exact.std()
    assert np.corrcoef(tiled, exact)[0, 1] > 0.9999


def test_phantom_case_maps_agree_with_its_truth():
    """On the project's digital stroke phantom (noise-free CTP), the deconvolved maps rank voxels like the
    phantom's true maps and find its Tmax > 6 s region."""
    cfg = PhantomConfig(shape=(64, 72, 12), spacing=(3.0, 3.0, 8.0), n_frames=30, frame_interval_s=1.5, ctp_noise_hu=(0.0, 0.0))
    images = generate_case(0, cfg)
    series = np.asarray(images["ctp"].dataobj)
    truth = {k: np.asarray(images[f"truth_{k}"].dataobj) for k in ("cbf", "tmax", "tissue")}
    res = compute_maps(series, cfg.frame_interval_s)
    tissue = np.isin(truth["tissue"], (4, 5))  # grey and white matter
    assert (res.brain & tissue).sum() > 0.95 * tissue.sum()
    assert not res.brain[truth["tissue"] == 2].any()  # no bone
    sel = tissue & res.brain
    assert stats.spearmanr(res.maps["cbf"][sel], truth["cbf"][sel])[0] > 0.8
    assert stats.spearmanr(res.maps["tmax"][sel], truth["tmax"][sel])[0] > 0.6
    hypo, found = truth["tmax"][sel] > 6, res.maps["tmax"][sel] > 6
    assert (hypo & found).sum() > 0.9 * hypo.sum() and (~hypo & ~found).sum() > 0.9 * (~hypo).sum()


def test_brain_mask_rejects_non_head_input():
    with pytest.raises(DataError, match="no brain"):
        compute_maps(np.full((20, 20, 4, 12), -1000, np.int16), DT)
    with pytest.raises(DataError, match="frames"):
        compute_maps(np.zeros((20, 20, 4, 5), np.int16), DT)
    assert not brain_mask(np.full((10, 10, 3), 1000.0)).any()


# ==================================================================================================
# Command line
# ==================================================================================================
def _write_ctp(path, series, dt=DT, affine=None):
    affine = oblique_affine(spacing=(1.0, 1.0, 5.0), shape=series.shape[:3]) if affine is None else affine
    img = nib.Nifti1Image(series, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_zooms((1.0, 1.0, 5.0, dt))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return affine


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "strokelab.perfusion", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _one_error_line(out, *needles):
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def ctp_file(tmp_path_factory, ctp):
    d = tmp_path_factory.mktemp("ctp")
    series, truth = ctp
    affine = _write_ctp(d / "case_ctp.nii.gz", series)
    nib.save(nib.Nifti1Image(truth["artery"].astype(np.uint8), affine), d / "aif.nii.gz")
    return d, affine


def test_cli_writes_five_maps_with_the_source_affine_and_the_aif(ctp_file, tmp_path):
    d, affine = ctp_file
    out = _cli(d / "case_ctp.nii.gz", "--out", tmp_path / "maps", "--method", "osvd")
    assert out.returncode == 0, out.stderr
    src = nib.load(d / "case_ctp.nii.gz")
    for name in ("cbf", "cbv", "mtt", "tmax", "ttp"):
        img = nib.load(tmp_path / "maps" / f"case_ctp_{name}.nii.gz")
        assert img.shape == src.shape[:3] and img.get_data_dtype() == np.float32
        assert np.array_equal(img.affine, src.affine)
        assert np.array_equal(img.get_sform(), src.get_sform()) and np.array_equal(img.get_qform(), src.get_qform())
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [f"case_ctp_{n}.nii.gz" for n in ("cbf", "cbv", "mtt", "tmax", "ttp")] + ["case_ctp_aif.csv", "case_ctp_aif.json"]
    )
    table = np.loadtxt(tmp_path / "maps" / "case_ctp_aif.csv", delimiter=",", skiprows=1)
    assert table.shape == (src.shape[3], 2) and table[:, 1].max() > 200
    info = json.loads((tmp_path / "maps" / "case_ctp_aif.json").read_text())
    assert info["settings"]["deconvolution"]["method"] == "osvd" and len(info["aif_voxels_ijk"]) == 5
    # A given AIF mask and --dt work too.
    out = _cli(d / "case_ctp.nii.gz", "--out", tmp_path / "m2", "--aif-mask", d / "aif.nii.gz", "--dt", "1.0")
    assert out.returncode == 0, out.stderr
    cbf = nib.load(tmp_path / "m2" / "case_ctp_cbf.nii.gz").get_fdata()
    assert np.isfinite(cbf).all() and cbf.max() > 0


def _bad_inputs(d, tmp):
    """(arguments, expected words in the error line) per user error."""
    src = d / "case_ctp.nii.gz"
    series = np.asarray(nib.load(src).dataobj)
    affine = nib.load(src).affine
    trunc = tmp / "trunc.nii.gz"
    trunc.write_bytes(src.read_bytes()[:-2000])
    three_d = tmp / "three_d.nii.gz"
    nib.save(nib.Nifti1Image(series[..., 0], affine), three_d)
    no_dt = tmp / "no_dt.nii.gz"
    img = nib.Nifti1Image(series, affine)
    img.header.set_zooms((1.0, 1.0, 5.0, 0.0))
    nib.save(img, no_dt)
    wrong = tmp / "wrong_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), affine), wrong)
    empty = tmp / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(series.shape[:3], np.uint8), affine), empty)
    return {
        "missing": ([tmp / "nope.nii.gz"], ["nope.nii.gz", "missing"]),
        "truncated": ([trunc], ["trunc.nii.gz", "truncated"]),
        "3d": ([three_d], ["three_d.nii.gz", "4D"]),
        "no frame interval": ([no_dt], ["no_dt.nii.gz", "--dt"]),
        "aif mask shape": ([src, "--aif-mask", wrong], ["wrong_shape.nii.gz", "shape"]),
        "aif mask empty": ([src, "--aif-mask", empty], ["empty.nii.gz", "empty"]),
        "aif mask missing": ([src, "--aif-mask", tmp / "gone.nii.gz"], ["gone.nii.gz", "missing"]),
        "bad method": ([src, "--method", "fft"], ["--method"]),
    }


def test_cli_user_errors_end_in_one_line_and_write_nothing(ctp_file, tmp_path):
    d, _ = ctp_file
    cases = _bad_inputs(d, tmp_path)
    for name, (args, needles) in cases.items():
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        out = _cli(*args, "--out", out_dir)
        _one_error_line(out, *needles)
        assert not out_dir.exists() or not any(out_dir.iterdir()), name
    # The header without a frame interval is fine once --dt is given.
    out = _cli(cases["no frame interval"][0][0], "--out", tmp_path / "with_dt", "--dt", "1")
    assert out.returncode == 0, out.stderr


def test_non_finite_values_are_refused(ctp):
    series, _ = ctp
    bad = series.astype(np.float32)
    bad[20, 22, 3, 30] = np.nan  # a brain voxel, late frame
    for settings, kw in ((PerfusionSettings(), {}), (PerfusionSettings(spatial_sigma_mm=2.0), {"spacing": (1.0, 1.0, 5.0)})):
        with pytest.raises(DataError, match="NaN"):
            compute_maps(bad, DT, settings, source="x.nii.gz", **kw)

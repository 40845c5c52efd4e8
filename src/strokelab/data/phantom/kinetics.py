"""Contrast kinetics and CT rendering: normal perfusion, the arterial input function (AIF), tissue and
vessel enhancement curves, the NCCT, CTA and 4D CTP, and the perfusion maps.

Tissue enhancement follows the indicator-dilution model
``C(t) = (rho/kH) * CBF * (AIF (x) h_disp (x) R)(t - delay)`` with an exponential residue function
``R(t) = exp(-t/MTT)`` and an exponential dispersion kernel ``h_disp`` (constants in
:mod:`strokelab.perfusion.physics`). Maps are deconvolved from the simulated CTP as from a real one
(``maps="deconvolved"``) or are the truth blurred, with noise (``maps="vendor"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from strokelab.data.phantom.anatomy import BONE, CSF, GM, SOFT, WM, Head, _gauss, _smooth_field
from strokelab.data.phantom.config import PhantomConfig
from strokelab.perfusion.physics import K_H, RHO_TISSUE, gamma_variate

if TYPE_CHECKING:
    from strokelab.data.phantom.lesion import Ischaemia

# --- CT numbers (HU) -----------------------------------------------------------------------------
HU_AIR = -1000.0
HU_SOFT = 30.0  # scalp / soft tissue of the skull base
HU_BONE_TABLE = 1000.0  # compact outer and inner tables of the skull
HU_BONE_DIPLOE = 700.0  # cancellous diploe between the tables
HU_CSF = 5.0
HU_GM = 40.0
HU_WM = 30.0
HU_BLOOD = 40.0  # unenhanced blood (also the AIF baseline)
HU_CLOT_EXTRA = 28.0  # a fresh thrombus is hyperdense ("dense artery sign"): ~70 HU

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax")
# Per centre: a map-processing blur offset (voxels) of the vendor-like maps.
_CENTRE_BLUR = {"C1": 0.0, "C2": 0.2, "C3": 0.35, "C4": 0.1}


def _dispersed_residue(t: np.ndarray, tau: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """(h_tau (x) R)(t) for h_tau(t) = exp(-t/tau)/tau and R(t) = exp(-t/MTT); its integral is MTT."""
    diff = mtt - tau
    near = np.abs(diff) < 1e-3
    safe = np.where(near, 1.0, diff)
    general = mtt / safe * (np.exp(-t / mtt) - np.exp(-t / tau))
    return np.where(near, t / tau * np.exp(-t / tau), general)


def _tmax_dispersion(tau: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """Time to the maximum of (h_tau (x) R): tau*MTT*ln(MTT/tau)/(MTT - tau) (-> tau when equal)."""
    diff = mtt - tau
    near = np.abs(diff) < 1e-3
    safe = np.where(near, 1.0, diff)
    return np.where(near, tau, tau * mtt * np.log(mtt / tau) / safe)


def normal_perfusion(
    rng: np.random.Generator, cfg: PhantomConfig, head: Head, age: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CBF, CBV, bolus delay) of the healthy brain: grey/white values with a smooth texture (~10 %),
    CBF lower with age, arrival later towards the periphery and watersheds (0-1 s)."""
    shape, spacing, k, X, Y, Z = head.shape, head.spacing, head.k, head.X, head.Y, head.Z
    tex1 = _smooth_field(rng, shape, 6.0 * k, spacing)
    tex2 = 0.6 * tex1 + 0.8 * _smooth_field(rng, shape, 6.0 * k, spacing)
    age_f = 1.0 - 0.003 * (age - 65)
    is_gm = head.tissue == GM
    cbf0 = np.where(is_gm, cfg.gm_cbf, cfg.wm_cbf) * age_f * np.exp(0.10 * tex1 - 0.005)
    cbv0 = np.where(is_gm, cfg.gm_cbv, cfg.wm_cbv) * np.exp(0.08 * tex2 - 0.0032)
    radial = np.sqrt(X**2 + Y**2 + (1.4 * Z) ** 2) / 90.0
    delay0 = np.clip(0.15 + 0.55 * radial + 0.12 * _smooth_field(rng, shape, 12.0 * k, spacing), 0.0, 1.0)
    return cbf0, cbv0, delay0


def baseline_hu(rng: np.random.Generator, head: Head, core: np.ndarray, onset_to_ct: float) -> np.ndarray:
    """Noise-free CT numbers before contrast: tissue values with texture, bone with a diploe, and the
    early ischaemic hypodensity of the core (net water uptake, ~1.2 HU/h)."""
    shape, spacing, k, tissue, brain = head.shape, head.spacing, head.k, head.tissue, head.brain
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    tex_hu = _smooth_field(rng, shape, 4.0 * k, spacing)
    hu[tissue == SOFT] = HU_SOFT
    hu[tissue == CSF] = HU_CSF
    hu[tissue == GM] = HU_GM
    hu[tissue == WM] = HU_WM
    hu += np.where(brain, 1.2 * tex_hu, 0)
    bone = tissue == BONE
    # Diploe in the middle of the calvarium (relative position 0..1 across the skull thickness).
    rel = np.clip((head.depth - head.t_scalp) / head.t_skull, 0, 1)
    hu[bone] = HU_BONE_DIPLOE + (HU_BONE_TABLE - HU_BONE_DIPLOE) * np.abs(2 * rel[bone] - 1) ** 0.7 + 60 * tex_hu[bone]
    del rel, tex_hu
    hu -= min(1.2 * onset_to_ct / 60.0, 7.0) * _gauss(core, 0.7 * spacing.min() / spacing)
    return hu


def add_vessels(hu: np.ndarray, flat: np.ndarray, frac: dict[str, np.ndarray]) -> None:
    """Blend unenhanced blood (and the denser clot) into ``hu`` (in place) by the vessels' fractions."""
    vessel_total = np.clip(frac["artery"] + frac["occluded"] + frac["clot"] + frac["vein"], 0, 1)
    hu_flat = hu.ravel()  # a view
    hu_flat[flat] = (1 - vessel_total) * hu_flat[flat] + vessel_total * HU_BLOOD + frac["clot"] * HU_CLOT_EXTRA


@dataclass
class CtImages:
    ncct: np.ndarray  # int16 HU
    cta: np.ndarray  # int16 HU
    ctp: np.ndarray  # int16 HU, time last
    aif_onset: float  # s
    aif_peak: float  # HU above baseline


def render_ct(
    rng: np.random.Generator,
    cfg: PhantomConfig,
    head: Head,
    hu: np.ndarray,
    flat: np.ndarray,
    frac: dict[str, np.ndarray],
    isch: Ischaemia,
    ctp_noise: float,
    ncct_noise: float,
) -> CtImages:
    """The AIF (gamma variate + recirculation), tissue and vessel curves, and the CTP, CTA and NCCT."""
    shape, brain = head.shape, head.brain
    cbf, mtt, tau, delay, delay_max = isch.cbf, isch.mtt, isch.tau, isch.delay, isch.delay_max
    # Arterial input function: gamma variate + a small, later, broader recirculation.
    aif_onset = rng.uniform(*cfg.aif_onset_s)
    aif_peak = rng.uniform(*cfg.aif_peak_hu)
    alpha, beta = rng.uniform(2.5, 4.0), rng.uniform(1.0, 1.6)
    t_peak = aif_onset + alpha * beta
    rec_amp, rec_onset = rng.uniform(0.10, 0.18), t_peak + rng.uniform(5.0, 8.0)

    def aif(t: np.ndarray) -> np.ndarray:
        return aif_peak * (gamma_variate(t, aif_onset, alpha, beta) + rec_amp * gamma_variate(t, rec_onset, 3.0, 2.5))

    frames = np.arange(cfg.n_frames, dtype=np.float64) * cfg.frame_interval_s
    # Lookup table of (AIF (x) h_tau (x) R_MTT)(t) on a fine time grid, for a grid of (tau, MTT):
    # a voxel's curve is a gather from this table at (t_frame - delay) -- no per-voxel loops.
    dt = 0.05
    n_fine = int(np.ceil(frames[-1] / dt)) + 2
    t_fine = np.arange(n_fine) * dt
    taus = 0.25 + 0.25 * np.arange(13)  # 0.25 .. 3.25 s
    dlog = 0.02
    mtts = np.exp(np.arange(0.0, np.log(40.0) + dlog, dlog))  # 1 .. 40 s, 2 % steps
    kernel = _dispersed_residue(t_fine[None, None, :], taus[:, None, None], mtts[None, :, None])
    nfft = 1 << int(np.ceil(np.log2(2 * n_fine)))
    table = (
        np.fft.irfft(np.fft.rfft(aif(t_fine), nfft)[None, None, :] * np.fft.rfft(kernel, nfft, axis=-1), nfft, axis=-1)[
            ..., :n_fine
        ]
        * dt
    )
    table = table.astype(np.float32).reshape(-1)
    del kernel

    bflat = np.flatnonzero(brain)
    tau_i = np.clip(np.rint((tau.ravel()[bflat] - 0.25) / 0.25), 0, len(taus) - 1).astype(np.int64)
    mtt_i = np.clip(np.rint(np.log(mtt.ravel()[bflat]) / dlog), 0, len(mtts) - 1).astype(np.int64)
    base = (tau_i * len(mtts) + mtt_i) * n_fine
    # Tissue enhancement (HU) = (rho/kH) * CBF[1/s per ml/g] * (AIF (x) h (x) R)(t - delay)
    scale = (RHO_TISSUE / K_H) * cbf.ravel()[bflat] / 6000.0
    bdelay = delay.ravel()[bflat]
    del tau_i, mtt_i

    def tissue_enhancement(times: np.ndarray) -> np.ndarray:
        ti = np.clip(np.rint((times[None, :] - bdelay[:, None]) / dt), 0, n_fine - 1).astype(np.int64)
        return table[base[:, None] + ti] * scale[:, None]

    def vessel_curves(times: np.ndarray) -> np.ndarray:
        """Enhancement per vessel voxel (n_head, n_times): arteries on time, occluded ones late and faint,
        veins later and dispersed (venous output function)."""
        art = aif(times)
        occl = 0.3 * np.interp(
            times - 0.7 * delay_max,
            t_fine,
            np.convolve(aif(t_fine), np.exp(-t_fine / 2.5) / 2.5)[:n_fine] * dt,
        )
        vein = 1.1 * np.interp(times - 5.0, t_fine, np.convolve(aif(t_fine), np.exp(-t_fine / 3.0) / 3.0)[:n_fine] * dt)
        return (
            frac["artery"][:, None] * art[None, :]
            + frac["occluded"][:, None] * occl[None, :]
            + frac["vein"][:, None] * vein[None, :]
        ).astype(np.float32)

    # CTP: baseline HU + enhancement + independent Gaussian noise per frame (inside the head only;
    # air stays -1000 as scanners clamp it, which also keeps the files small).
    ctp = np.repeat(hu.reshape(-1, 1), cfg.n_frames, axis=1)
    ctp[bflat] += tissue_enhancement(frames)
    ctp[flat] += vessel_curves(frames)
    ctp[flat] += rng.normal(0, ctp_noise, (flat.size, cfg.n_frames)).astype(np.float32)
    ctp = np.clip(np.rint(ctp), -1024, 3071).astype(np.int16).reshape(*shape, cfg.n_frames)

    # CTA: a separate arterial-phase acquisition (bigger bolus: vessels ~1.3x brighter), lower noise.
    t_cta = np.array([t_peak + 1.0])
    cta = hu.reshape(-1).copy()
    cta[bflat] += tissue_enhancement(t_cta)[:, 0]
    cta[flat] += 1.3 * vessel_curves(t_cta)[:, 0]
    cta[flat] += rng.normal(0, 0.6 * ctp_noise, flat.size).astype(np.float32)
    cta = np.clip(np.rint(cta), -1024, 3071).astype(np.int16).reshape(shape)

    ncct = hu.reshape(-1).copy()
    ncct[flat] += rng.normal(0, ncct_noise, flat.size).astype(np.float32)
    ncct = np.clip(np.rint(ncct), -1024, 3071).astype(np.int16).reshape(shape)
    return CtImages(ncct, cta, ctp, aif_onset, aif_peak)


def perfusion_maps(
    rng: np.random.Generator, cfg: PhantomConfig, head: Head, isch: Ischaemia, ctp: np.ndarray, centre: str, source: str
) -> dict[str, np.ndarray]:
    """CBF, CBV, MTT and Tmax maps (float32, 0 outside the brain, > 0 inside it)."""
    shape, spacing, brain = head.shape, head.spacing, head.brain
    # Perfusion maps as a vendor package would produce them: blurred (normalised convolution inside
    # the brain, so nothing bleeds in from outside), multiplicative and additive noise, > 0 in brain.
    # They are drawn in both modes, so that every other image is the same with maps="deconvolved".
    blur = rng.uniform(*cfg.map_blur_vox) + _CENTRE_BLUR[centre]
    sig = np.array([blur, blur * spacing[0] / spacing[1], 0.35])
    bmask = brain.astype(np.float32)
    norm = np.maximum(_gauss(bmask, sig), 1e-3)
    maps: dict[str, np.ndarray] = {}
    additive = {"cbf": 2.0, "cbv": 0.15, "mtt": 0.3, "tmax": 0.35}
    floor = {"cbf": 0.5, "cbv": 0.05, "mtt": 0.2, "tmax": 0.05}
    for name, true in (("cbf", isch.cbf), ("cbv", isch.cbv), ("mtt", isch.mtt), ("tmax", isch.tmax)):
        smooth = _gauss(true * bmask, sig) / norm
        mult = np.exp(cfg.map_noise * _smooth_field(rng, shape, 0.8 * spacing[0], spacing))
        add = additive[name] * _smooth_field(rng, shape, 0.8 * spacing[0], spacing)
        noisy = np.maximum(smooth * mult + add, floor[name])
        maps[name] = np.where(brain, noisy, 0.0).astype(np.float32)
    del norm, bmask
    if cfg.maps == "deconvolved":
        # As from a real CTP: bcSVD, automatic AIF, smoothing; over the phantom's brain (grey and white
        # matter), so that the maps cover the same voxels as the truth. Deterministic: no random draws.
        from strokelab.perfusion.derive import derive_maps

        maps = derive_maps(ctp, cfg.frame_interval_s, tuple(spacing), brain=brain, source=source)
    return maps

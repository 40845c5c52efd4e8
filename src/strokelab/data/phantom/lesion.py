"""The stroke and its course: patient draws, the severity field, ischaemic perfusion, the clinical course
and hidden reperfusion, tissue fate (the final infarct), the outcome, and the follow-up DWI and ADC.

How the final infarct arises (the part a predictor has to learn): a smooth severity field ``s`` in [0, 1]
peaks near the centre of the occluded territory. Tmax, MTT and the bolus dispersion rise with ``s``; CBF
falls with ``s``; CBV is preserved or slightly raised in the penumbra (collaterals) and falls in the core.
Hypoperfusion is Tmax > 6 s; the core is CBF below 30 % of the voxel's own normal CBF. A hidden
reperfusion variable ``r`` (driven by treatment and times in the clinical table, plus chance) decides how
deep into the penumbra the infarct reaches: penumbra voxels whose *vulnerability* (severity, minus a bonus
for preserved CBV, plus a little hidden noise) exceeds ``theta(r)`` infarct. Then the lesion grows a
little at its border, and some cases get small embolic lesions elsewhere (some with a perfusion
signature, some without).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from strokelab.data.phantom.anatomy import _TERRITORIES, AIR, BONE, CSF, GM, SOFT, WM, Head, _gauss, _smooth_field
from strokelab.data.phantom.config import PhantomConfig
from strokelab.data.phantom.kinetics import _tmax_dispersion

# --- definitional thresholds (used for the truth labels) ---------------------------------------
TMAX_HYPOPERFUSION_S = 6.0
CORE_RELATIVE_CBF = 0.30

# --- MRI (follow-up) -----------------------------------------------------------------------------
ADC_GM, ADC_WM, ADC_CSF, ADC_LESION = 850.0, 750.0, 3000.0, 450.0  # 1e-6 mm^2/s
DWI_B = 1000.0  # s/mm^2

CENTRES = ("C1", "C2", "C3", "C4")
_CENTRE_P = (0.35, 0.30, 0.20, 0.15)
# Per centre: relative CT noise level in [0, 1] of the configured range.
_CENTRE_NOISE = {"C1": 0.25, "C2": 0.55, "C3": 0.8, "C4": 0.4}

DEMOGRAPHIC_COLUMNS = (
    "age",
    "sex",
    "centre",
    "nihss_admission",
    "mrs_admission",
    "onset_to_ct_min",
    "thrombolysis",
    "thrombectomy",
    "ct_to_reperfusion_min",
)
OUTCOME_COLUMNS = ("mrs_3month", "nihss_24h")


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@dataclass
class Patient:
    """The patient-level draws of a case."""

    age: float
    sex: str
    centre: str
    onset_to_ct: float  # min
    kind: str  # "typical" or "mild" (distal occlusion)
    territory: str  # ACA, MCA or PCA
    side: str  # L or R
    tilt: float  # gantry tilt, degrees
    ctp_noise: float  # HU
    ncct_noise: float  # HU


def draw_patient(rng: np.random.Generator, cfg: PhantomConfig) -> Patient:
    age = float(np.clip(rng.normal(70, 12), 25, 95))
    sex = "M" if rng.random() < 0.52 else "F"
    centre = CENTRES[int(rng.choice(len(CENTRES), p=_CENTRE_P))]
    onset_to_ct = float(np.clip(rng.lognormal(np.log(150), 0.7), 30, 1440))
    kind = "mild" if rng.random() < cfg.mild_fraction else "typical"
    w = np.array(cfg.territory_weights, dtype=float)
    territory = _TERRITORIES[int(rng.choice(3, p=w / w.sum()))]
    side = "L" if rng.random() < 0.5 else "R"
    tilt = cfg.tilt_deg + rng.uniform(-cfg.tilt_jitter_deg, cfg.tilt_jitter_deg)
    noise_q = float(np.clip(_CENTRE_NOISE[centre] + rng.normal(0, 0.12), 0, 1))
    ctp_noise = cfg.ctp_noise_hu[0] + noise_q * (cfg.ctp_noise_hu[1] - cfg.ctp_noise_hu[0])
    ncct_noise = cfg.ncct_noise_hu[0] + noise_q * (cfg.ncct_noise_hu[1] - cfg.ncct_noise_hu[0])
    return Patient(age, sex, centre, onset_to_ct, kind, territory, side, tilt, ctp_noise, ncct_noise)


@dataclass
class Severity:
    s: np.ndarray  # severity in [0, 1] inside the brain, float32
    s_peak: float
    n_emboli: int
    silent_emboli: np.ndarray  # embolic lesions without a perfusion signature (bool)


def severity_field(rng: np.random.Generator, cfg: PhantomConfig, head: Head, patient: Patient) -> Severity:
    """The smooth severity field of the occluded territory, plus small emboli elsewhere."""
    shape, spacing, k = head.shape, head.spacing, head.k
    X, Y, Z, brain = head.X, head.Y, head.Z, head.brain
    occ_side = 1 if patient.side == "R" else 0
    occ_code = 1 + _TERRITORIES.index(patient.territory) + 3 * occ_side
    terr = head.territory_map == occ_code
    vs = spacing / k  # voxel size in nominal mm
    terr_soft = _gauss(terr, 4.0 / vs)  # severity fades over a few mm beyond the territory border
    tidx = np.nonzero(terr)
    if patient.kind == "mild":  # distal branch occlusion: small focus anywhere in the territory
        j = int(rng.integers(len(tidx[0]))) if len(tidx[0]) else 0
        focus = np.array([X[tidx][j], Y[tidx][j], Z[tidx][j]]) if len(tidx[0]) else np.zeros(3)
        s_peak = rng.uniform(0.35, 0.62)
        length = rng.uniform(10, 22)
    else:
        centroid = np.array([X[tidx].mean(), Y[tidx].mean(), Z[tidx].mean()]) if len(tidx[0]) else np.zeros(3)
        focus = centroid + rng.normal(0, 6.0, 3)
        # Longer onset-to-CT: deeper ischaemia on average (core grows with time).
        s_peak = rng.uniform(0.78, 1.08) + 0.04 * np.log(patient.onset_to_ct / 150.0)
        length = rng.uniform(22, 46)
    del tidx
    dist = np.sqrt((X - focus[0]) ** 2 + (Y - focus[1]) ** 2 + (Z - focus[2]) ** 2)
    sev_noise1 = _smooth_field(rng, shape, 8.0 * k, spacing)
    sev_noise2 = _smooth_field(rng, shape, 8.0 * k, spacing)
    falloff = np.exp(-((dist / length) ** 3))  # flat-topped: a plateau of severe ischaemia, then falls off
    s = terr_soft * np.clip(s_peak * falloff * (1 + 0.15 * sev_noise1) + 0.06 * sev_noise2, 0, 1)
    del dist, falloff, sev_noise1, sev_noise2, terr_soft

    # Small embolic lesions elsewhere: some with a perfusion signature (a local severity bump, so they
    # show on CTP), some without (they appear only at follow-up).
    n_emboli = int(rng.integers(1, 4)) if rng.random() < cfg.emboli_fraction else 0
    silent_emboli = np.zeros(shape, dtype=bool)
    bidx = np.nonzero(brain)
    for _ in range(n_emboli):
        j = int(rng.integers(len(bidx[0])))
        p = np.array([X[bidx][j], Y[bidx][j], Z[bidx][j]])
        rad = rng.uniform(3.0, 7.0)
        d2 = ((X - p[0]) ** 2 + (Y - p[1]) ** 2 + (Z - p[2]) ** 2) / rad**2
        if rng.random() < 0.5:
            s = np.maximum(s, 0.98 * np.exp(-0.5 * d2 / 1.6))
        else:
            silent_emboli |= d2 <= 1.0
    del bidx
    s = np.where(brain, s, 0.0).astype(np.float32)
    return Severity(s, s_peak, n_emboli, silent_emboli)


@dataclass
class Ischaemia:
    """True perfusion of the case (0 outside the brain) and the definitional core / penumbra."""

    cbf: np.ndarray  # ml/100g/min
    cbv: np.ndarray  # ml/100g
    mtt: np.ndarray  # s
    delay: np.ndarray  # s, bolus arrival
    tau: np.ndarray  # s, bolus dispersion
    tmax: np.ndarray  # s
    core: np.ndarray
    hypo: np.ndarray
    penumbra: np.ndarray
    rcbv: np.ndarray  # relative CBV (for the vulnerability)
    delay_max: float


def ischaemia(
    rng: np.random.Generator,
    cfg: PhantomConfig,
    head: Head,
    s: np.ndarray,
    cbf0: np.ndarray,
    cbv0: np.ndarray,
    delay0: np.ndarray,
) -> Ischaemia:
    """Perfusion of the ischaemic brain from the normal one and the severity field."""
    brain = head.brain
    # A collateral field modulates everything: good collaterals keep CBF/CBV up and shorten the delay.
    coll = np.clip(_smooth_field(rng, head.shape, 10.0 * head.k, head.spacing), -2.5, 2.5)
    delay_max = rng.uniform(*cfg.delay_max_s)
    rcbf = np.clip((1.0 - 0.92 * s**1.4) * np.exp(0.10 * coll), 0.03, 1.15)
    # CBV: slightly raised in the penumbra (collateral vasodilation), collapsing in the core.
    rcbv = (1.0 + 0.25 * s * (1.0 + 0.5 * coll)) * (1.0 - 0.7 / (1.0 + np.exp(-(s - 0.8) / 0.05)))
    cbf = (cbf0 * rcbf).astype(np.float32)
    cbv = (cbv0 * rcbv).astype(np.float32)
    mtt = np.clip(60.0 * cbv / cbf, 1.0, 40.0).astype(np.float32)
    cbv = (cbf * mtt / 60.0).astype(np.float32)  # central volume theorem holds exactly
    delay = (delay0 + delay_max * s**0.8 * np.exp(-0.15 * coll)).astype(np.float32)
    tau = (0.25 + 2.5 * s).astype(np.float32)  # bolus dispersion on the collateral path
    tmax = (delay + _tmax_dispersion(tau, mtt)).astype(np.float32)
    core = brain & (rcbf < CORE_RELATIVE_CBF)
    hypo = brain & ((tmax > TMAX_HYPOPERFUSION_S) | core)
    penumbra = hypo & ~core
    for arr in (cbf, cbv, mtt, delay, tmax, tau):
        arr[~brain] = 0.0
    return Ischaemia(cbf, cbv, mtt, delay, tau, tmax, core, hypo, penumbra, rcbv, delay_max)


@dataclass
class Course:
    """Admission findings, treatment and the hidden reperfusion."""

    hypo_ml: float
    core_ml: float
    pen_ml: float
    deficit_w: float
    nihss_adm: int
    mrs_adm: int
    thrombolysis: int
    thrombectomy: int
    ct_to_rep: float | None
    reperfusion: float


def clinical_course(rng: np.random.Generator, patient: Patient, isch: Ischaemia, vox_ml: float) -> Course:
    hypo_ml, core_ml, pen_ml = isch.hypo.sum() * vox_ml, isch.core.sum() * vox_ml, isch.penumbra.sum() * vox_ml
    territory, side, onset_to_ct = patient.territory, patient.side, patient.onset_to_ct
    # Deficit per ml of hypoperfusion: largest for the (language-dominant) left MCA.
    deficit_w = {"MCA": 1.15 if side == "L" else 1.0, "ACA": 0.75, "PCA": 0.6}[territory]
    nihss_adm = int(np.clip(round(0.5 + 5.5 * np.log1p(hypo_ml / 8.0) * deficit_w + rng.normal(0, 2.0)), 0, 42))
    mrs_adm = int(np.clip(round(1.0 + nihss_adm / 6.0 + rng.normal(0, 0.6)), 0, 5))
    thrombolysis = int(onset_to_ct < 270 and rng.random() < 0.7)
    lvo = patient.kind == "typical" and hypo_ml > 15
    p_evt = (0.8 if territory == "MCA" else 0.35) if lvo else 0.08
    thrombectomy = int(rng.random() < p_evt)
    if thrombectomy:
        ct_to_rep: float | None = float(np.clip(rng.lognormal(np.log(80), 0.35), 25, 300))
    elif thrombolysis:
        ct_to_rep = float(np.clip(rng.lognormal(np.log(45), 0.3), 15, 180))
    else:
        ct_to_rep = None
    # Hidden reperfusion: treatment helps, delays hurt, chance matters (spontaneous recanalisation).
    latent = -1.5 + 2.6 * thrombectomy + 0.9 * thrombolysis - 0.25 * np.log(onset_to_ct / 150.0) + rng.normal(0, 0.9)
    if ct_to_rep is not None:
        latent -= 0.012 * (ct_to_rep - 60.0)
    reperfusion = _sigmoid(latent)
    return Course(hypo_ml, core_ml, pen_ml, deficit_w, nihss_adm, mrs_adm, thrombolysis, thrombectomy, ct_to_rep, reperfusion)


@dataclass
class Fate:
    vuln: np.ndarray
    s_lo: float
    s_hi: float
    theta: float
    pen_infarct: np.ndarray
    lesion0: np.ndarray  # the infarct before border growth
    lesion: np.ndarray  # the final infarct (the follow-up mask)


def tissue_fate(rng: np.random.Generator, head: Head, sev: Severity, isch: Ischaemia, reperfusion: float) -> Fate:
    """Which tissue dies: the core, the vulnerable part of the penumbra (deeper with worse reperfusion),
    silent emboli; then a little border growth."""
    brain, penumbra, core = head.brain, isch.penumbra, isch.core
    # Vulnerability: severity, lowered where CBV is preserved (collaterals), with a little hidden noise.
    vuln = sev.s - 0.15 * (isch.rcbv - 1.0) + 0.04 * _smooth_field(rng, head.shape, 6.0 * head.k, head.spacing)
    if penumbra.any():
        s_lo = float(np.percentile(vuln[penumbra], 5))
    else:
        s_lo = 0.3
    s_hi = float(np.percentile(vuln[core], 10)) if core.sum() >= 10 else 0.85
    s_hi = max(s_hi, s_lo + 0.05)
    theta = s_lo + (s_hi - s_lo) * reperfusion
    pen_infarct = penumbra & (vuln > theta)
    lesion0 = core | pen_infarct | (sev.silent_emboli & brain)
    # Growth: smooth the border, push it out by a random margin, perturb it smoothly.
    soft = _gauss(lesion0, (0.9, 0.9, 0.35))
    growth = rng.uniform(0.0, 0.22)
    grow_noise = _smooth_field(rng, head.shape, 5.0 * head.k, head.spacing)
    lesion = brain & (soft * (1.0 + 0.3 * grow_noise) > 0.5 - growth)
    return Fate(vuln, s_lo, s_hi, theta, pen_infarct, lesion0, lesion)


def outcome(rng: np.random.Generator, patient: Patient, course: Course, lesion_ml: float) -> tuple[int, int]:
    """(NIHSS at 24 h, mRS at 3 months): larger final infarct -> worse; age and early deficits modulate."""
    nihss_24h = int(
        np.clip(
            round(
                0.25 * course.nihss_adm
                + 0.75 * (0.3 + 5.0 * np.log1p(lesion_ml / 6.0) * course.deficit_w)
                + 1.5 * (1 - course.reperfusion) * (course.hypo_ml > 10)
                + rng.normal(0, 1.8)
            ),
            0,
            42,
        )
    )
    mrs_latent = 0.85 * np.log1p(lesion_ml) + 0.05 * (patient.age - 70) + 0.10 * nihss_24h - 1.1 + rng.normal(0, 0.7)
    mrs_3month = int(np.searchsorted(np.array([0.0, 0.9, 1.8, 2.7, 3.6, 4.6]), mrs_latent))
    return nihss_24h, mrs_3month


def follow_up_mri(rng: np.random.Generator, head: Head, lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(DWI, ADC) of the follow-up MRI (days later), consistent with the mask: restricted diffusion in the
    lesion, bright on DWI (b = 1000) with some T2 shine-through. Unrounded float arrays."""
    shape, spacing, tissue, brain = head.shape, head.spacing, head.tissue, head.brain
    adc = np.zeros(shape, np.float32)
    adc[tissue == GM] = ADC_GM
    adc[tissue == WM] = ADC_WM
    adc[tissue == CSF] = ADC_CSF
    adc[tissue == SOFT] = 1100.0
    les_soft = np.where(brain, _gauss(lesion, 0.6 * spacing.min() / spacing), 0)
    les_w = np.clip(np.maximum(les_soft, lesion), 0, 1)
    adc = adc * (1 - les_w) + ADC_LESION * les_w
    adc *= np.exp(0.05 * _smooth_field(rng, shape, 4.0, spacing))
    s0 = np.zeros(shape, np.float32)
    s0[tissue == GM], s0[tissue == WM], s0[tissue == CSF], s0[tissue == SOFT] = 1000.0, 850.0, 1800.0, 600.0
    s0 *= 1 + 0.3 * les_w  # vasogenic oedema: T2 shine-through adds to the DWI hyperintensity
    dwi = s0 * np.exp(-DWI_B * adc * 1e-6)
    mr_body = tissue != AIR
    adc_noise = rng.normal(0, 30.0, shape).astype(np.float32)
    dwi_noise = rng.normal(0, 12.0, shape).astype(np.float32)
    adc = np.where(mr_body & (tissue != BONE), np.clip(adc + adc_noise, 0, 4000), 0)
    dwi = np.where(mr_body, np.abs(dwi + dwi_noise), 0)
    return dwi, adc


def clinical_rows(patient: Patient, course: Course, nihss_24h: int, mrs_3month: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one-row demographic/baseline and outcome tables."""
    demographic = {
        "age": round(patient.age),
        "sex": patient.sex,
        "centre": patient.centre,
        "nihss_admission": course.nihss_adm,
        "mrs_admission": course.mrs_adm,
        "onset_to_ct_min": round(patient.onset_to_ct),
        "thrombolysis": course.thrombolysis,
        "thrombectomy": course.thrombectomy,
        "ct_to_reperfusion_min": None if course.ct_to_rep is None else round(course.ct_to_rep),
    }
    return demographic, {"mrs_3month": mrs_3month, "nihss_24h": nihss_24h}

"""One case, end to end: patient -> head -> perfusion -> stroke -> fate -> images, tables and truth.

The steps draw from one random stream per case in a fixed order (changing the order changes the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from strokelab.data.phantom import anatomy, kinetics, lesion
from strokelab.data.phantom.config import GENERATOR_VERSION, PhantomConfig, case_config
from strokelab.errors import ConfigError

TRUTH_COLUMNS = (
    "case",
    "reperfusion",
    "territory",
    "side",
    "core_ml",
    "penumbra_ml",
    "hypoperfusion_ml",
    "lesion_ml",
    "infarcted_penumbra_fraction",
    "kind",
    "n_emboli",
    "severity_peak",
    "delay_max_s",
    "aif_onset_s",
    "aif_peak_hu",
    "ctp_noise_hu",
    "tilt_deg",
    "centre",
)
TRUTH_NAMES = ("cbf", "cbv", "mtt", "tmax", "delay", "tissue", "territory", "core", "penumbra")


@dataclass
class _Case:
    images: dict[str, nib.Nifti1Image]
    demographic: dict[str, Any]
    outcome: dict[str, Any]
    truth: dict[str, Any]
    hidden: dict[str, Any]  # arrays/values not written (severity, vulnerability, fate thresholds): for validation


def _simulate_case(case_index: int, cfg: PhantomConfig, cid: str | None = None) -> _Case:
    """Simulate case ``case_index`` (0-based) of the data set ``cfg``; ``cid`` names it in the truth table
    (default: the layout's id of that index)."""
    if not isinstance(cfg, PhantomConfig):
        raise ConfigError("phantom", f"expected a PhantomConfig, got {type(cfg).__name__}")
    if case_index < 0:
        raise ConfigError("case_index", f"is {case_index}", "use a 0-based index >= 0")
    if cid is None:
        from strokelab.data.phantom.writers import case_id

        cid = case_id(case_index, cfg)
    cfg = case_config(case_index, cfg)  # this case's grid and frame count
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(case_index,)))
    vox_ml = float(np.prod(np.array(cfg.spacing))) / 1000.0

    patient = lesion.draw_patient(rng, cfg)
    head = anatomy.build_head(rng, cfg, patient.tilt, patient.age)
    cbf0, cbv0, delay0 = kinetics.normal_perfusion(rng, cfg, head, patient.age)
    sev = lesion.severity_field(rng, cfg, head, patient)
    isch = lesion.ischaemia(rng, cfg, head, sev.s, cbf0, cbv0, delay0)
    del cbf0, cbv0, delay0
    course = lesion.clinical_course(rng, patient, isch, vox_ml)
    fate = lesion.tissue_fate(rng, head, sev, isch, course.reperfusion)
    lesion_ml = fate.lesion.sum() * vox_ml
    nihss_24h, mrs_3month = lesion.outcome(rng, patient, course, lesion_ml)

    hu = kinetics.baseline_hu(rng, head, isch.core, patient.onset_to_ct)
    flat, frac = anatomy.vessel_fractions(head, patient.kind, patient.side, patient.territory)
    kinetics.add_vessels(hu, flat, frac)
    ct = kinetics.render_ct(rng, cfg, head, hu, flat, frac, isch, patient.ctp_noise, patient.ncct_noise)
    del hu, frac
    maps = kinetics.perfusion_maps(rng, cfg, head, isch, ct.ctp, patient.centre, f"phantom CTP of {cid}")
    dwi, adc = lesion.follow_up_mri(rng, head, fate.lesion)

    # ---------------------------------------------------------------- package
    affine, spacing = head.affine, head.spacing

    def image(data: np.ndarray, dtype, zooms4: float | None = None) -> nib.Nifti1Image:
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        if zooms4 is not None:
            img.header.set_zooms((*spacing, zooms4))
        img.header.set_xyzt_units("mm", "sec")
        img.header["descrip"] = f"strokelab phantom {GENERATOR_VERSION}".encode()
        return img

    images = {
        "ncct": image(ct.ncct, np.int16),
        "cta": image(ct.cta, np.int16),
        "ctp": image(ct.ctp, np.int16, cfg.frame_interval_s),
        **{m: image(maps[m], np.float32) for m in kinetics.MAP_NAMES},
        "lesion-msk": image(fate.lesion, np.uint8),
        "dwi": image(np.rint(dwi), np.int16),
        "adc": image(np.rint(adc), np.int16),
        "truth_cbf": image(isch.cbf, np.float32),
        "truth_cbv": image(isch.cbv, np.float32),
        "truth_mtt": image(isch.mtt, np.float32),
        "truth_tmax": image(isch.tmax, np.float32),
        "truth_delay": image(isch.delay, np.float32),
        "truth_tissue": image(head.tissue, np.uint8),
        "truth_territory": image(head.territory_map, np.uint8),
        "truth_core": image(isch.core, np.uint8),
        "truth_penumbra": image(isch.penumbra, np.uint8),
    }
    demographic, outcome = lesion.clinical_rows(patient, course, nihss_24h, mrs_3month)
    truth = {
        "case": cid,
        "reperfusion": round(course.reperfusion, 4),
        "territory": patient.territory,
        "side": patient.side,
        "core_ml": round(float(course.core_ml), 2),
        "penumbra_ml": round(float(course.pen_ml), 2),
        "hypoperfusion_ml": round(float(course.hypo_ml), 2),
        "lesion_ml": round(float(lesion_ml), 2),
        "infarcted_penumbra_fraction": round(float(fate.pen_infarct.sum() / max(isch.penumbra.sum(), 1)), 4),
        "kind": patient.kind,
        "n_emboli": sev.n_emboli,
        "severity_peak": round(float(min(sev.s_peak, 1.0)), 4),
        "delay_max_s": round(isch.delay_max, 3),
        "aif_onset_s": round(ct.aif_onset, 3),
        "aif_peak_hu": round(ct.aif_peak, 1),
        "ctp_noise_hu": round(patient.ctp_noise, 2),
        "tilt_deg": round(patient.tilt, 3),
        "centre": patient.centre,
    }
    hidden = {
        "severity": sev.s,
        "vulnerability": fate.vuln,
        "s_lo": fate.s_lo,
        "s_hi": fate.s_hi,
        "theta": fate.theta,
        "infarct_before_growth": fate.lesion0,
        "brain": head.brain,
    }
    return _Case(images, demographic, outcome, truth, hidden)

"""A physically grounded digital stroke phantom, written in the ISLES 2024 BIDS layout.

Real ISLES data cannot be downloaded here, so the default data set is synthetic. Every case is a
head with skull, scalp, CSF, grey and white matter and arterial territories; one territory is
occluded. From the true tissue parameters the generator renders, on one (gantry-tilted) grid:

* a non-contrast CT (NCCT) and a CT angiogram (CTA), in HU;
* a 4D CT perfusion series (CTP): gamma-variate arterial input function (AIF) and tissue curves from
  the indicator-dilution model ``C(t) = (rho/kH) * CBF * (AIF (x) h_disp (x) R)(t - delay)`` with an
  exponential residue function ``R(t) = exp(-t/MTT)`` and an exponential dispersion kernel ``h_disp``;
* perfusion maps (CBF, CBV, MTT, Tmax) computed from that simulated CTP as from a real one
  (``maps="deconvolved"``, the default): ``strokelab.perfusion.compute_maps`` with block-circulant SVD,
  automatic AIF selection and the smoothing of ``strokelab.perfusion.derive.DERIVED_MAP_SETTINGS``, inside
  the phantom's brain (grey and white matter). They carry the errors of real deconvolution -- noise,
  partial-volume vessels with very high CBF and CBV, CBF about 0.74x the truth (SVD underestimates it), Tmax
  about 2 s later than the true value -- which ``phantom_truth/`` lets one measure. On the default set the
  threshold baseline (Tmax > 6 s or rCBF < 30 %) scores a mean Dice of 0.34 on them (0.48 with Tmax > 8 s,
  which undoes the late Tmax). ``maps="vendor"`` gives the earlier, cheaper error model instead (there the
  baseline scores 0.45): the true parameters blurred, with multiplicative and additive noise;
* the follow-up lesion mask (session 2) with a consistent DWI and ADC;
* one-row clinical tables (baseline and outcome) correlated with the hidden reperfusion and lesion size;
* the noise-free truth (``phantom_truth/``) for validating methods.

How the final infarct arises (the part a predictor has to learn)
----------------------------------------------------------------
A smooth severity field ``s`` in [0, 1] peaks near the centre of the occluded territory. Tmax, MTT and
the bolus dispersion rise with ``s``; CBF falls with ``s``; CBV is preserved or slightly raised in the
penumbra (collaterals) and falls in the core. Hypoperfusion is Tmax > 6 s; the core is CBF below 30 %
of the voxel's own normal CBF. A hidden reperfusion variable ``r`` (driven by treatment and times in
the clinical table, plus chance) decides how deep into the penumbra the infarct reaches: penumbra
voxels whose *vulnerability* (severity, minus a bonus for preserved CBV, plus a little hidden noise)
exceeds ``theta(r)`` infarct. Bad reperfusion: most of the penumbra dies; good: almost none of it.
Then the lesion grows a little at its border, and some cases get small embolic lesions elsewhere
(some with a perfusion signature, some without). Hence the final infarct is not a threshold of any
single map, yet deeper Tmax / lower CBF / lower CBV regions infarct first.

Layout (XXXX = 0001, 0002, ...)::

    ROOT/derivatives/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_space-ncct_{cta,ctp}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-01/perfusion-maps/sub-strokeXXXX_ses-01_space-ncct_{cbf,cbv,mtt,tmax}.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02[_space-ncct]_lesion-msk.nii.gz
    ROOT/derivatives/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02_space-ncct_{dwi,adc}.nii.gz
    ROOT/raw_data/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_ncct.nii.gz
    ROOT/phenotype/sub-strokeXXXX/ses-01/sub-strokeXXXX_ses-01_demographic_baseline.csv
    ROOT/phenotype/sub-strokeXXXX/ses-02/sub-strokeXXXX_ses-02_outcome.csv
    ROOT/phantom_truth/sub-strokeXXXX/sub-strokeXXXX_{cbf,cbv,mtt,tmax,delay,tissue,territory,core,penumbra}.nii.gz
    ROOT/phantom_truth/cases.csv
    ROOT/dataset_description.json        (written last: its presence marks a complete data set)

Every third case (0003, 0006, ...) uses the mask naming without the space tag, as in the real release.
Truth label codes: ``TISSUE_LABELS`` and ``TERRITORY_LABELS`` below. Units: CBF ml/100g/min, CBV ml/100g,
MTT and Tmax and delay s, ADC 1e-6 mm^2/s, CT in HU. Maps are 0 outside the brain and > 0 inside it.
``dataset_description.json`` records the generator version and the config; ``is_current(root, config)``
tells whether a data set on disk is the one this generator would write for that config.

Command line::

    python -m strokelab.data.phantom ROOT [--cases 40] [--seed 0] [--workers 2] [--maps deconvolved|vendor]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from strokelab.errors import ConfigError, DataError, StrokelabError
from strokelab.io import atomic_write_text, save_nifti

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2.0.0"  # 2.0: maps deconvolved from the simulated CTP by default
DATASET_NAME = "strokelab phantom"

# --- physical constants of the indicator-dilution model ------------------------------------------
RHO_TISSUE = 1.04  # brain tissue density, g/ml
HCT_LARGE_VESSEL = 0.45  # haematocrit in large vessels (where the AIF is measured)
HCT_SMALL_VESSEL = 0.25  # haematocrit in capillaries
K_H = (1.0 - HCT_LARGE_VESSEL) / (1.0 - HCT_SMALL_VESSEL)  # haematocrit correction factor, ~0.733

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

# --- definitional thresholds (used for the truth labels) ---------------------------------------
TMAX_HYPOPERFUSION_S = 6.0
CORE_RELATIVE_CBF = 0.30

# --- MRI (follow-up) -----------------------------------------------------------------------------
ADC_GM, ADC_WM, ADC_CSF, ADC_LESION = 850.0, 750.0, 3000.0, 450.0  # 1e-6 mm^2/s
DWI_B = 1000.0  # s/mm^2

TISSUE_LABELS = {0: "air", 1: "soft tissue", 2: "bone", 3: "csf", 4: "grey matter", 5: "white matter"}
AIR, SOFT, BONE, CSF, GM, WM = range(6)
TERRITORY_LABELS = {1: "L-ACA", 2: "L-MCA", 3: "L-PCA", 4: "R-ACA", 5: "R-MCA", 6: "R-PCA"}
_TERRITORIES = ("ACA", "MCA", "PCA")
CENTRES = ("C1", "C2", "C3", "C4")
_CENTRE_P = (0.35, 0.30, 0.20, 0.15)
# Per centre: relative CT noise level in [0, 1] of the configured range, and a map-processing blur offset.
_CENTRE_NOISE = {"C1": 0.25, "C2": 0.55, "C3": 0.8, "C4": 0.4}
_CENTRE_BLUR = {"C1": 0.0, "C2": 0.2, "C3": 0.35, "C4": 0.1}

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
MAP_NAMES = ("cbf", "cbv", "mtt", "tmax")
MAP_SOURCES = ("deconvolved", "vendor")
TRUTH_NAMES = ("cbf", "cbv", "mtt", "tmax", "delay", "tissue", "territory", "core", "penumbra")

# Nominal adult head (mm, head frame: x right, y anterior, z superior; origin at the brain centre).
_HEAD_SEMI = np.array([72.0, 92.0, 80.0])
_HEAD_CENTRE = np.array([0.0, -4.0, -8.0])
_T_SCALP, _T_SKULL, _T_CSF, _T_GM = 5.0, 7.0, 2.0, 3.2
_BRAIN_CENTRE_Z_GANTRY = -8.0  # where the brain centre sits in the gantry frame: vertex near the top slice


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that defines a phantom data set. Same config, same bytes (whatever the worker count).

    Ranges ``(lo, hi)`` are drawn per case, uniformly unless stated. Sizes are in mm, times in s.
    """

    n_cases: int = 40
    seed: int = 0
    shape: tuple[int, int, int] = (96, 112, 28)
    spacing: tuple[float, float, float] = (2.0, 2.0, 5.0)  # mm
    tilt_deg: float = 15.0  # gantry tilt: rotation about the left-right axis
    tilt_jitter_deg: float = 3.0  # per case the tilt varies by up to +-this
    n_frames: int = 32
    frame_interval_s: float = 1.5
    # Normal perfusion (population means; per voxel there is a smooth texture of ~10 %).
    gm_cbf: float = 55.0  # ml/100g/min
    wm_cbf: float = 25.0
    gm_cbv: float = 4.0  # ml/100g  (MTT = 60*CBV/CBF ~ 4.4 s in GM, 4.8 s in WM)
    wm_cbv: float = 2.0
    # Arterial input function: enhancement peak above the 40 HU blood baseline, and bolus arrival.
    aif_peak_hu: tuple[float, float] = (200.0, 500.0)
    aif_onset_s: tuple[float, float] = (3.0, 10.0)
    # Image quality: per-frame CTP noise and NCCT noise (SD in HU; the centre picks where in the range).
    ctp_noise_hu: tuple[float, float] = (8.0, 15.0)
    ncct_noise_hu: tuple[float, float] = (3.0, 5.0)
    # Perfusion-map degradation: in-plane Gaussian blur SD (voxels), multiplicative noise SD.
    map_blur_vox: tuple[float, float] = (1.0, 1.5)
    map_noise: float = 0.08
    # Stroke: probability of an ACA / MCA / PCA occlusion; extra delay in the occluded territory.
    territory_weights: tuple[float, float, float] = (0.12, 0.70, 0.18)
    delay_max_s: tuple[float, float] = (6.0, 12.0)
    mild_fraction: float = 0.08  # distal / mild occlusions: tiny or no final lesion is likely
    emboli_fraction: float = 0.15  # cases with 1-3 small embolic lesions elsewhere
    # Perfusion maps: "deconvolved" from the simulated CTP (strokelab.perfusion, as on real data) or
    # "vendor": the true maps blurred (map_blur_vox) and with noise (map_noise). Everything else is the same.
    maps: str = "deconvolved"

    def __post_init__(self) -> None:
        # Accept lists (YAML / hydra) and normalise to tuples so the config stays hashable.
        for name in (
            "shape",
            "spacing",
            "aif_peak_hu",
            "aif_onset_s",
            "ctp_noise_hu",
            "ncct_noise_hu",
            "map_blur_vox",
            "territory_weights",
            "delay_max_s",
        ):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, tuple(value))
            except TypeError:
                raise ConfigError(f"phantom.{name}", f"must be a list of numbers, not {value!r}") from None
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))

        def bad(name: str, problem: str, fix: str) -> None:
            raise ConfigError(f"phantom.{name}", problem, fix)

        if not 1 <= int(self.n_cases) <= 9999:
            bad("n_cases", f"is {self.n_cases}", "use 1..9999 cases")
        if len(self.shape) != 3 or min(self.shape) < 8:
            bad("shape", f"is {self.shape}", "give three voxel counts, each at least 8")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            bad("spacing", f"is {self.spacing}", "give three positive voxel sizes in mm")
        if int(self.n_frames) < 8:
            bad("n_frames", f"is {self.n_frames}", "use at least 8 CTP frames")
        if self.frame_interval_s <= 0:
            bad("frame_interval_s", f"is {self.frame_interval_s}", "use a positive frame interval in s")
        if (self.n_frames - 1) * self.frame_interval_s < 20:
            bad(
                "n_frames",
                f"covers only {(self.n_frames - 1) * self.frame_interval_s:g} s",
                "cover at least 20 s (40-60 s is typical) with n_frames * frame_interval_s",
            )
        for name in (
            "aif_peak_hu",
            "aif_onset_s",
            "ctp_noise_hu",
            "ncct_noise_hu",
            "map_blur_vox",
            "delay_max_s",
        ):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
                bad(name, f"is {lo_hi}", "give a range [lo, hi] with 0 <= lo <= hi")
        if len(self.territory_weights) != 3 or min(self.territory_weights) < 0 or sum(self.territory_weights) <= 0:
            bad(
                "territory_weights",
                f"is {self.territory_weights}",
                "give three non-negative weights (ACA, MCA, PCA)",
            )
        for name in ("mild_fraction", "emboli_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, f"is {getattr(self, name)}", "use a fraction in [0, 1]")
        for name in ("gm_cbf", "wm_cbf", "gm_cbv", "wm_cbv"):
            if getattr(self, name) <= 0:
                bad(name, f"is {getattr(self, name)}", "use a positive value")
        if self.map_noise < 0:
            bad("map_noise", f"is {self.map_noise}", "use a non-negative noise level")
        if self.maps not in MAP_SOURCES:
            bad("maps", f"is {self.maps!r}", "use 'deconvolved' (computed from the CTP) or 'vendor' (truth blurred, with noise)")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ==================================================================================================
# Public helpers
# ==================================================================================================
def case_id(case_index: int) -> str:
    """Id of the case with 0-based index ``case_index``: 0 -> ``sub-stroke0001``."""
    return f"sub-stroke{case_index + 1:04d}"


def case_files(case_index: int) -> dict[str, str]:
    """Relative path (POSIX, under the data root) of every image of a case, keyed like ``generate_case``."""
    cid = case_id(case_index)
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
    files.update({f"truth_{t}": f"phantom_truth/{cid}/{cid}_{t}.nii.gz" for t in TRUTH_NAMES})
    return files


def clinical_files(case_index: int) -> dict[str, str]:
    """Relative paths of the two clinical tables of a case."""
    cid = case_id(case_index)
    return {
        "demographic_baseline": f"phenotype/{cid}/ses-01/{cid}_ses-01_demographic_baseline.csv",
        "outcome": f"phenotype/{cid}/ses-02/{cid}_ses-02_outcome.csv",
    }


def generate_case(case_index: int, config: PhantomConfig = PhantomConfig()) -> dict[str, nib.Nifti1Image]:
    """Simulate one case in memory. Keys as in ``case_files`` (``ncct``, ``ctp``, ``cbf``, ...,
    ``lesion-msk``, ``dwi``, ``adc``, ``truth_cbf``, ..., ``truth_penumbra``). ``case_index`` is 0-based."""
    return _simulate_case(case_index, config).images


def generate(root: str | os.PathLike, config: PhantomConfig = PhantomConfig(), workers: int = 1) -> list[str]:
    """Write the whole phantom data set under ``root`` and return the case ids.

    The result depends only on ``config`` (each case draws from its own ``SeedSequence`` child), not on
    ``workers``. ``root`` must be empty, missing, or an earlier phantom data set (which is overwritten;
    its fold file and any cases beyond ``n_cases`` are removed). ``dataset_description.json`` is written
    last, so an interrupted run is recognisable by its absence.
    """
    if not isinstance(config, PhantomConfig):
        raise ConfigError("phantom", f"expected a PhantomConfig, got {type(config).__name__}")
    if int(workers) < 1:
        raise ConfigError("workers", f"is {workers}", "use at least 1 worker process")
    root = Path(root).expanduser()
    _prepare_root(root, config.n_cases)

    indices = list(range(config.n_cases))
    n_workers = min(int(workers), len(indices))
    if n_workers == 1:
        rows = [_write_case(str(root), i, config) for i in indices]
    else:
        # "spawn" works everywhere (and is safe with threads); each task is one case, results in order.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            rows = list(pool.map(_write_case, [str(root)] * len(indices), indices, [config] * len(indices)))

    log.info("wrote %d phantom cases to %s", len(rows), root)
    atomic_write_text(root / "phantom_truth" / "cases.csv", _csv_text(TRUTH_COLUMNS, rows))
    description = {
        "Name": DATASET_NAME,
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "strokelab.data.phantom", "Version": GENERATOR_VERSION}],
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "n_cases": config.n_cases,
        "phantom_config": config.to_dict(),
    }
    atomic_write_text(root / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    return [case_id(i) for i in indices]


def is_current(root: str | os.PathLike, config: PhantomConfig | Mapping[str, Any] = PhantomConfig()) -> bool:
    """Whether ``root`` holds a complete phantom data set that this generator wrote with exactly ``config``.

    Reads ``root/dataset_description.json`` (written last by ``generate``): it must name the phantom, carry
    this ``GENERATOR_VERSION`` and a config equal to ``config`` (a ``PhantomConfig`` or its dict, as in the
    data config). False for a missing, unreadable or foreign description, an older generator or another
    config: then ``generate(root, config)`` rewrites the data set (it still refuses a folder that holds
    something else than a phantom).
    """
    if not isinstance(config, PhantomConfig):
        config = PhantomConfig(**config)
    try:
        description = json.loads((Path(root).expanduser() / "dataset_description.json").read_text())
        return (
            description.get("Name") == DATASET_NAME
            and description.get("generator_version") == GENERATOR_VERSION
            and PhantomConfig(**description["phantom_config"]) == config
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StrokelabError):
        return False


# ==================================================================================================
# Writing
# ==================================================================================================
def _csv_text(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buf.getvalue()


def _prepare_root(root: Path, n_cases: int) -> None:
    """Check that ``root`` may be (over)written, then clear the completion marker and stale outputs."""
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
    wanted = {case_id(i) for i in range(n_cases)}
    for top in ("derivatives", "raw_data", "phenotype", "phantom_truth"):
        folder = root / top
        if folder.is_dir():
            for sub in folder.iterdir():
                if sub.is_dir() and sub.name.startswith("sub-stroke") and sub.name not in wanted:
                    shutil.rmtree(sub)


def _write_case(root: str, case_index: int, config: PhantomConfig) -> dict[str, Any]:
    """Simulate and write one case (runs in a worker process); returns its row of cases.csv."""
    root_path = Path(root)
    case = _simulate_case(case_index, config)
    files = case_files(case_index)
    # Remove the other mask naming in case an earlier run used it for this id.
    for stale in root_path.glob(f"derivatives/{case_id(case_index)}/ses-02/*lesion-msk.nii.gz"):
        if stale.relative_to(root_path).as_posix() != files["lesion-msk"]:
            stale.unlink()
    for key, img in case.images.items():
        save_nifti(img, root_path / files[key])
    tables = clinical_files(case_index)
    atomic_write_text(root_path / tables["demographic_baseline"], _csv_text(DEMOGRAPHIC_COLUMNS, [case.demographic]))
    atomic_write_text(root_path / tables["outcome"], _csv_text(OUTCOME_COLUMNS, [case.outcome]))
    return case.truth


# ==================================================================================================
# Simulation
# ==================================================================================================
@dataclass
class _Case:
    images: dict[str, nib.Nifti1Image]
    demographic: dict[str, Any]
    outcome: dict[str, Any]
    truth: dict[str, Any]
    hidden: dict[str, Any]  # arrays/values not written (severity, vulnerability, fate thresholds): for validation


def _rot_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _rot_y(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _affine(cfg: PhantomConfig, tilt_deg: float) -> np.ndarray:
    """Voxel -> RAS mm. Voxel axes are L, A, S (x flipped); the gantry tilt rotates about x.

    Column norms equal the spacing; the grid centre maps to the world origin (head centred).
    """
    m = _rot_x(tilt_deg) @ np.diag([-cfg.spacing[0], cfg.spacing[1], cfg.spacing[2]])
    centre = (np.array(cfg.shape, dtype=float) - 1.0) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = -m @ centre
    return aff


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float, spacing) -> np.ndarray:
    """Zero-mean, unit-SD Gaussian random field with correlation length ~sigma_mm (float32).

    Wide kernels are computed on a coarser grid and linearly upsampled (same statistics, much faster).
    """
    sig = np.array([sigma_mm / s for s in spacing])
    factor = np.maximum(1, np.floor(sig / 2.0)).astype(int)
    coarse = tuple(int(np.ceil(n / f)) + 2 for n, f in zip(shape, factor))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sig / factor, mode="wrap", truncate=3.0)
    for axis, (n, f) in enumerate(zip(shape, factor)):
        if f == 1:
            field = np.take(field, np.arange(n), axis=axis)
            continue
        pos = np.arange(n) / f + 0.5
        i0 = np.floor(pos).astype(int)
        w = (pos - i0).astype(np.float32)
        wshape = [1] * field.ndim
        wshape[axis] = n
        w = w.reshape(wshape)
        field = np.take(field, i0, axis=axis) * (1 - w) + np.take(field, i0 + 1, axis=axis) * w
    field = field - field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _gauss(x: np.ndarray, sigma_vox) -> np.ndarray:
    return ndimage.gaussian_filter(x.astype(np.float32, copy=False), sigma_vox, mode="nearest", truncate=3.0)


def gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """Gamma variate with peak value 1 at ``t0 + alpha*beta`` (0 before ``t0``)."""
    x = np.clip((t - t0) / (alpha * beta), 0.0, None)
    return x**alpha * np.exp(alpha * (1.0 - x))


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


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _segment_distance(px, py, pz, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)


def _vessel_tree(side_sign: float) -> dict[str, list[np.ndarray]]:
    """Centre lines (head frame, nominal mm) of one hemisphere's major arteries, by territory.

    ICA up into the circle of Willis; MCA M1 laterally into the Sylvian fissure, then M2 up and back;
    ACA A1 medially, A2 up around the genu; PCA around the midbrain to the occipital lobe.
    """
    s = side_sign
    return {
        "ICA": [np.array(p) for p in ([s * 16, 8, -62], [s * 17, 10, -44], [s * 15, 8, -32])],
        "MCA": [
            np.array(p)
            for p in (
                [s * 15, 8, -32],
                [s * 28, 10, -30],
                [s * 38, 8, -26],
                [s * 44, 0, -16],
                [s * 48, -14, -4],
                [s * 50, -28, 8],
            )
        ],
        "ACA": [
            np.array(p)
            for p in (
                [s * 15, 8, -32],
                [s * 3, 14, -30],
                [s * 2.5, 26, -16],
                [s * 2.5, 32, 6],
                [s * 2.5, 14, 30],
                [s * 2.5, -14, 38],
            )
        ],
        "PCA": [
            np.array(p)
            for p in (
                [0, -12, -36],
                [s * 10, -14, -34],
                [s * 22, -28, -28],
                [s * 20, -48, -20],
                [s * 12, -64, -10],
            )
        ],
    }


def _simulate_case(case_index: int, cfg: PhantomConfig) -> _Case:
    if not isinstance(cfg, PhantomConfig):
        raise ConfigError("phantom", f"expected a PhantomConfig, got {type(cfg).__name__}")
    if case_index < 0:
        raise ConfigError("case_index", f"is {case_index}", "use a 0-based index >= 0")
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(case_index,)))
    cid = case_id(case_index)
    shape, spacing = cfg.shape, np.array(cfg.spacing)
    vox_ml = float(np.prod(spacing)) / 1000.0

    # ---------------------------------------------------------------- patient-level draws
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

    # ---------------------------------------------------------------- geometry
    affine = _affine(cfg, tilt)
    fov = np.array(shape) * spacing
    # Heads are adult-sized in mm; a smaller field of view shrinks the head so that it still fits.
    k = float(min(1.0, 0.92 * fov[0] / (2 * _HEAD_SEMI[0]), 0.92 * fov[1] / (2 * _HEAD_SEMI[1])))
    vox_xy = float(min(spacing[:2])) / k  # in-plane voxel size in nominal (head-frame) mm
    # Gantry coordinates (mm) of voxel centres: x right, y anterior, z superior (before the tilt).
    ctr = (np.array(shape) - 1) / 2.0
    gx = (-(np.arange(shape[0]) - ctr[0]) * spacing[0]).astype(np.float32)
    gy = ((np.arange(shape[1]) - ctr[1]) * spacing[1]).astype(np.float32)
    gz = ((np.arange(shape[2]) - ctr[2]) * spacing[2]).astype(np.float32)
    # Head pose inside the gantry: small yaw/roll and offset; the tilt itself is in the affine.
    pose = _rot_z(rng.uniform(-4, 4)) @ _rot_y(rng.uniform(-2.5, 2.5))
    offset = np.array([rng.normal(0, 2.5), rng.normal(0, 3.0), _BRAIN_CENTRE_Z_GANTRY * k + rng.normal(0, 2.0)])
    rt = pose.T / k  # gantry -> nominal head frame (mm of a standard head)
    X = (
        rt[0, 0] * (gx[:, None, None] - offset[0])
        + rt[0, 1] * (gy[None, :, None] - offset[1])
        + rt[0, 2] * (gz[None, None, :] - offset[2])
    ).astype(np.float32)
    Y = (
        rt[1, 0] * (gx[:, None, None] - offset[0])
        + rt[1, 1] * (gy[None, :, None] - offset[1])
        + rt[1, 2] * (gz[None, None, :] - offset[2])
    ).astype(np.float32)
    Z = (
        rt[2, 0] * (gx[:, None, None] - offset[0])
        + rt[2, 1] * (gy[None, :, None] - offset[1])
        + rt[2, 2] * (gz[None, None, :] - offset[2])
    ).astype(np.float32)

    # ---------------------------------------------------------------- anatomy
    semi = _HEAD_SEMI * np.exp(rng.normal(0, 0.035, 3))
    hx, hy, hz = X - _HEAD_CENTRE[0], Y - _HEAD_CENTRE[1], Z - _HEAD_CENTRE[2]
    q = np.sqrt((hx / semi[0]) ** 2 + (hy / semi[1]) ** 2 + (hz / semi[2]) ** 2) + 1e-6
    r = np.sqrt(hx**2 + hy**2 + hz**2)
    # Smooth per-case shape variation: low-order polynomial of the direction (a few % of the radius),
    # plus a narrower forehead (egg shape).
    ux, uy, uz = hx / (semi[0] * q), hy / (semi[1] * q), hz / (semi[2] * q)
    c = rng.normal(0, 0.02, 9)
    delta = (
        c[0] * ux
        + c[1] * uy
        + c[2] * uz
        + c[3] * ux * uy
        + c[4] * uy * uz
        + c[5] * ux * uz
        + c[6] * (ux**2 - uy**2)
        + c[7] * (2 * uz**2 - ux**2 - uy**2)
        + c[8] * ux * uy * uz
        - 0.04 * np.clip(uy, 0, None) ** 2
    )
    # Depth (mm) below the scalp surface, along the ray from the head centre (< 0: air).
    depth = r * ((1.0 + delta) / q - 1.0)
    del ux, uy, uz, hx, hy, hz, q, r

    t_scalp = max(_T_SCALP, 0.8 * vox_xy)
    t_skull = max(_T_SKULL * rng.uniform(0.85, 1.15), 1.2 * vox_xy)
    atrophy = np.clip((age - 50) / 40, 0, 1)  # older brains: wider sulci and ventricles
    t_csf = max(_T_CSF * (1 + 0.8 * atrophy), 0.5 * vox_xy)
    inner = t_scalp + t_skull
    db = depth - inner - t_csf  # depth below the brain surface
    floor_z = -48.0 + 0.30 * Y + rng.normal(0, 2.0)  # skull base (anterior fossa higher)
    above_floor = Z - floor_z

    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[depth >= 0] = SOFT
    skull = (depth >= t_scalp) & (depth < inner)
    tissue[skull] = BONE
    intracranial = depth >= inner
    tissue[intracranial & (above_floor < 0)] = SOFT
    skull_base_plate = intracranial & (above_floor < 0) & (above_floor > -max(8.0, 1.2 * vox_xy))
    tissue[skull_base_plate] = BONE
    tissue[intracranial & (above_floor >= 0)] = CSF
    # Depth into the brain from its nearest outer surface (convexity or skull base).
    dbrain = np.minimum(db, above_floor - t_csf)
    brain_region = intracranial & (dbrain >= 0)
    tissue[brain_region] = WM

    # Cortex: a grey ribbon whose inner boundary dips where a folding field is high (sulcal fundi),
    # with CSF-filled sulci at the highest folds (wider with age).
    fold = _smooth_field(rng, shape, 3.0 * k, spacing)
    t_gm = np.maximum(_T_GM + 6.0 * np.clip(fold + 0.2, 0, None), 0.8 * vox_xy)
    tissue[brain_region & (dbrain < t_gm)] = GM
    sulc_thr = 1.1 - 0.5 * atrophy
    tissue[brain_region & (fold > sulc_thr) & (dbrain < 5.0 * (fold - sulc_thr) + 0.5 * vox_xy * (fold > sulc_thr + 0.3))] = CSF

    # Midline and interhemispheric fissure (CSF lined by medial cortex), down to the callosum.
    mid0 = float(rng.normal(0, 1.0))
    mid = mid0 + float(rng.normal(0, 0.02)) * Y  # slightly oblique midline plane
    dmid = np.abs(X - mid)
    fissure_zone = brain_region & ((Z > 22) | (np.abs(Y) > 40))
    half = max(0.8, 0.55 * vox_xy)
    tissue[fissure_zone & (dmid < half + t_gm)] = GM
    tissue[fissure_zone & (dmid < half)] = CSF
    # Sylvian fissure: a shallow lateral CSF cleft lined by insular / opercular cortex.
    syl = brain_region & (np.abs(X) > 32) & (Y > -12) & (Y < 36) & (db < 26)
    syl_d = np.abs(Z - (-14 + 0.15 * Y))
    tissue[syl & (syl_d < 1.2 + t_gm)] = GM
    tissue[syl & (syl_d < max(1.2, 0.5 * vox_xy))] = CSF

    def ellipsoid(cx, cy, cz, ax, ay, az) -> np.ndarray:
        return ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 + ((Z - cz) / az) ** 2 <= 1.0

    # Deep grey nuclei (caudate, putamen, thalamus) and the ventricular system (size grows with age).
    vf = float(np.clip(0.75 + 0.5 * atrophy + rng.normal(0, 0.08), 0.6, 1.5))
    for s in (-1, 1):
        m = mid0
        deep = (
            ellipsoid(m + s * 13, 15, 6, 5, 9, 8)
            | ellipsoid(m + s * 23, 4, -6, 5, 14, 10)
            | ellipsoid(m + s * 9, -12, -4, 8, 11, 8)
        )
        tissue[brain_region & deep] = GM
    ventricles = np.zeros(shape, dtype=bool)
    for s in (-1, 1):
        m = mid0
        ventricles |= ellipsoid(m + s * (6 + 2 * vf), 0, 12, 4.5 * vf, 24, 6.5 * vf)  # bodies
        ventricles |= ellipsoid(m + s * 8, 20, 6, 4.5 * vf, 9, 7 * vf)  # frontal horns
        ventricles |= ellipsoid(m + s * 14, -26, 4, 5.5 * vf, 10, 8 * vf)  # atria / occipital horns
        ventricles |= ellipsoid(m + s * 30, -4, -22, 2.5 * vf, 12, 3 * vf)  # temporal horns
    ventricles |= ellipsoid(mid0, -2, -8, max(1.2 * vf, 0.5 * vox_xy), 12, 8)  # third ventricle
    tissue[brain_region & ventricles] = CSF
    del ventricles
    brain = (tissue == GM) | (tissue == WM)
    right = X > mid

    # Arterial territories per hemisphere, by position with smoothly perturbed borders:
    # PCA occipital + inferomedial temporal + thalamus; ACA paramedian strip widening to the vertex; MCA rest.
    bnoise = 5.0 * _smooth_field(rng, shape, 10.0 * k, spacing)
    zc = np.clip(Z - 5, 0, None)
    pca = (
        (Y + bnoise < -48 - 0.35 * np.clip(Z, 0, None))
        | ((Z + 0.5 * bnoise < -20) & (Y < -8) & (dmid < 40))
        | (ellipsoid(mid0 - 9, -12, -4, 8, 11, 8) | ellipsoid(mid0 + 9, -12, -4, 8, 11, 8))
    )
    aca = ~pca & (dmid + bnoise < 14 + 0.45 * zc) & (Y > -46)
    terr_kind = np.where(pca, 3, np.where(aca, 1, 2)).astype(np.uint8)  # 1 ACA, 2 MCA, 3 PCA
    territory_map = np.where(brain, terr_kind + 3 * right.astype(np.uint8), 0).astype(np.uint8)
    del pca, aca, zc, bnoise

    # ---------------------------------------------------------------- normal perfusion
    tex1 = _smooth_field(rng, shape, 6.0 * k, spacing)
    tex2 = 0.6 * tex1 + 0.8 * _smooth_field(rng, shape, 6.0 * k, spacing)
    age_f = 1.0 - 0.003 * (age - 65)
    is_gm = tissue == GM
    cbf0 = np.where(is_gm, cfg.gm_cbf, cfg.wm_cbf) * age_f * np.exp(0.10 * tex1 - 0.005)
    cbv0 = np.where(is_gm, cfg.gm_cbv, cfg.wm_cbv) * np.exp(0.08 * tex2 - 0.0032)
    # Normal bolus arrival: later towards the periphery/watersheds (0-1 s).
    radial = np.sqrt(X**2 + Y**2 + (1.4 * Z) ** 2) / 90.0
    delay0 = np.clip(0.15 + 0.55 * radial + 0.12 * _smooth_field(rng, shape, 12.0 * k, spacing), 0.0, 1.0)
    del radial

    # ---------------------------------------------------------------- the stroke: severity field s
    occ_side = 1 if side == "R" else 0
    occ_code = 1 + _TERRITORIES.index(territory) + 3 * occ_side
    terr = territory_map == occ_code
    vs = spacing / k  # voxel size in nominal mm
    terr_soft = _gauss(terr, 4.0 / vs)  # severity fades over a few mm beyond the territory border
    tidx = np.nonzero(terr)
    if kind == "mild":  # distal branch occlusion: small focus anywhere in the territory
        j = int(rng.integers(len(tidx[0]))) if len(tidx[0]) else 0
        focus = np.array([X[tidx][j], Y[tidx][j], Z[tidx][j]]) if len(tidx[0]) else np.zeros(3)
        s_peak = rng.uniform(0.35, 0.62)
        length = rng.uniform(10, 22)
    else:
        centroid = np.array([X[tidx].mean(), Y[tidx].mean(), Z[tidx].mean()]) if len(tidx[0]) else np.zeros(3)
        focus = centroid + rng.normal(0, 6.0, 3)
        # Longer onset-to-CT: deeper ischaemia on average (core grows with time).
        s_peak = rng.uniform(0.78, 1.08) + 0.04 * np.log(onset_to_ct / 150.0)
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

    # ---------------------------------------------------------------- ischaemic perfusion
    # A collateral field modulates everything: good collaterals keep CBF/CBV up and shorten the delay.
    coll = np.clip(_smooth_field(rng, shape, 10.0 * k, spacing), -2.5, 2.5)
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
    del cbf0, cbv0, delay0

    # ---------------------------------------------------------------- clinical course and reperfusion
    hypo_ml, core_ml, pen_ml = hypo.sum() * vox_ml, core.sum() * vox_ml, penumbra.sum() * vox_ml
    # Deficit per ml of hypoperfusion: largest for the (language-dominant) left MCA.
    deficit_w = {"MCA": 1.15 if side == "L" else 1.0, "ACA": 0.75, "PCA": 0.6}[territory]
    nihss_adm = int(np.clip(round(0.5 + 5.5 * np.log1p(hypo_ml / 8.0) * deficit_w + rng.normal(0, 2.0)), 0, 42))
    mrs_adm = int(np.clip(round(1.0 + nihss_adm / 6.0 + rng.normal(0, 0.6)), 0, 5))
    thrombolysis = int(onset_to_ct < 270 and rng.random() < 0.7)
    lvo = kind == "typical" and hypo_ml > 15
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

    # ---------------------------------------------------------------- tissue fate
    # Vulnerability: severity, lowered where CBV is preserved (collaterals), with a little hidden noise.
    vuln = s - 0.15 * (rcbv - 1.0) + 0.04 * _smooth_field(rng, shape, 6.0 * k, spacing)
    if penumbra.any():
        s_lo = float(np.percentile(vuln[penumbra], 5))
    else:
        s_lo = 0.3
    s_hi = float(np.percentile(vuln[core], 10)) if core.sum() >= 10 else 0.85
    s_hi = max(s_hi, s_lo + 0.05)
    theta = s_lo + (s_hi - s_lo) * reperfusion
    pen_infarct = penumbra & (vuln > theta)
    lesion0 = core | pen_infarct | (silent_emboli & brain)
    # Growth: smooth the border, push it out by a random margin, perturb it smoothly.
    soft = _gauss(lesion0, (0.9, 0.9, 0.35))
    growth = rng.uniform(0.0, 0.22)
    grow_noise = _smooth_field(rng, shape, 5.0 * k, spacing)
    lesion = brain & (soft * (1.0 + 0.3 * grow_noise) > 0.5 - growth)
    del soft, grow_noise, rcbf, coll
    lesion_ml = lesion.sum() * vox_ml

    # Outcome: larger final infarct -> worse; age and early deficits modulate.
    nihss_24h = int(
        np.clip(
            round(
                0.25 * nihss_adm
                + 0.75 * (0.3 + 5.0 * np.log1p(lesion_ml / 6.0) * deficit_w)
                + 1.5 * (1 - reperfusion) * (hypo_ml > 10)
                + rng.normal(0, 1.8)
            ),
            0,
            42,
        )
    )
    mrs_latent = 0.85 * np.log1p(lesion_ml) + 0.05 * (age - 70) + 0.10 * nihss_24h - 1.1 + rng.normal(0, 0.7)
    mrs_3month = int(np.searchsorted(np.array([0.0, 0.9, 1.8, 2.7, 3.6, 4.6]), mrs_latent))

    # ---------------------------------------------------------------- images
    # Baseline CT numbers (noise-free): tissue values with texture, bone with a diploe.
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    tex_hu = _smooth_field(rng, shape, 4.0 * k, spacing)
    hu[tissue == SOFT] = HU_SOFT
    hu[tissue == CSF] = HU_CSF
    hu[tissue == GM] = HU_GM
    hu[tissue == WM] = HU_WM
    hu += np.where(brain, 1.2 * tex_hu, 0)
    bone = tissue == BONE
    # Diploe in the middle of the calvarium (relative position 0..1 across the skull thickness).
    rel = np.clip((depth - t_scalp) / t_skull, 0, 1)
    hu[bone] = HU_BONE_DIPLOE + (HU_BONE_TABLE - HU_BONE_DIPLOE) * np.abs(2 * rel[bone] - 1) ** 0.7 + 60 * tex_hu[bone]
    del rel, depth, tex_hu
    # Early ischaemic change: net water uptake makes the core hypodense, more so with time (~1.2 HU/h).
    hu -= min(1.2 * onset_to_ct / 60.0, 7.0) * _gauss(core, 0.7 * spacing.min() / spacing)

    # Large vessels: partial-volume fractions of normally filled arteries, occluded (collateral-filled)
    # arteries distal to the clot, the clot itself, and the dural sinuses (venous outflow).
    head = tissue != AIR
    flat = np.flatnonzero(head)
    px, py, pz = X.ravel()[flat], Y.ravel()[flat], Z.ravel()[flat]
    frac = {
        "artery": np.zeros(flat.size, np.float32),
        "occluded": np.zeros(flat.size, np.float32),
        "clot": np.zeros(flat.size, np.float32),
        "vein": np.zeros(flat.size, np.float32),
    }

    def draw(points: list[np.ndarray], radius: float, key: str) -> None:
        for a, b in itertools.pairwise(points):
            lo = np.minimum(a, b) - radius - 2 * vox_xy
            hi = np.maximum(a, b) + radius + 2 * vox_xy
            sel = np.flatnonzero((px > lo[0]) & (px < hi[0]) & (py > lo[1]) & (py < hi[1]) & (pz > lo[2]) & (pz < hi[2]))
            if sel.size:
                d = _segment_distance(px[sel], py[sel], pz[sel], a, b)
                f = np.clip(0.5 + (radius - d) / vox_xy, 0, 1).astype(np.float32)
                frac[key][sel] = np.maximum(frac[key][sel], f)

    radii = {"ICA": 2.2, "MCA": 1.5, "ACA": 1.1, "PCA": 1.1}
    for sgn, sd in ((-1.0, "L"), (1.0, "R")):
        tree = _vessel_tree(sgn)
        for name, pts in tree.items():
            pts = [p + np.array([mid0, 0.0, 0.0]) for p in pts]
            if kind == "typical" and sd == side and name == territory:
                # Clot in the first segment; distal segments fill late and faintly through collaterals.
                draw(pts[:2], radii[name], "clot")
                draw(pts[1:], radii[name] * 0.9, "occluded")
            else:
                draw(pts, radii[name], "artery")
    draw([np.array([0.0, -12, -60]), np.array([0.0, -12, -36])], 1.6, "artery")  # basilar
    # Superior sagittal sinus along the inner table in the midsagittal plane, then the straight sinus.
    ang = np.deg2rad(np.linspace(40, 215, 9))
    rin = semi[1:] - inner - 3.0
    sss = [np.array([0.0, _HEAD_CENTRE[1] + rin[0] * np.cos(a), _HEAD_CENTRE[2] + rin[1] * np.sin(a)]) for a in ang]
    draw(sss, 3.0, "vein")
    draw([sss[-1], np.array([0.0, -30.0, 10.0])], 2.0, "vein")
    # Only the vessels inside the skull (not bone) get blood; the clot gets its own density.
    soft_or_brain = ~bone.ravel()[flat]
    for key in frac:
        frac[key] *= soft_or_brain
    vessel_total = np.clip(frac["artery"] + frac["occluded"] + frac["clot"] + frac["vein"], 0, 1)
    hu_flat = hu.ravel()  # a view
    hu_flat[flat] = (1 - vessel_total) * hu_flat[flat] + vessel_total * HU_BLOOD + frac["clot"] * HU_CLOT_EXTRA

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
    for name, true in (("cbf", cbf), ("cbv", cbv), ("mtt", mtt), ("tmax", tmax)):
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

        maps = derive_maps(ctp, cfg.frame_interval_s, tuple(spacing), brain=brain, source=f"phantom CTP of {cid}")

    # Follow-up MRI (days later), consistent with the mask: restricted diffusion in the lesion.
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
    del s0, les_w, les_soft, adc_noise, dwi_noise

    # ---------------------------------------------------------------- package
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
        "ncct": image(ncct, np.int16),
        "cta": image(cta, np.int16),
        "ctp": image(ctp, np.int16, cfg.frame_interval_s),
        **{m: image(maps[m], np.float32) for m in MAP_NAMES},
        "lesion-msk": image(lesion, np.uint8),
        "dwi": image(np.rint(dwi), np.int16),
        "adc": image(np.rint(adc), np.int16),
        "truth_cbf": image(cbf, np.float32),
        "truth_cbv": image(cbv, np.float32),
        "truth_mtt": image(mtt, np.float32),
        "truth_tmax": image(tmax, np.float32),
        "truth_delay": image(delay, np.float32),
        "truth_tissue": image(tissue, np.uint8),
        "truth_territory": image(territory_map, np.uint8),
        "truth_core": image(core, np.uint8),
        "truth_penumbra": image(penumbra, np.uint8),
    }
    demographic = {
        "age": round(age),
        "sex": sex,
        "centre": centre,
        "nihss_admission": nihss_adm,
        "mrs_admission": mrs_adm,
        "onset_to_ct_min": round(onset_to_ct),
        "thrombolysis": thrombolysis,
        "thrombectomy": thrombectomy,
        "ct_to_reperfusion_min": None if ct_to_rep is None else round(ct_to_rep),
    }
    outcome = {"mrs_3month": mrs_3month, "nihss_24h": nihss_24h}
    truth = {
        "case": cid,
        "reperfusion": round(reperfusion, 4),
        "territory": territory,
        "side": side,
        "core_ml": round(float(core_ml), 2),
        "penumbra_ml": round(float(pen_ml), 2),
        "hypoperfusion_ml": round(float(hypo_ml), 2),
        "lesion_ml": round(float(lesion_ml), 2),
        "infarcted_penumbra_fraction": round(float(pen_infarct.sum() / max(penumbra.sum(), 1)), 4),
        "kind": kind,
        "n_emboli": n_emboli,
        "severity_peak": round(float(min(s_peak, 1.0)), 4),
        "delay_max_s": round(delay_max, 3),
        "aif_onset_s": round(aif_onset, 3),
        "aif_peak_hu": round(aif_peak, 1),
        "ctp_noise_hu": round(ctp_noise, 2),
        "tilt_deg": round(tilt, 3),
        "centre": centre,
    }
    hidden = {
        "severity": s,
        "vulnerability": vuln,
        "s_lo": s_lo,
        "s_hi": s_hi,
        "theta": theta,
        "infarct_before_growth": lesion0,
        "brain": brain,
    }
    return _Case(images, demographic, outcome, truth, hidden)


# ==================================================================================================
# Command line
# ==================================================================================================
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strokelab.data.phantom",
        description="Write the strokelab digital stroke phantom in the ISLES 2024 layout.",
    )
    parser.add_argument("root", help="output folder (empty, new, or an earlier phantom data set)")
    parser.add_argument("--cases", type=int, default=PhantomConfig.n_cases, help="number of cases (default 40)")
    parser.add_argument("--seed", type=int, default=PhantomConfig.seed, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--maps",
        choices=MAP_SOURCES,
        default=PhantomConfig.maps,
        help="perfusion maps deconvolved from the simulated CTP (default) or vendor-like (truth blurred, with noise)",
    )
    args = parser.parse_args(argv)
    try:
        config = PhantomConfig(n_cases=args.cases, seed=args.seed, maps=args.maps)
        start = time.perf_counter()
        ids = generate(args.root, config, workers=args.workers)
        print(f"wrote {len(ids)} phantom cases to {args.root} in {time.perf_counter() - start:.1f} s")
        from strokelab.data.folds import ensure_fold_file

        print(f"fold file: {ensure_fold_file(args.root)}")
    except StrokelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

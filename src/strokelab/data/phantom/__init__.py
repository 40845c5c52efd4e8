"""A physically grounded digital stroke phantom, written in the ISLES 2024 BIDS layout or the ISLES 2018 layout.

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

The package, one concern per module: :mod:`.config` (``PhantomConfig``), :mod:`.anatomy` (head, tissues,
territories, vessels, geometry), :mod:`.kinetics` (AIF, tissue curves, CT rendering, maps), :mod:`.lesion`
(severity, ischaemia, reperfusion, tissue fate, clinical tables, DWI/ADC), :mod:`.simulate` (one case end to
end) and :mod:`.writers` (the layouts on disk; their trees are described there). ``lesion`` explains how the
final infarct arises -- the part a predictor has to learn.

Layouts (``PhantomConfig.layout``):

* ``isles24`` (default): the ISLES'24 BIDS tree, ``sub-strokeXXXX``, ``.nii.gz``, clinical tables, on a
  96x112x28 grid of 2x2x5 mm with 32 CTP frames 1.5 s apart;
* ``isles18``: the ISLES'18 tree, ``TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<id>/...nii`` (uncompressed; CT, CT_4DPWI,
  CT_CBF, CT_CBV, CT_MTT, CT_Tmax, MR_DWI, OT), plus ``n_testing`` TESTING cases without MR_DWI and OT. Thick
  slabs: by default 128x128 voxels of 1.8 mm in-plane and, per case, 4-8 slices 8-10 mm apart and 43-64 CTP
  frames 1 s apart. No clinical tables, no CTA, no ADC. The DWI is the same image the ISLES'24 layout writes.

Both also write ``phantom_truth/`` and ``dataset_description.json`` (last: its presence marks a complete
data set; it records the generator version and the config). Truth label codes: ``TISSUE_LABELS`` and
``TERRITORY_LABELS``. Units: CBF ml/100g/min, CBV ml/100g, MTT and Tmax and delay s, ADC 1e-6 mm^2/s, CT in
HU. Maps are 0 outside the brain and > 0 inside it. ``is_current(root, config)`` tells whether a data set on
disk is the one this generator would write for that config (the layout included).

Command line::

    python -m strokelab.data.phantom ROOT [--cases 40] [--seed 0] [--workers 2] [--maps deconvolved|vendor]
                                          [--layout isles24|isles18] [--testing 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib

# Every name of the former single module stays importable from here: the public ones are in __all__, the
# private ones (tests use _simulate_case) are why the imports below carry "noqa: F401".
from strokelab.data.phantom.anatomy import (  # noqa: F401
    _BRAIN_CENTRE_Z_GANTRY,
    _HEAD_CENTRE,
    _HEAD_SEMI,
    _T_CSF,
    _T_GM,
    _T_SCALP,
    _T_SKULL,
    _TERRITORIES,
    AIR,
    BONE,
    CSF,
    GM,
    SOFT,
    TERRITORY_LABELS,
    TISSUE_LABELS,
    WM,
    _affine,
    _gauss,
    _rot_x,
    _rot_y,
    _rot_z,
    _segment_distance,
    _smooth_field,
    _vessel_tree,
)
from strokelab.data.phantom.config import (
    DATASET_NAME,
    GENERATOR_VERSION,
    LAYOUT_DEFAULTS,
    LAYOUTS,
    MAP_SOURCES,
    PhantomConfig,
    case_config,
)
from strokelab.data.phantom.kinetics import (  # noqa: F401
    _CENTRE_BLUR,
    HU_AIR,
    HU_BLOOD,
    HU_BONE_DIPLOE,
    HU_BONE_TABLE,
    HU_CLOT_EXTRA,
    HU_CSF,
    HU_GM,
    HU_SOFT,
    HU_WM,
    MAP_NAMES,
    _dispersed_residue,
    _tmax_dispersion,
)
from strokelab.data.phantom.lesion import (  # noqa: F401
    _CENTRE_NOISE,
    _CENTRE_P,
    ADC_CSF,
    ADC_GM,
    ADC_LESION,
    ADC_WM,
    CENTRES,
    CORE_RELATIVE_CBF,
    DEMOGRAPHIC_COLUMNS,
    DWI_B,
    OUTCOME_COLUMNS,
    TMAX_HYPOPERFUSION_S,
    _sigmoid,
)
from strokelab.data.phantom.simulate import TRUTH_COLUMNS, TRUTH_NAMES, _Case, _simulate_case  # noqa: F401
from strokelab.data.phantom.writers import (  # noqa: F401
    ISLES18_TAGS,
    _csv_text,
    _prepare_root,
    _write_case,
    case_files,
    case_id,
    clinical_files,
)
from strokelab.errors import ConfigError, StrokelabError
from strokelab.io import atomic_write_text
from strokelab.perfusion.physics import HCT_LARGE_VESSEL, HCT_SMALL_VESSEL, K_H, RHO_TISSUE, gamma_variate

log = logging.getLogger(__name__)

__all__ = [
    "ADC_CSF",
    "ADC_GM",
    "ADC_LESION",
    "ADC_WM",
    "AIR",
    "BONE",
    "CENTRES",
    "CORE_RELATIVE_CBF",
    "CSF",
    "DATASET_NAME",
    "DEMOGRAPHIC_COLUMNS",
    "DWI_B",
    "GENERATOR_VERSION",
    "GM",
    "HCT_LARGE_VESSEL",
    "HCT_SMALL_VESSEL",
    "HU_AIR",
    "HU_BLOOD",
    "HU_BONE_DIPLOE",
    "HU_BONE_TABLE",
    "HU_CLOT_EXTRA",
    "HU_CSF",
    "HU_GM",
    "HU_SOFT",
    "HU_WM",
    "ISLES18_TAGS",
    "K_H",
    "LAYOUTS",
    "LAYOUT_DEFAULTS",
    "MAP_NAMES",
    "MAP_SOURCES",
    "OUTCOME_COLUMNS",
    "RHO_TISSUE",
    "SOFT",
    "TERRITORY_LABELS",
    "TISSUE_LABELS",
    "TMAX_HYPOPERFUSION_S",
    "TRUTH_COLUMNS",
    "TRUTH_NAMES",
    "WM",
    "PhantomConfig",
    "case_config",
    "case_files",
    "case_id",
    "clinical_files",
    "gamma_variate",
    "generate",
    "generate_case",
    "is_current",
    "main",
]


def generate_case(case_index: int, config: PhantomConfig = PhantomConfig()) -> dict[str, nib.Nifti1Image]:
    """Simulate one case in memory. Keys as in ``case_files`` (``ncct``, ``ctp``, ``cbf``, ...,
    ``lesion-msk``, ``dwi``, ``adc``, ``truth_cbf``, ..., ``truth_penumbra``). ``case_index`` is 0-based.
    Every key is simulated whatever the layout (an ISLES'18 data set writes a subset of them)."""
    return _simulate_case(case_index, config).images


def generate(root: str | os.PathLike, config: PhantomConfig = PhantomConfig(), workers: int = 1) -> list[str]:
    """Write the whole phantom data set under ``root`` and return the case ids.

    The result depends only on ``config`` (each case draws from its own ``SeedSequence`` child), not on
    ``workers``. ``root`` must be empty, missing, or an earlier phantom data set (which is overwritten;
    its fold file, any cases beyond the config's and the folders of the other layout are removed).
    ``dataset_description.json`` is written last, so an interrupted run is recognisable by its absence.
    """
    if not isinstance(config, PhantomConfig):
        raise ConfigError("phantom", f"expected a PhantomConfig, got {type(config).__name__}")
    if int(workers) < 1:
        raise ConfigError("workers", f"is {workers}", "use at least 1 worker process")
    root = Path(root).expanduser()
    _prepare_root(root, config)

    indices = list(range(config.n_total))
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
    return [case_id(i, config) for i in indices]


def is_current(root: str | os.PathLike, config: PhantomConfig | Mapping[str, Any] = PhantomConfig()) -> bool:
    """Whether ``root`` holds a complete phantom data set that this generator wrote with exactly ``config``.

    Reads ``root/dataset_description.json`` (written last by ``generate``): it must name the phantom, carry
    this ``GENERATOR_VERSION`` and a config equal to ``config`` (a ``PhantomConfig`` or its dict, as in the
    data config; the layout is part of it). False for a missing, unreadable or foreign description, an older
    generator or another config: then ``generate(root, config)`` rewrites the data set (it still refuses a
    folder that holds something else than a phantom).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strokelab.data.phantom",
        description="Write the strokelab digital stroke phantom in the ISLES 2024 (default) or ISLES 2018 layout.",
    )
    parser.add_argument("root", help="output folder (empty, new, or an earlier phantom data set)")
    parser.add_argument("--cases", type=int, default=PhantomConfig.n_cases, help="number of (TRAINING) cases (default 40)")
    parser.add_argument("--seed", type=int, default=PhantomConfig.seed, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--maps",
        choices=MAP_SOURCES,
        default=PhantomConfig.maps,
        help="perfusion maps deconvolved from the simulated CTP (default) or vendor-like (truth blurred, with noise)",
    )
    parser.add_argument(
        "--layout", choices=LAYOUTS, default=PhantomConfig.layout, help="isles24 (BIDS, default) or isles18 (thick slabs)"
    )
    parser.add_argument("--testing", type=int, default=0, help="isles18 only: extra TESTING cases without DWI and mask")
    args = parser.parse_args(argv)
    try:
        config = PhantomConfig(n_cases=args.cases, seed=args.seed, maps=args.maps, layout=args.layout, n_testing=args.testing)
        start = time.perf_counter()
        ids = generate(args.root, config, workers=args.workers)
        print(f"wrote {len(ids)} phantom cases to {args.root} in {time.perf_counter() - start:.1f} s")
        from strokelab.data.folds import ensure_fold_file

        print(f"fold file: {ensure_fold_file(args.root)}")
    except StrokelabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

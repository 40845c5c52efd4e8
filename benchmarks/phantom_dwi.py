"""Benchmark: is the phantom's follow-up DWI a fair stand-in for a real one (the pseudo-DWI synthesis target)?

Wang et al. 2020 synthesise a DWI from the CTP and segment the lesion on it; on the phantom that only means
something if the phantom DWI is about as hard as a real one: a lesion not much brighter, against a brain
whose own texture (grey matter, white matter, CSF) and noise are about as strong as in a real scan.

Measured on the one real DWI here (ISLES'22 sample ``sub-strokecase0009``, b = 1000, skull-stripped, lesion
mask in DWI space; shared/data/real) and on phantom cases simulated in memory (``generate_case``, nothing
written), both with the same definitions:

* brain: the real DWI's non-zero voxels (it is skull-stripped); on the phantom CSF, grey and white matter
  (what a skull strip keeps); "normal brain" is the brain outside the lesion mask;
* ratio: median lesion / median normal brain;
* CNR: (mean lesion - mean normal brain) / std normal brain (the std holds the anatomy and the noise);
* p10 / p50 / p90 of the normal brain, each divided by its median (scale-free: the phantom's intensity unit
  is arbitrary); on the phantom also the tissue means (CSF, GM, WM, lesion) divided by the same median;
* noise: the voxel noise relative to the median, from differences of neighbours along the first axis inside
  the normal brain (1.4826 MAD / sqrt 2); on the real scan an upper bound, as it holds the fine texture too.

Measured (6 ISLES'18-layout phantom cases, seed 0; generator 2.0.0): ratio 1.67 real vs 1.75 phantom, CNR
2.20 vs 3.07, p10/p90 0.48/1.34 vs 0.24/1.09, noise 0.09 vs 0.04. The lesion is as bright as in the real scan
and the anatomy is there (GM 1.06, WM 1.00, CSF 0.22); the phantom is somewhat easier (CNR 1.4x, about half
the voxel noise, a narrower parenchyma histogram), not several times, so ``follow_up_mri`` is left as it is.

Run:  .venv/bin/python benchmarks/phantom_dwi.py [--cases 6] [--layout isles18] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "isles22"
REAL_DWI = REAL / "rawdata/sub-strokecase0009/ses-0001/sub-strokecase0009_ses-0001_dwi.nii.gz"
REAL_MASK = REAL / "derivatives/sub-strokecase0009/ses-0001/sub-strokecase0009_ses-0001_msk.nii.gz"
COLUMNS = ("case", "lesion_ml", "ratio", "cnr", "p10", "p50", "p90", "noise", "csf", "gm", "wm", "lesion")


def _neighbour_noise(dwi: np.ndarray, region: np.ndarray) -> float:
    """Robust voxel noise SD from differences of neighbours along the first axis, both inside ``region``."""
    pair = region[1:] & region[:-1]
    diff = (dwi[1:] - dwi[:-1])[pair] / np.sqrt(2.0)
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))))


def measure(dwi: np.ndarray, brain: np.ndarray, lesion: np.ndarray, tissue: np.ndarray | None = None) -> dict[str, float]:
    """The measurements of the module docstring for one DWI; ``tissue`` (phantom codes) adds tissue means."""
    dwi = np.asarray(dwi, dtype=np.float64)
    lesion = lesion & brain
    normal = brain & ~lesion
    values, les = dwi[normal], dwi[lesion]
    median = float(np.median(values))
    out = {
        "ratio": float(np.median(les)) / median,
        "cnr": float((les.mean() - values.mean()) / values.std()),
        **{f"p{q}": float(v) / median for q, v in zip((10, 50, 90), np.percentile(values, (10, 50, 90)))},
        "noise": _neighbour_noise(dwi, normal) / median,
        "lesion": float(les.mean()) / median,
    }
    if tissue is not None:
        from strokelab.data.phantom import CSF, GM, WM

        for name, code in (("csf", CSF), ("gm", GM), ("wm", WM)):
            region = normal & (tissue == code)
            out[name] = float(dwi[region].mean()) / median if region.any() else float("nan")
    return out


def real_row() -> dict[str, float | str]:
    img = nib.load(str(REAL_DWI))
    dwi = np.asarray(img.dataobj, dtype=np.float64)
    lesion = np.asarray(nib.load(str(REAL_MASK)).dataobj) > 0.5
    vox_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return {"case": "real ISLES'22 0009", "lesion_ml": lesion.sum() * vox_ml, **measure(dwi, dwi != 0, lesion)}


def phantom_rows(n_cases: int, layout: str, seed: int) -> list[dict[str, float | str]]:
    from strokelab.data.phantom import CSF, GM, WM, PhantomConfig, generate_case

    config = PhantomConfig(n_cases=max(n_cases, 1), layout=layout, seed=seed)
    rows = []
    for i in range(n_cases):
        images = generate_case(i, config)
        dwi = np.asarray(images["dwi"].dataobj, dtype=np.float64)
        tissue = np.asarray(images["truth_tissue"].dataobj)
        lesion = np.asarray(images["lesion-msk"].dataobj) > 0
        if not lesion.any():
            continue
        brain = np.isin(tissue, (CSF, GM, WM))
        vox_ml = float(np.prod(images["dwi"].header.get_zooms()[:3])) / 1000.0
        rows.append({"case": f"phantom {layout} #{i}", "lesion_ml": lesion.sum() * vox_ml, **measure(dwi, brain, lesion, tissue)})
    return rows


def table(rows: list[dict[str, float | str]]) -> str:
    lines = [" ".join(f"{c:>20}" if c == "case" else f"{c:>9}" for c in COLUMNS)]
    for row in rows:
        cells = []
        for c in COLUMNS:
            v = row.get(c, float("nan"))
            cells.append(f"{v:>20}" if c == "case" else f"{v:>9.2f}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--layout", default="isles18", choices=("isles18", "isles24"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    real = real_row()
    phantom = phantom_rows(args.cases, args.layout, args.seed)
    summary = {"case": "phantom median"}
    for c in COLUMNS[1:]:
        summary[c] = float(np.nanmedian([r[c] for r in phantom])) if phantom else float("nan")
    print("DWI: real vs phantom (intensities divided by the median of the normal brain)")
    print(table([real, *phantom, summary]))


if __name__ == "__main__":
    main()

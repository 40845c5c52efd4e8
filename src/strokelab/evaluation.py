"""Predict cases with any predictor (network or threshold baseline), write the masks, score them.

The same function serves ``predict.py`` and the test stage of ``train.py``, so a learned model and
the threshold baseline are always scored by identical code in the cases' native geometry.
``evaluate_maps`` does the same for regression (a predicted Tmax map against the case's own).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
import pandas as pd

from strokelab.data.check import load_label
from strokelab.data.layouts import Case, modality_path
from strokelab.inference import write_mask
from strokelab.io import atomic_path
from strokelab.metrics import METRIC_COLUMNS, REGRESSION_COLUMNS, case_metrics, regression_metrics, spacing_mm, voxel_volume_ml
from strokelab.report import plot_map_comparison, write_report

log = logging.getLogger(__name__)
MAX_PREVIEWS = 8  # evaluate_maps draws reference | prediction | difference for this many cases


class Predictor(Protocol):
    modalities: tuple[str, ...] | list[str]

    def name(self) -> str: ...

    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]: ...


def evaluate_cases(
    predictor: Predictor,
    cases: list[Case],
    out_dir: str | Path,
    threshold: float = 0.5,
    write_masks: bool = True,
    affine_tol_mm: float = 1e-3,
) -> pd.DataFrame | None:
    """Predict every case; write ``<case>.nii.gz`` masks, and ``metrics.csv`` + a summary if labels exist.

    Returns the per-case metrics table (None when no case has a label).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        prob, reference = predictor.predict_case(case)
        reference_name = Path(next(iter(case.images.values()))).name
        mask = prob >= threshold
        if write_masks:
            write_mask(mask, reference, out_dir / f"{case.id}.nii.gz")
        seconds = time.perf_counter() - t0
        if case.label is None or not Path(case.label).exists():
            log.info("%s: predicted in %.1f s", case.id, seconds)
            continue
        label = load_label(case.label, reference, affine_tol_mm, reference_name)
        label_img = nib.load(case.label)
        spacing = spacing_mm(label_img)
        row = {
            "case": case.id,
            "fold": case.fold,
            "centre": case.centre,
            "lesion_ml": float(label.sum()) * voxel_volume_ml(label_img),
            "pred_ml": float(mask.sum()) * voxel_volume_ml(label_img),
        }
        row.update(case_metrics(mask, label, spacing))
        row["seconds"] = seconds
        rows.append(row)
        log.info("%s: dice %.3f in %.1f s", case.id, row["dice"], seconds)
    if not rows:
        return None
    table = pd.DataFrame(rows, columns=["case", "fold", "centre", "lesion_ml", "pred_ml", *METRIC_COLUMNS, "seconds"])
    with atomic_path(out_dir / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_report(table, out_dir, title=predictor.name())
    return table


def evaluate_maps(predictor, cases: list[Case], out_dir: str | Path) -> pd.DataFrame | None:
    """Regression: predict every case's map (``predictor.target``, e.g. Tmax), write ``<case>_<target>.nii.gz``
    (float32, the reference header), and score it against the case's own map where one exists.

    Metrics (``mse``, ``mae``, ``ssim``, ``psnr``; see :func:`strokelab.metrics.regression_metrics`) are taken
    inside the reference brain (the case map's non-zero voxels), with the case map clipped to the trained
    value range as in training. Returns the per-case table (None when no case has its map).
    """
    from strokelab.io import load_nifti, save_nifti
    from strokelab.perfusion.maps import map_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target, value_range = predictor.target, predictor.value_range
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        values, reference = predictor.predict_case(case)
        save_nifti(map_image(values, reference), out_dir / f"{case.id}_{target}.nii.gz")
        seconds = time.perf_counter() - t0
        path = case.images.get(target) or modality_path(case.root, case.id, target)
        if not Path(path).exists():
            log.info("%s: predicted in %.1f s", case.id, seconds)
            continue
        truth, _ = load_nifti(path)
        truth = np.nan_to_num(truth, nan=0.0, posinf=0.0, neginf=0.0)
        if value_range is not None:
            truth = np.where(truth != 0, np.clip(truth, *value_range), 0.0)
        span = (value_range[1] - value_range[0]) if value_range is not None else float(truth.max() - truth.min())
        row = {"case": case.id, "fold": case.fold, "centre": case.centre}
        row.update(regression_metrics(values, truth, truth != 0, span))
        if len(rows) < MAX_PREVIEWS:
            title = f"{case.id}: {predictor.name()} vs the case's {target} (MAE {row['mae']:.2f})"
            plot_map_comparison(values, truth, out_dir / f"{case.id}_{target}.png", title, value_range)
        row["seconds"] = seconds
        rows.append(row)
        log.info("%s: %s MAE %.2f in %.1f s", case.id, target, row["mae"], seconds)
    if not rows:
        return None
    table = pd.DataFrame(rows, columns=["case", "fold", "centre", *REGRESSION_COLUMNS, "seconds"])
    with atomic_path(out_dir / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_report(table, out_dir, title=predictor.name())
    return table

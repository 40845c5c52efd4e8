"""Predict cases with any predictor (a trained model or the threshold baseline), write every output, score it.

The same function serves ``predict.py`` and the test stage of ``train.py``, so a learned model and the
threshold baseline are always scored by identical code in the cases' native geometry. Per case and output:

* a ``mask`` is thresholded and written as ``<case>.nii.gz`` (uint8, the reference header) and, where the case
  has a follow-up lesion mask, scored by :func:`strokelab.metrics.case_metrics`; a preview PNG ``<case>.png``
  (the TUM project's Fig. 4.1: the model's first input | prediction | label | both contours on the input, on
  the slice with the most lesion; :func:`strokelab.previews.mask_row`) is drawn for the first cases;
* a ``map`` (e.g. Tmax in s) is written as ``<case>_<name>.nii.gz`` (float32) and, where the case has its own
  map of that name, scored by :func:`strokelab.metrics.regression_metrics` inside the reference brain (the map's
  non-zero voxels), the case map clipped to the trained value range as in training; a preview PNG (reference |
  prediction | difference) is drawn for the first cases;
* an ``image`` (e.g. a pseudo-DWI) is written as ``<case>_<name>.nii.gz`` (float32) and, where the case has
  the image it is scored against (e.g. its DWI, scaled to [0, 1] by ``preprocess.scale_to_unit`` as in
  training), scored by :func:`strokelab.metrics.synthesis_metrics`: SSIM/PSNR in the brain (the perfusion
  maps' non-zero voxels, else the reference's) and around the lesion; the same preview PNG is drawn.

``metrics.csv`` (one row per scored case) and a summary follow when any case was scored. A case's outputs are
written only once it has been predicted and scored (:func:`evaluate_case`): a case whose files fail leaves no
new output. :func:`evaluate_cases` stops at the first such case (the test stage of ``train.py``);
``predict.py`` evaluates case by case and goes on past a failed one (:mod:`strokelab.predict`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple, Protocol

import nibabel as nib
import numpy as np
import pandas as pd

from strokelab.data.check import load_label
from strokelab.data.layouts import Case
from strokelab.data.preprocess import UNIT_SCALED_TARGETS, scale_to_unit
from strokelab.inference import Prediction, case_image_path, write_mask
from strokelab.io import atomic_path, load_nifti, save_nifti
from strokelab.metrics import (
    METRIC_COLUMNS,
    REGRESSION_COLUMNS,
    SYNTHESIS_COLUMNS,
    case_metrics,
    regression_metrics,
    spacing_mm,
    synthesis_metrics,
    voxel_volume_ml,
)
from strokelab.models.base import OutputSpec
from strokelab.report import plot_map_comparison, write_report

log = logging.getLogger(__name__)
MAX_PREVIEWS = 8  # previews (masks: input | prediction | label; maps: reference | prediction | difference) for this many cases


class Predictor(Protocol):
    modalities: tuple[str, ...] | list[str]
    threshold: float

    def name(self) -> str: ...

    def predict_case(self, case: Case) -> Prediction: ...


def output_path(out_dir: Path, case_id: str, name: str, spec: OutputSpec) -> Path:
    """Where an output of a case is written: the mask as ``<case>.nii.gz``, anything else ``<case>_<name>.nii.gz``."""
    return out_dir / (f"{case_id}.nii.gz" if spec.kind == "mask" else f"{case_id}_{name.replace('_', '-')}.nii.gz")


def score_image(
    values: np.ndarray, truth: np.ndarray, case: Case, prediction: Prediction, spec: OutputSpec, affine_tol_mm: float
) -> dict:
    """Synthesis metrics of an image output against the case's reference image (native grid, scaled as in
    training): in the brain (the union of the case's perfusion maps' non-zero voxels, else the reference's)
    and around the case's lesion (none without a mask: the local columns are NaN)."""
    from strokelab.perfusion.derive import ISLES_MAPS

    reference = scale_to_unit(truth) if spec.reference in UNIT_SCALED_TARGETS else truth
    maps = [case_image_path(case, m) for m in ISLES_MAPS if m in case.images and case_image_path(case, m).exists()]
    brain = np.zeros(truth.shape, bool)
    for path in maps:
        data, _ = load_nifti(path)
        if data.shape[:3] == brain.shape:
            brain |= np.nan_to_num(data[..., 0] if data.ndim == 4 else data) != 0
    if not brain.any():
        brain = reference != 0
    lesion = np.zeros(truth.shape, bool)
    if case.label is not None and Path(case.label).exists():
        reference_name = Path(next(iter(case.images.values()))).name
        lesion = load_label(case.label, prediction.reference, affine_tol_mm, reference_name) > 0
    span = (spec.value_range[1] - spec.value_range[0]) if spec.value_range else 1.0
    return synthesis_metrics(values, reference, brain, lesion, spacing_mm(prediction.reference), span)


def plot_mask_preview(
    case: Case, predictor: Predictor, mask: np.ndarray, label: np.ndarray, path: Path, title: str, images: dict | None = None
) -> Path:
    """The TUM project's Fig. 4.1 for one case, on its native grid: the image the predictor's geometry comes
    from (its first 3D input; a 4D series: its maximum over time) | the predicted mask | the label | both
    contours on the input, on the axial slice with the most lesion (the most predicted lesion when the label is
    empty). ``images``: the inputs as the prediction read them (else only that slice of the input is read).
    Written atomically as a PNG."""
    from strokelab.data.check import reference_modality
    from strokelab.data.layouts import TIME_SERIES
    from strokelab.previews import lesion_slice, mask_row, save_png

    name = reference_modality(list(predictor.modalities))
    z = lesion_slice(label if label.any() else mask, label.shape[-1])
    read = (images or {}).get(name)
    if read is not None:
        image = read[:, :, z].max(axis=-1) if name in TIME_SERIES else read[:, :, z]
        name = f"{name} (max over time)" if name in TIME_SERIES else name
    elif name in TIME_SERIES:
        series, _ = load_nifti(case_image_path(case, name), expect_3d=False)
        image, name = series[:, :, z].max(axis=-1), f"{name} (max over time)"
    else:
        image = np.asarray(nib.load(case_image_path(case, name)).dataobj[:, :, z], dtype=np.float32)
    image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    return save_png(mask_row(image, mask[:, :, z], label[:, :, z] > 0.5, name, f"{title}, slice {z}"), path)


class CaseScore(NamedTuple):
    """One scored case: its row of ``metrics.csv`` and the columns it fills, in table order."""

    row: dict  # case, fold, centre, the metric values, seconds[, params_m]
    columns: list[str]  # case, fold, centre and the metric columns (seconds and params_m are appended by the table)


def evaluate_case(
    predictor: Predictor,
    case: Case,
    out_dir: str | Path,
    threshold: float | None = None,
    write_masks: bool = True,
    affine_tol_mm: float = 1e-3,
    previews: bool = True,
) -> CaseScore | None:
    """Predict one case, score what can be scored, then write every output (see the module docstring).

    Everything that can fail on the case's files (prediction, the lesion mask, the reference map or image) is
    read before the first output is written, so a case that fails leaves no new output behind. ``previews``
    draws the reference | prediction | difference PNG of a map or image output. Returns None when nothing
    of the case could be scored.
    """
    from strokelab.perfusion.maps import map_image

    out_dir = Path(out_dir)
    threshold = float(predictor.threshold if threshold is None else threshold)
    t0 = time.perf_counter()
    prediction = predictor.predict_case(case)
    row: dict = {"case": case.id, "fold": case.fold, "centre": case.centre}
    columns = ["case", "fold", "centre"]
    writes: list[tuple[Path, np.ndarray, bool]] = []  # (path, values, is a mask)
    plots: list[tuple] = []  # plot_map_comparison arguments, drawn after the writes
    mask_plots: list[tuple] = []  # plot_mask_preview arguments (after case and predictor), drawn after the writes
    for name, spec in prediction.specs.items():
        values = prediction.outputs[name]
        path = output_path(out_dir, case.id, name, spec)
        if spec.kind == "mask":
            mask = values >= threshold
            if write_masks:
                writes.append((path, mask, True))
            if case.label is None or not Path(case.label).exists():
                continue
            reference_name = Path(next(iter(case.images.values()))).name
            label = load_label(case.label, prediction.reference, affine_tol_mm, reference_name)
            label_img = nib.load(case.label)
            row["lesion_ml"] = float(label.sum()) * voxel_volume_ml(label_img)
            row["pred_ml"] = float(mask.sum()) * voxel_volume_ml(label_img)
            row.update(case_metrics(mask, label, spacing_mm(label_img)))
            columns += [c for c in ("lesion_ml", "pred_ml", *METRIC_COLUMNS) if c not in columns]
            title = f"{case.id}: {predictor.name()} (Dice {row['dice']:.3f})"
            mask_plots.append((mask, label, out_dir / f"{case.id}.png", title))
            continue
        writes.append((path, values, False))
        if spec.reference is None or not case_image_path(case, spec.reference).exists():
            continue
        truth_path = case_image_path(case, spec.reference)
        truth, _ = load_nifti(truth_path)
        truth = np.nan_to_num(truth, nan=0.0, posinf=0.0, neginf=0.0)
        if spec.kind == "image":
            row.update(score_image(values, truth, case, prediction, spec, affine_tol_mm))
            columns += [c for c in SYNTHESIS_COLUMNS if c not in columns]
            title = f"{case.id}: {predictor.name()} vs the case's {spec.reference} (SSIM {row['ssim']:.3f})"
            plots.append(
                (
                    values,
                    scale_to_unit(truth),
                    out_dir / f"{case.id}_{name.replace('_', '-')}.png",
                    title,
                    spec.value_range,
                    {"unit": ""},
                )
            )
            continue
        value_range = spec.value_range
        if value_range is not None:
            truth = np.where(truth != 0, np.clip(truth, *value_range), 0.0)
        span = (value_range[1] - value_range[0]) if value_range is not None else float(truth.max() - truth.min())
        row.update(regression_metrics(values, truth, truth != 0, span))
        columns += [c for c in REGRESSION_COLUMNS if c not in columns]
        title = f"{case.id}: {predictor.name()} vs the case's {name} (MAE {row['mae']:.2f})"
        plots.append((values, truth, out_dir / f"{case.id}_{name.replace('_', '-')}.png", title, value_range, {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, values, is_mask in writes:
        if is_mask:
            write_mask(values, prediction.reference, path)
        else:
            save_nifti(map_image(values, prediction.reference), path)
    if previews:
        for values, truth, png, title, value_range, kwargs in plots:
            plot_map_comparison(values, truth, png, title, value_range, **kwargs)
        for mask, label, png, title in mask_plots:
            plot_mask_preview(case, predictor, mask, label, png, title, prediction.images)
    row["seconds"] = time.perf_counter() - t0
    if getattr(predictor, "model", None) is not None:
        row["params_m"] = predictor.model.parameter_count() / 1e6  # Wang et al.'s Table 3 lists it
    summary = ", ".join(f"{k} {row[k]:.3f}" for k in ("dice", "mae") if k in row)
    log.info("%s: %s in %.1f s", case.id, summary or "predicted", row["seconds"])
    return CaseScore(row, columns) if len(columns) > 3 else None


def metrics_table(scores: list[CaseScore]) -> pd.DataFrame:
    """The per-case metrics table of scored cases: the union of their columns, then ``seconds`` (and
    ``params_m`` for a trained model)."""
    columns: list[str] = []
    for score in scores:
        columns += [c for c in score.columns if c not in columns]
    extra = ["seconds", *(["params_m"] if "params_m" in scores[0].row else [])]
    return pd.DataFrame([s.row for s in scores], columns=[*columns, *extra])


def write_metrics(table: pd.DataFrame, out_dir: str | Path, title: str = "") -> None:
    """``out_dir/metrics.csv`` (atomically) and the summary of :func:`strokelab.report.write_report`."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_report(table, out_dir, title=title)


def evaluate_cases(
    predictor: Predictor,
    cases: list[Case],
    out_dir: str | Path,
    threshold: float | None = None,
    write_masks: bool = True,
    affine_tol_mm: float = 1e-3,
) -> pd.DataFrame | None:
    """Predict every case, write every output and score what can be scored (see the module docstring).

    Returns the per-case metrics table (None when no case could be scored).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: list[CaseScore] = []
    for case in cases:
        score = evaluate_case(
            predictor, case, out_dir, threshold, write_masks, affine_tol_mm, previews=len(scores) < MAX_PREVIEWS
        )
        if score is not None:
            scores.append(score)
    if not scores:
        return None
    table = metrics_table(scores)
    write_metrics(table, out_dir, title=predictor.name())
    return table

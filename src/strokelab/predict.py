"""The prediction run behind ``python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH``.

The checkpoint rebuilds its model (any family: it stores the whole model config) and says which inputs it
reads; ``model=threshold`` predicts with the threshold baseline instead (no checkpoint). The model is built
once per call, then each case is checked and predicted on its own: each declared output is written
atomically in the case's exact native geometry (the mask as ``DIR/<case>.nii.gz``, a map or image as
``DIR/<case>_<name>.nii.gz``), and where the cases can be scored (a lesion mask, or the case's own map)
``DIR/metrics.csv`` and a summary follow.

A case that fails on its own files (any :class:`~strokelab.errors.StrokelabError`: a missing, unreadable or
truncated file, a wrong shape or affine, NaN/Inf voxels, a bad lesion mask) is reported in one
``error: FILE: problem (fix)`` line and listed in ``DIR/failed.csv`` (case, file, problem); the other cases
are finished. A failed case leaves no new output (its outputs are written only once it is predicted and
scored). The call ends with ``predicted N of M case(s) to DIR[; K skipped ...][; F failed: ids]``.

Exit codes: 0 every case predicted or skipped; 1 some cases failed (the others are written); 2 nothing was
predicted because of an error that is not about one case (a bad checkpoint or config, an input that is no
data set), printed as one line by :func:`strokelab.entry.exit_on_user_error` before any case.

Re-running: ``DIR/predicted.json`` records, per case, the settings that wrote its outputs (the checkpoint
file's path, size and time, or the threshold model's config; ``threshold``; ``inference``) and its
metrics row. A case whose every declared output loads as a whole NIfTI with the shape and affine of the
case's reference image and whose record matches the current settings is skipped (its inputs are not read
again; its recorded row stays in ``metrics.csv``); a missing or damaged output, other settings or
``overwrite=true`` redo it. So ``metrics.csv`` covers the cases predicted in this call plus the skipped
ones, and a call interrupted half-way resumes where it stopped.

A case whose perfusion maps are missing but whose raw CTP is there gets its maps computed first
(``strokelab.perfusion``, block-circulant SVD), written to ``DIR/perfusion-maps/<case>/``; a re-run reuses
them while they are newer than the CTP (``overwrite=true`` derives them again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from strokelab.errors import ConfigError, DataError, DataSetError, StrokelabError

log = logging.getLogger(__name__)

EXIT_CASES_FAILED = 1  # some cases failed, the others were written (2: a user error stopped everything)
RECORD_FILE = "predicted.json"
FAILED_FILE = "failed.csv"
GEOMETRY_TOL_MM = 1e-3  # an output's affine must match its case's reference image within this
SHOWN_IDS = 10  # case ids listed in the summary line (all failed ones are in failed.csv)


def build_predictor(cfg: DictConfig):
    from strokelab.inference import ModelPredictor
    from strokelab.tasks.threshold import is_threshold

    if is_threshold(cfg.get("model")):
        predictor = instantiate(cfg.model)
        if getattr(predictor, "nan_policy", "error") not in ("error", "replace"):
            raise ConfigError("model.nan_policy", f"'{predictor.nan_policy}' is not 'error' or 'replace'", "pick one of them")
        return predictor
    if cfg.get("model") is not None:
        raise ConfigError(
            "model",
            "is set with a checkpoint: the checkpoint carries its own model config",
            "drop model=..., or use model=threshold",
        )
    if not cfg.get("ckpt"):
        raise ConfigError("ckpt", "is required to predict with a trained model", "give ckpt=PATH, or model=threshold")
    overrides = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") is not None else {}
    return ModelPredictor.from_checkpoint(cfg.ckpt, device=cfg.get("device"), inference=overrides)


@dataclass
class PredictRun:
    """What one call did, case by case, for the summary line, the exit code and the tests."""

    out_dir: Path
    ids: list[str]
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, StrokelabError] = field(default_factory=dict)
    table: pd.DataFrame | None = None

    def summary_line(self) -> str:
        line = f"predicted {len(self.predicted)} of {len(self.ids)} case(s) to {self.out_dir}"
        if self.skipped:
            line += f"; {len(self.skipped)} skipped (already predicted; overwrite=true redoes them): {_ids(self.skipped)}"
        if self.failed:
            line += f"; {len(self.failed)} failed: {_ids(list(self.failed))} (listed in {self.out_dir / FAILED_FILE})"
        return line


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN_IDS]) + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def predict(cfg: DictConfig) -> None:
    """Run :func:`predict_cases`, print the metrics summary and the summary line; exit 1 when a case failed."""
    from strokelab.report import summarize

    run = predict_cases(cfg)
    if run.table is not None:
        print(summarize(run.table).to_string())
        print(f"per-case metrics: {run.out_dir / 'metrics.csv'}")
    print(run.summary_line())
    if run.failed:
        sys.stdout.flush()
        sys.exit(EXIT_CASES_FAILED)


def predict_cases(cfg: DictConfig) -> PredictRun:
    """Predict every case of ``cfg.input`` into ``cfg.output`` case by case (see the module docstring).

    Raises a StrokelabError (one line, exit 2) only for what stops every case: a bad config or checkpoint,
    an input that is no data set or case folder, an unknown modality.
    """
    from strokelab.data.check import check_headers
    from strokelab.data.layouts import case_ids, discover, resolve_input
    from strokelab.evaluation import MAX_PREVIEWS, CaseScore, evaluate_case, metrics_table, write_metrics
    from strokelab.models.base import OutputSpec
    from strokelab.perfusion.derive import fill_missing_maps

    if cfg.get("input") is None or cfg.get("output") is None:
        raise ConfigError("input/output", "both are required", "python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH")
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ConfigError("overwrite", f"is {overwrite!r}, not true or false", "give overwrite=true or overwrite=false")
    predictor = build_predictor(cfg)
    root, ids = resolve_input(cfg.input)
    ids = case_ids(root) if ids is None else ids
    specs = {n: s or OutputSpec("mask") for n, s in getattr(predictor, "specs", {"mask": None}).items()}
    has_mask = any(s.kind == "mask" for s in specs.values())
    modalities = list(predictor.modalities)
    discover(root, modalities, with_label=has_mask, ids=[])  # an unknown modality stops here, not once per case
    reader = f"the model of {cfg.ckpt}" if getattr(predictor, "model", None) is not None else "the threshold baseline"
    reader = f"{reader} ({', '.join(modalities)})"
    threshold = float(predictor.threshold if cfg.get("threshold") is None else cfg.threshold)
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    maps_dir = out_dir / "perfusion-maps"
    settings = settings_record(cfg, predictor, threshold)
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    record = read_record(out_dir)

    run = PredictRun(out_dir, list(ids))
    scores: dict[str, CaseScore] = {}
    prefetch = getattr(predictor, "prefetch", None)  # read the next case while this one is predicted
    try:
        for cid in ids:
            try:
                case = discover(root, modalities, with_label=has_mask, ids=[cid])[0]
                if not overwrite:
                    reuse_derived_maps(case, maps_dir)
                    entry = record["cases"].get(cid)
                    if entry and entry.get("settings") == fingerprint and outputs_finished(predictor, case, specs, out_dir):
                        log.info("%s: outputs already in %s with these settings, skipped", cid, out_dir)
                        run.skipped.append(cid)
                        if entry.get("row") is not None:
                            scores[cid] = CaseScore(entry["row"], list(entry["columns"]))
                        continue
                for note in fill_missing_maps([case], maps_dir):
                    log.info(note)
                check_headers([case], reader=reader)
                if prefetch is not None:
                    prefetch_next(prefetch, root, modalities, has_mask, ids, ids.index(cid), record, fingerprint)
                n_scored = sum(c in scores for c in run.predicted)
                score = evaluate_case(predictor, case, out_dir, threshold=threshold, previews=n_scored < MAX_PREVIEWS)
            except StrokelabError as err:
                err = case_error(cid, err)
                print(f"error: {err.line()}", file=sys.stderr)
                run.failed[cid] = err
                if record["cases"].pop(cid, None) is not None:  # its outputs (if any) are no longer known good
                    write_record(out_dir, record, settings, fingerprint)
                continue
            run.predicted.append(cid)
            if score is not None:
                scores[cid] = score
            record["cases"][cid] = {
                "settings": fingerprint,
                "columns": None if score is None else score.columns,
                "row": None if score is None else _plain(score.row),
            }
            write_record(out_dir, record, settings, fingerprint)
    finally:
        if hasattr(predictor, "close"):
            predictor.close()

    rows = [scores[cid] for cid in ids if cid in scores]
    if rows:
        run.table = metrics_table(rows)
        write_metrics(run.table, out_dir, title=predictor.name())
    write_failed(out_dir, run.failed)
    return run


def prefetch_next(prefetch, root, modalities, has_mask: bool, ids: list[str], i: int, record: dict, fingerprint: str) -> None:
    """Start reading the case after ``ids[i]`` that this call will predict (not recorded as done with these
    settings; every input already on disk: a case whose maps are derived first is read in its own turn)."""
    from strokelab.data.layouts import discover

    for cid in ids[i + 1 :]:
        entry = record["cases"].get(cid)
        if entry and entry.get("settings") == fingerprint:
            continue  # most likely skipped; checked in its turn
        try:
            case = discover(root, modalities, with_label=has_mask, ids=[cid])[0]
        except StrokelabError:
            return  # reported in its turn
        if all(Path(p).is_file() for p in case.images.values()):
            prefetch(case)
        return


def case_error(cid: str, err: StrokelabError) -> StrokelabError:
    """One line for a failed case: the first of several problems (counting the others), the case id where
    the error names no file."""
    if isinstance(err, DataSetError) and err.errors:
        first, more = err.errors[0], len(err.errors) - 1
        problem = f"{first.problem}; and {more} more problem(s) in case {cid} (python -m strokelab.data.check lists them)"
        return type(first)(first.where or cid, problem, first.fix)
    return type(err)(cid, err.problem, err.fix) if err.where is None else err


def write_failed(out_dir: Path, failed: dict[str, StrokelabError]) -> None:
    """``DIR/failed.csv`` (case, file, problem) of this call's failed cases, atomically; removed when none failed."""
    from strokelab.io import atomic_path

    path = out_dir / FAILED_FILE
    if not failed:
        path.unlink(missing_ok=True)
        return
    rows = [
        {"case": cid, "file": err.where or "", "problem": err.problem + (f" ({err.fix})" if err.fix else "")}
        for cid, err in failed.items()
    ]
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=["case", "file", "problem"]).to_csv(tmp, index=False)


def settings_record(cfg: DictConfig, predictor, threshold: float) -> dict:
    """What makes a case's outputs what they are, besides its own files: the checkpoint (path, size and
    modification time: a retrained ``last.ckpt`` differs) or the threshold model's config, the mask threshold
    and the inference overrides."""
    inference = cfg.get("inference")
    record: dict = {
        "threshold": threshold,
        "inference": OmegaConf.to_container(inference, resolve=True) if inference is not None else {},
    }
    if getattr(predictor, "model", None) is not None:
        ckpt = Path(cfg.ckpt).resolve()
        stat = ckpt.stat()
        record["checkpoint"] = {"path": str(ckpt), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    else:
        record["model"] = OmegaConf.to_container(cfg.model, resolve=True)
    return record


def read_record(out_dir: Path) -> dict:
    """``DIR/predicted.json`` (empty when absent; an unreadable one is ignored with a warning: the cases it
    names are then redone, nothing is lost)."""
    path = out_dir / RECORD_FILE
    empty: dict = {"settings": {}, "cases": {}}
    if not path.exists():
        return empty
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("cases"), dict) or not isinstance(record.get("settings"), dict):
            raise ValueError("no 'cases' or 'settings'")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: unreadable (%s); every case is predicted again", path, exc)
        return empty
    return record


def write_record(out_dir: Path, record: dict, settings: dict, fingerprint: str) -> None:
    """Write ``DIR/predicted.json`` atomically, with the settings of the fingerprints its cases name."""
    from strokelab.io import atomic_write_text

    record["settings"][fingerprint] = settings
    used = {entry.get("settings") for entry in record["cases"].values()}
    record["settings"] = {fp: s for fp, s in record["settings"].items() if fp in used or fp == fingerprint}
    atomic_write_text(out_dir / RECORD_FILE, json.dumps(record, indent=1, sort_keys=True, allow_nan=True) + "\n")


def _plain(row: dict) -> dict:
    """A metrics row with numpy scalars as Python numbers (for JSON)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def reference_image_path(predictor, case) -> Path:
    """The image whose grid (shape, affine) a case's outputs are written on, chosen as the predictors choose
    it (``ModelPredictor.predict_case``, the threshold baseline): the case's own map of a map output when it
    has one and the model does not read it, else the first 3D image the predictor reads (else its series)."""
    from strokelab.data.check import reference_modality
    from strokelab.inference import case_image_path

    inputs = list(getattr(getattr(predictor, "model", None), "inputs", predictor.modalities))
    on_grid = [
        s.reference
        for s in (getattr(predictor, "specs", None) or {}).values()
        if s is not None
        and s.kind == "map"
        and s.reference
        and s.reference not in inputs
        and case_image_path(case, s.reference).exists()
    ]
    names = list(dict.fromkeys([*on_grid[:1], *predictor.modalities]))
    return case_image_path(case, reference_modality(names))


def outputs_finished(predictor, case, specs: dict, out_dir: Path) -> bool:
    """Whether every declared output of ``case`` is in ``out_dir`` as a whole NIfTI (read by
    :func:`strokelab.io.load_nifti`, every voxel: a truncated file is not finished) with the shape and affine
    of the case's reference image."""
    from strokelab.evaluation import output_path
    from strokelab.io import load_nifti

    try:
        reference = nib.load(str(reference_image_path(predictor, case)))
    except Exception:  # noqa: BLE001 - a missing or unreadable reference: the case is predicted (and fails there)
        return False
    shape, affine = tuple(reference.shape[:3]), reference.affine
    for name, spec in specs.items():
        path = output_path(out_dir, case.id, name, spec)
        if not path.is_file():
            return False
        try:
            data, img = load_nifti(path)
        except DataError as err:
            log.info("%s: %s: predicted again", path, err.problem)
            return False
        if data.shape != shape or not np.allclose(img.affine, affine, rtol=0, atol=GEOMETRY_TOL_MM):
            log.info("%s: shape or affine differs from the case's reference image: predicted again", path)
            return False
    return True


def reuse_derived_maps(case, maps_dir: Path) -> None:
    """Point a case's missing perfusion maps to those an earlier call derived into ``maps_dir/<case>/`` (all
    four there and newer than the case's CTP): a re-run neither derives them again nor loses the grid its
    outputs were checked against."""
    from strokelab.data.layouts import modality_path
    from strokelab.perfusion.derive import ISLES_MAPS, derived_map_name

    missing = [m for m in ISLES_MAPS if m in case.images and not Path(case.images[m]).exists()]
    if not missing:
        return
    ctp = modality_path(case.root, case.id, "ctp")
    derived = {m: maps_dir / case.id / derived_map_name(case.id, m) for m in ISLES_MAPS}
    if not ctp.is_file() or not all(p.is_file() for p in derived.values()):
        return
    if min(p.stat().st_mtime_ns for p in derived.values()) < ctp.stat().st_mtime_ns:
        return
    for m in missing:
        case.images[m] = derived[m]
    log.info("%s: %s from %s (derived by an earlier call)", case.id, ", ".join(missing), maps_dir / case.id)

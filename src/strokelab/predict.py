"""The prediction run behind ``python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH``.

The checkpoint rebuilds its model (any family: it stores the whole model config) and says which inputs it
reads; ``model=threshold`` predicts with the threshold baseline instead (no checkpoint). Every case is checked
before any is predicted; each declared output is written atomically in the case's exact native geometry (the
mask as ``DIR/<case>.nii.gz``, a map or image as ``DIR/<case>_<name>.nii.gz``), and where the cases can be
scored (a lesion mask, or the case's own map) ``DIR/metrics.csv`` and a summary follow.

A case whose perfusion maps are missing but whose raw CTP is there gets its maps computed first
(``strokelab.perfusion``, block-circulant SVD), written to ``DIR/perfusion-maps/<case>/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from strokelab.errors import ConfigError

log = logging.getLogger(__name__)


def build_predictor(cfg: DictConfig):
    from strokelab.inference import ModelPredictor
    from strokelab.train import is_threshold

    if is_threshold(cfg.get("model")):
        return instantiate(cfg.model)
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


def predict(cfg: DictConfig) -> None:
    from strokelab.data.check import check_headers
    from strokelab.data.layouts import discover, resolve_input
    from strokelab.evaluation import evaluate_cases
    from strokelab.perfusion.derive import fill_missing_maps
    from strokelab.report import summarize

    if cfg.get("input") is None or cfg.get("output") is None:
        raise ConfigError("input/output", "both are required", "python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH")
    predictor = build_predictor(cfg)
    root, ids = resolve_input(cfg.input)
    specs = getattr(predictor, "specs", {"mask": None})
    has_mask = any(s is None or s.kind == "mask" for s in specs.values())
    cases = discover(root, list(predictor.modalities), with_label=has_mask, ids=ids)
    for note in fill_missing_maps(cases, Path(cfg.output) / "perfusion-maps"):
        log.info(note)
    reader = f"the model of {cfg.ckpt}" if getattr(predictor, "model", None) is not None else "the threshold baseline"
    check_headers(cases, reader=f"{reader} ({', '.join(predictor.modalities)})")
    threshold = cfg.get("threshold")
    table = evaluate_cases(predictor, cases, cfg.output, threshold=None if threshold is None else float(threshold))
    written = ", ".join("mask" if s is None or s.kind == "mask" else n for n, s in specs.items())
    print(f"wrote {written} for {len(cases)} case(s) to {cfg.output}")
    if table is not None:
        print(summarize(table).to_string())
        print(f"per-case metrics: {Path(cfg.output) / 'metrics.csv'}")

"""The prediction run behind ``python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH``.

``model=threshold`` predicts with the threshold baseline instead (no checkpoint). Every case is checked
before any is predicted; one uint8 mask per case is written atomically as ``DIR/<case>.nii.gz`` in the
case's exact native geometry; if the cases have labels, ``DIR/metrics.csv`` and a summary follow.

A case whose perfusion maps are missing but whose raw CTP is there gets its maps computed first
(``strokelab.perfusion``, block-circulant SVD), written to ``DIR/perfusion-maps/<case>/``. A regression
checkpoint (Tmax from the CTP) writes ``DIR/<case>_tmax.nii.gz`` maps and scores them against the case's
own Tmax map where it has one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from strokelab.errors import ConfigError

log = logging.getLogger(__name__)


def build_predictor(cfg: DictConfig):
    from strokelab.inference import NetworkPredictor
    from strokelab.train import is_threshold

    if is_threshold(cfg.get("model")):
        return instantiate(cfg.model)
    if not cfg.get("ckpt"):
        raise ConfigError("ckpt", "is required to predict with a trained model", "give ckpt=PATH, or model=threshold")
    net_cfg = None
    if cfg.get("model") is not None:
        # A model config given on the command line must match the checkpoint; its ${data...} links resolve
        # against the checkpoint's own modality list.
        import torch

        from strokelab.errors import CheckpointError

        try:
            meta = torch.load(cfg.ckpt, map_location="cpu", weights_only=False).get("strokelab", {})
        except Exception:  # noqa: BLE001 - from_checkpoint below reports the bad file in one line
            meta = {}
        if meta:
            OmegaConf.update(cfg, "data", {"modalities": meta["modalities"]}, force_add=True)
            net_cfg = cfg.model.net
        elif Path(cfg.ckpt).is_file():
            raise CheckpointError(cfg.ckpt, "is not a strokelab checkpoint", "give a .ckpt written by train.py")
    overrides = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") is not None else {}
    return NetworkPredictor.from_checkpoint(cfg.ckpt, net_cfg=net_cfg, device=cfg.get("device"), inference=overrides)


def predict(cfg: DictConfig) -> None:
    from strokelab.data.check import check_headers
    from strokelab.data.layouts import discover, resolve_input
    from strokelab.evaluation import evaluate_cases, evaluate_maps
    from strokelab.perfusion.derive import fill_missing_maps
    from strokelab.report import summarize

    if cfg.get("input") is None or cfg.get("output") is None:
        raise ConfigError("input/output", "both are required", "python predict.py input=ROOT_OR_CASE output=DIR ckpt=PATH")
    predictor = build_predictor(cfg)
    root, ids = resolve_input(cfg.input)
    regression = getattr(predictor, "target", None) is not None
    cases = discover(root, list(predictor.modalities), with_label=not regression, ids=ids)
    for note in fill_missing_maps(cases, Path(cfg.output) / "perfusion-maps"):
        log.info(note)
    check_headers(cases)
    if regression:
        table = evaluate_maps(predictor, cases, cfg.output)
        print(f"wrote {len(cases)} {predictor.target} map(s) to {cfg.output}")
        if table is not None:
            print(summarize(table).to_string())
            print(f"per-case metrics: {Path(cfg.output) / 'metrics.csv'}")
        return
    threshold = cfg.get("threshold") if cfg.get("threshold") is not None else getattr(predictor, "threshold", 0.5)
    table = evaluate_cases(predictor, cases, cfg.output, threshold=float(threshold))
    print(f"wrote {len(cases)} mask(s) to {cfg.output}")
    if table is not None:
        summary = summarize(table)
        print(summary.to_string())
        print(f"per-case metrics: {Path(cfg.output) / 'metrics.csv'}")

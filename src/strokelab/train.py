"""The training run behind ``python train.py``: data -> fit -> test on the held-out fold -> table.

The test stage predicts the held-out cases in their native geometry with the best checkpoint and with
the threshold baseline (``baseline`` in the config), scores both with the same code
(``evaluation.evaluate_cases``) and prints one comparison table. A regression run (``data.target`` set,
e.g. Tmax from the raw CTP) is tested the same way by ``evaluation.evaluate_maps``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from strokelab.errors import CheckpointError, ConfigError
from strokelab.io import atomic_write_text

log = logging.getLogger(__name__)
THRESHOLD_TARGET = "strokelab.tasks.threshold.ThresholdBaseline"


def is_threshold(model_cfg: Any) -> bool:
    return model_cfg is not None and model_cfg.get("_target_") == THRESHOLD_TARGET


def checkpoint_meta(cfg: DictConfig) -> dict[str, Any]:
    """Everything predict.py needs besides the weights: stored inside every checkpoint."""
    value_range = cfg.model.get("value_range")
    return {
        "name": cfg.get("model_name") or cfg.get("task_name", "model"),
        "net": OmegaConf.to_container(cfg.model.net, resolve=True),
        "modalities": list(cfg.data.modalities),
        "target": cfg.data.get("target"),
        "value_range": None if value_range is None else [float(v) for v in value_range],
        "preprocess": OmegaConf.to_container(cfg.data.preprocess, resolve=True),
        "inference": OmegaConf.to_container(cfg.model.inference, resolve=True),
        "threshold": float(cfg.model.get("threshold", 0.5)),
    }


def train(cfg: DictConfig) -> float | None:
    """Train (unless model=threshold), then test; returns the best ``monitor.metric`` for sweepers."""
    from strokelab.data.datamodule import StrokeDataModule
    from strokelab.evaluation import evaluate_cases, evaluate_maps
    from strokelab.inference import NetworkPredictor
    from strokelab.metrics import REGRESSION_COLUMNS
    from strokelab.report import comparison_table

    # Lightning prints through its own handler and Hydra's root handler: keep Hydra's (console + train.log).
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise CheckpointError(cfg.ckpt_path, "checkpoint to resume from does not exist", "fix ckpt_path or drop it")
    datamodule: StrokeDataModule = instantiate(cfg.data)
    regression = cfg.data.get("target") is not None
    if regression and is_threshold(cfg.model):
        raise ConfigError("model", "the threshold baseline segments; it cannot regress a map", "pick a network model")
    monitor = cfg.get("monitor") or {"metric": "val/dice"}
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        datamodule.ensure_data()
    output_dir = Path(cfg.paths.output_dir)

    best_score, best_ckpt, loggers, trainer = None, None, [], None
    if not is_threshold(cfg.model) and cfg.get("train", True):
        task = instantiate(cfg.model, loss=instantiate(cfg.loss))
        task.meta = checkpoint_meta(cfg)
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        ckpt_cb = trainer.checkpoint_callback
        best_ckpt = (ckpt_cb.best_model_path or ckpt_cb.last_model_path) if ckpt_cb else None
        score = trainer.callback_metrics.get(monitor["metric"])
        best_score = (
            float(ckpt_cb.best_model_score)
            if ckpt_cb and ckpt_cb.best_model_score is not None
            else (None if score is None else float(score))
        )
        log.info("best checkpoint: %s (%s %s)", best_ckpt, monitor["metric"], best_score)
        if not trainer.is_global_zero:
            return best_score

    if not cfg.get("test", True):
        return best_score
    predictors: dict[str, Any] = {}
    if is_threshold(cfg.model):
        predictors["threshold"] = instantiate(cfg.model)
    else:
        if not best_ckpt:
            raise ConfigError(
                "test", "there is no checkpoint to test (train=false and no training run)", "use predict.py ckpt=... instead"
            )
        predictors[cfg.get("model_name") or cfg.get("task_name", "model")] = NetworkPredictor.from_checkpoint(best_ckpt)
        if cfg.get("baseline") is not None and not regression:
            predictors["threshold"] = instantiate(cfg.baseline)
    _, test_cases = datamodule.split()
    tables = {}
    for name, predictor in predictors.items():
        log.info("testing %s on %d held-out cases (fold %d)", name, len(test_cases), datamodule.fold)
        evaluate = evaluate_maps if regression else evaluate_cases
        tables[name] = evaluate(predictor, test_cases, output_dir / "test" / name)
    shown = REGRESSION_COLUMNS if regression else ("dice", "lesion_f1", "avd_ml", "hd95_mm")
    table = comparison_table(tables, metrics=shown)
    atomic_write_text(output_dir / "test" / "comparison.md", table + "\n")
    for lg in loggers:
        for name, frame in tables.items():
            lg.log_metrics({f"test/{name}/{k}": float(frame[k].mean()) for k in shown})
        lg.finalize("success")
        if type(lg).__name__ == "WandbLogger":  # close the run now so the table below is the last output
            lg.experiment.finish()
    print(
        f"\nHeld-out fold {datamodule.fold} ({len(test_cases)} cases), native geometry:\n{table}\n"
        f"per-case tables: {output_dir / 'test'}/*/metrics.csv"
    )
    if best_ckpt:
        print(f"best checkpoint: {best_ckpt}")
    return best_score

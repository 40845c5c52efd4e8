"""The training run behind ``python train.py``: data -> fit -> test on the held-out fold -> table.

The model (``conf/model/``) declares what it reads and writes; the data module serves exactly that, with
validation cases drawn from the training folds (they choose the best checkpoint and are what sweepers
optimise). After fitting, the test stage predicts the held-out fold -- touched by nothing before -- in its
native geometry with the best checkpoint and with the threshold baseline (``baseline`` in the config, for
models that write a mask), scores both with the same code (``evaluation.evaluate_cases``) and prints one
comparison table that says where the checkpoint was chosen.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from strokelab.errors import CheckpointError, ConfigError
from strokelab.io import atomic_write_text
from strokelab.tasks.threshold import is_threshold

log = logging.getLogger(__name__)


def checkpoint_meta(cfg: DictConfig, model) -> dict[str, Any]:
    """Everything predict.py needs besides the weights, stored inside every checkpoint: the whole resolved model
    config (it rebuilds any model family) and the data settings it was trained with. Plain types only (numpy
    scalars become numbers; anything else is a TypeError here), because checkpoints are read weights-only."""
    from strokelab.data.cache import plain
    from strokelab.inference import CHECKPOINT_FORMAT

    return plain(
        {
            "format": CHECKPOINT_FORMAT,
            "name": cfg.get("model_name") or cfg.get("task_name", "model"),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "inputs": list(model.inputs),
            "targets": list(model.targets),
            "outputs": {k: v.kind for k, v in model.outputs.items()},
            "spatial_dims": model.spatial_dims,
            "preprocess": OmegaConf.to_container(cfg.data.preprocess, resolve=True),
            "weight_map": OmegaConf.to_container(cfg.data.weight_map, resolve=True) if cfg.data.get("weight_map") else None,
            "parameters": model.parameter_count(),
        }
    )


def build_data(cfg: DictConfig, model=None):
    """The data module, serving what ``model`` declares (the threshold baseline: the data set's modalities)."""
    if model is None:
        return instantiate(cfg.data)
    return instantiate(cfg.data, inputs=model.inputs, targets=model.served_targets, spatial_dims=model.spatial_dims)


def job_overrides() -> list[str]:
    """This job's command-line overrides (with a multirun's values for this job); none outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resume_checkpoint(cfg: DictConfig, output_dir: Path, identity: list[str]) -> str | None:
    """The checkpoint this job resumes from: ``ckpt_path`` as given; ``ckpt_path=last``, the newest
    ``checkpoints/last.ckpt`` of the task's runs (``logs/<task_name>/runs/*``); without ``ckpt_path``, the
    interrupted run of this same job in its own folder (a re-run named run or multirun job), else None."""
    from strokelab.checkpointing import interrupted_checkpoint, newest_last_checkpoint

    given = cfg.get("ckpt_path")
    if given == "last":
        if in_multirun():
            raise ConfigError(
                "ckpt_path",
                "=last picks one run's checkpoint for every job of this multirun",
                "re-run the multirun with its run_name instead: its jobs resume themselves",
            )
        path = newest_last_checkpoint(cfg.paths.log_dir, cfg.task_name)
        log.info("resuming from %s (ckpt_path=last)", path)
        return str(path)
    if given:
        return str(given)
    path = interrupted_checkpoint(output_dir, identity)
    if path is not None:
        log.info("%s holds an interrupted run of this job: resuming from %s", output_dir, path)
    return None if path is None else str(path)


def ddp_adjustments(cfg: DictConfig, model=None) -> dict[str, Any]:
    """Trainer settings that ``trainer=ddp`` needs for this run, each said in one log line: a model with a
    discriminator (the chain's GAN rows) makes its own separate backward passes, which leave the other networks'
    parameters unused in one of them (plain DDP stops at the next step): ``ddp_find_unused_parameters_true``;
    synchronised batch norm exists on GPUs only: off for CPU processes."""
    tcfg = cfg.trainer
    if str(tcfg.get("strategy", "")) != "ddp":
        return {}
    changes: dict[str, Any] = {}
    if model is not None and getattr(model, "discriminator", None) is not None:
        changes["strategy"] = "ddp_find_unused_parameters_true"
        log.info("trainer.strategy: ddp_find_unused_parameters_true (the discriminator's backward uses only its own parameters)")
    if tcfg.get("sync_batchnorm") and str(tcfg.get("accelerator", "")) == "cpu":
        changes["sync_batchnorm"] = False
        log.info("trainer.sync_batchnorm: false (torch's SyncBatchNorm runs on GPUs only; each CPU process keeps its own)")
    return changes


def build_trainer(
    cfg: DictConfig, loggers: list, callbacks: list, identity: list[str] | None = None, model=None
) -> L.Trainer:
    """The configured Trainer, whatever ``trainer=`` config: it writes every checkpoint atomically
    (``AtomicCheckpointIO``, unless the config names another CheckpointIO plugin), stores in each what an
    exact resume needs (``ResumeState``: random streams, patch queue, the job's overrides) and logs one line per
    epoch (``strokelab.progress.EpochLog``: losses, validation metrics, time left; the console and
    ``train.log``); the redrawn progress bar is off when standard output is not a terminal."""
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    from strokelab.checkpointing import AtomicCheckpointIO, ResumeState
    from strokelab.progress import EpochLog, progress_bar_wanted

    configured = cfg.trainer.get("plugins")
    plugins = list(instantiate(configured)) if configured else []
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    monitor = cfg.get("monitor") or {"metric": "val/dice", "mode": "max"}
    extra = [ResumeState(identity), EpochLog(monitor.get("metric"), monitor.get("mode", "max"))]
    bar = {} if progress_bar_wanted() or "enable_progress_bar" in cfg.trainer else {"enable_progress_bar": False}
    changes = {**bar, **ddp_adjustments(cfg, model)}
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=[*callbacks, *extra], plugins=plugins, **changes)


def train(cfg: DictConfig) -> float | None:
    """Train (unless model=threshold), then test; returns the best ``monitor.metric`` for sweepers.

    A job whose folder already holds its ``DONE.json`` (a named run or multirun re-run with the same
    overrides) returns the result stored there without training; one whose folder holds its interrupted run
    resumes from that run's ``last.ckpt`` (see ``strokelab.checkpointing``)."""
    from strokelab.checkpointing import finished_job, job_identity, write_done
    from strokelab.dashboards import build_loggers, log_test_results
    from strokelab.evaluation import evaluate_cases
    from strokelab.inference import ModelPredictor, load_checkpoint
    from strokelab.metrics import REGRESSION_COLUMNS, SYNTHESIS_COLUMNS
    from strokelab.report import comparison_table
    from strokelab.tasks.task import Task

    # Lightning prints through its own handler and Hydra's root handler: keep Hydra's (console + train.log).
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    monitor = cfg.get("monitor") or {"metric": "val/dice"}
    identity = job_identity(job_overrides())
    done = finished_job(cfg.paths.output_dir, identity)
    if done is not None:
        log.info(
            "%s: this job finished before (%s %s, best checkpoint %s): skipped (its DONE.json is reused)",
            cfg.paths.output_dir,
            done.get("monitor"),
            done.get("result"),
            done.get("best_checkpoint"),
        )
        return done.get("result")
    cfg.ckpt_path = resume_checkpoint(cfg, Path(cfg.paths.output_dir), identity)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise CheckpointError(cfg.ckpt_path, "checkpoint to resume from does not exist", "fix ckpt_path or drop it")
    if cfg.get("ckpt_path"):
        # Lightning loads it with torch's default, weights-only since torch 2.6 unless the environment says
        # otherwise (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD): probe it here for a one-line refusal, and ask for
        # weights-only loading below.
        load_checkpoint(cfg.ckpt_path)
    threshold_only = is_threshold(cfg.model)
    model = None if threshold_only else instantiate(cfg.model)
    datamodule = build_data(cfg, model)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        datamodule.ensure_data()
    output_dir = Path(cfg.paths.output_dir)

    best_score, best_ckpt, loggers, trainer = None, None, [], None
    if model is not None and cfg.get("train", True):
        images = {"val_images": int(cfg.get("val_images", 8)), "val_images_every": int(cfg.get("val_images_every", 1))}
        task = Task(model, meta=checkpoint_meta(cfg, model), **images)
        loggers = build_loggers(cfg)  # a resumed run continues its wandb run
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        trainer = build_trainer(cfg, loggers, callbacks, identity, model)
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        # Weights-only resuming where this Lightning's fit takes the setting (else torch's default, see above).
        safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), **safe)
        ckpt_cb = trainer.checkpoint_callback
        # The best checkpoint; without one (no validation ran), the newest any checkpoint callback wrote.
        written = (p for cb in trainer.checkpoint_callbacks for p in (cb.best_model_path, cb.last_model_path))
        best_ckpt = next((p for p in written if p), None)
        score = trainer.callback_metrics.get(monitor["metric"])
        best_score = (
            float(ckpt_cb.best_model_score)
            if ckpt_cb and ckpt_cb.best_model_score is not None
            else (None if score is None else float(score))
        )
        log.info("best checkpoint: %s (%s %s on the validation cases)", best_ckpt, monitor["metric"], best_score)
        if not trainer.is_global_zero:
            return best_score

    if not cfg.get("test", True):
        write_done(output_dir, identity, best_score, monitor["metric"], best_ckpt)
        return best_score
    predictors: dict[str, Any] = {}
    if threshold_only:
        predictors["threshold"] = instantiate(cfg.model)
    else:
        if not best_ckpt:
            raise ConfigError(
                "test", "there is no checkpoint to test (train=false and no training run)", "use predict.py ckpt=... instead"
            )
        predictors[cfg.get("model_name") or cfg.get("task_name", "model")] = ModelPredictor.from_checkpoint(best_ckpt)
        if cfg.get("baseline") is not None and model.mask_output is not None:
            predictors["threshold"] = instantiate(cfg.baseline)
    if not datamodule.test_cases:
        _, datamodule.val_cases, datamodule.test_cases = datamodule.split()
    test_cases = datamodule.test_cases
    tables = {}
    for name, predictor in predictors.items():
        log.info("testing %s on %d held-out cases (fold %d)", name, len(test_cases), datamodule.fold)
        tables[name] = evaluate_cases(predictor, test_cases, output_dir / "test" / name)
    segmentation = threshold_only or model.mask_output is not None
    shown = ("dice", "lesion_f1", "avd_ml", "hd95_mm") if segmentation else REGRESSION_COLUMNS
    if not threshold_only and any(s.kind == "image" and s.reference for s in model.outputs.values()):
        shown = (*shown[: 2 if segmentation else 0], *SYNTHESIS_COLUMNS[:4])  # a synthesis chain: its image quality too
    table = comparison_table(tables, metrics=shown)
    chosen = (
        f"checkpoint chosen by {monitor['metric']} on {datamodule.describe_validation()}"
        if best_ckpt
        else "no checkpoint (the threshold baseline does not train)"
    )
    atomic_write_text(output_dir / "test" / "comparison.md", f"{table}\n\n{chosen}\n")
    log_test_results(loggers, tables, output_dir / "test", trainer.global_step if trainer else 0)  # tables, plots
    for lg in loggers:
        for name, frame in tables.items():
            lg.log_metrics({f"test/{name}/{k}": float(frame[k].mean()) for k in shown if k in frame})
        lg.finalize("success")
        if type(lg).__name__ == "WandbLogger":  # close the run now so the table below is the last output
            lg.experiment.finish()
    print(
        f"\nHeld-out fold {datamodule.fold} ({len(test_cases)} cases), native geometry:\n{table}\n{chosen}\n"
        f"per-case tables: {output_dir / 'test'}/*/metrics.csv"
    )
    if best_ckpt:
        print(f"best checkpoint: {best_ckpt}")
    write_done(output_dir, identity, best_score, monitor["metric"], best_ckpt)
    return best_score

"""What the dashboards (wandb, TensorBoard; the CSV log) get besides Lightning's own logging.

During training the task logs every loss term, the validation metrics and the validation images
(``strokelab.tasks.task``) and ``train.py`` the resolved config (``log_hyperparams``). This module adds:

* :func:`build_loggers`: the configured loggers (``conf/logger/``); when the run resumes from a checkpoint
  (``ckpt_path``, or an interrupted run in its own folder), a wandb logger continues the wandb run of that
  checkpoint (its id, stored in every checkpoint by :func:`remember_wandb_run`, with ``resume="allow"``), so
  a resumed run is one run on the dashboard, however often it was interrupted;
* :func:`log_test_results`: after the test stage, each model's per-case metrics table (``test/<model>/cases``:
  a ``wandb.Table``, a markdown table in TensorBoard's text tab; ``test/<model>/metrics.csv`` on disk) and
  every PNG of ``test/<model>/`` (the report plots and the per-case previews) as images
  (``test/<model>/<file name>``).

A dashboard that fails (a full disk, a wandb hiccup) costs a warning, never the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

WANDB_RUN_KEY = "wandb_run_id"  # the checkpoint entry holding the wandb run id
WANDB, TENSORBOARD = "WandbLogger", "TensorBoardLogger"


def _kind(logger: Any) -> str:
    return type(logger).__name__


def remember_wandb_run(checkpoint: dict, loggers: Iterable[Any]) -> None:
    """Store the id of the run's wandb run in a checkpoint being saved (nothing without a wandb logger)."""
    for logger in loggers:
        if _kind(logger) == WANDB and logger.version:
            checkpoint[WANDB_RUN_KEY] = str(logger.version)
            return


def wandb_run_id(ckpt_path: str | Path | None) -> str | None:
    """The wandb run id stored in the checkpoint a run resumes from (None: no checkpoint, or none stored)."""
    if not ckpt_path:
        return None
    from strokelab.inference import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    value = ckpt.get(WANDB_RUN_KEY) if isinstance(ckpt, dict) else None
    return str(value) if value else None


def build_loggers(cfg: Any) -> list:
    """The loggers of ``cfg.logger``; a wandb logger resumes the wandb run of ``cfg.ckpt_path`` (see the module
    docstring) unless its config names an ``id`` itself."""
    from hydra.utils import instantiate

    nodes = [node for node in (cfg.get("logger") or {}).values() if node is not None]
    wandb_nodes = {id(n) for n in nodes if str(n.get("_target_", "")).endswith(f".{WANDB}") and not n.get("id")}
    run_id = wandb_run_id(cfg.get("ckpt_path")) if wandb_nodes else None
    if run_id:
        log.info("wandb: resuming run %s (stored in %s)", run_id, cfg.get("ckpt_path"))
    return [instantiate(n, **({"id": run_id, "resume": "allow"} if run_id and id(n) in wandb_nodes else {})) for n in nodes]


def markdown_table(frame: pd.DataFrame) -> str:
    """A per-case table as markdown (numbers with 4 significant digits), for TensorBoard's text tab."""

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "nan" if value != value else f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _read_png(path: Path) -> np.ndarray:
    """A PNG as an RGB uint8 array (H, W, 3)."""
    from matplotlib.image import imread

    image = imread(path)
    image = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    return (image * 255).round().astype(np.uint8) if image.dtype.kind == "f" else image.astype(np.uint8)


def log_test_results(
    loggers: Iterable[Any], tables: Mapping[str, pd.DataFrame | None], test_dir: str | Path, step: int = 0
) -> None:
    """Each model's per-case table and the PNGs of ``test_dir/<model>/`` to the wandb and TensorBoard loggers
    (the CSV logger has them on disk already: ``metrics.csv`` and the PNGs beside it)."""
    test_dir = Path(test_dir)
    for logger in loggers:
        kind = _kind(logger)
        if kind not in (WANDB, TENSORBOARD):
            continue
        for name, frame in tables.items():
            pngs = sorted((test_dir / name).glob("*.png"))
            try:
                if kind == WANDB:
                    import wandb

                    data: dict[str, Any] = {f"test/{name}/{png.stem}": wandb.Image(str(png)) for png in pngs}
                    if frame is not None:
                        data[f"test/{name}/cases"] = wandb.Table(dataframe=frame, allow_mixed_types=True)
                    logger.experiment.log(data)
                else:
                    writer = logger.experiment
                    if frame is not None:
                        writer.add_text(f"test/{name}/cases", markdown_table(frame), step)
                    for png in pngs:
                        writer.add_image(f"test/{name}/{png.stem}", _read_png(png), step, dataformats="HWC")
                    writer.flush()
            except Exception as exc:  # noqa: BLE001 - a dashboard hiccup must not fail a finished run
                log.warning("could not log the test results of %s to %s: %s", name, kind, exc)

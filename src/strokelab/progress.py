"""One progress line per epoch that a log file keeps.

Lightning's progress bar redraws one terminal line; written to a file (``make train > log``, a SLURM job, a
multirun's job log) it leaves either nothing readable or a wall of control characters. :class:`EpochLog` logs,
through Python logging (Hydra sends it to the console and to the run's ``train.log``), one line at the end of
every training epoch::

    epoch 3/12: train/loss 0.512, val/dice 0.412 (best 0.431), val/loss 0.733; 38 s/epoch, about 5 min left

with the epoch's mean training loss, the validation metrics logged in that epoch (the monitored one with its
best value so far) and an estimate of the time left from the mean epoch time so far. ``train.py`` turns the
redrawn progress bar off when standard output is not a terminal (:func:`progress_bar_wanted`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L

log = logging.getLogger("strokelab.progress")


def progress_bar_wanted() -> bool:
    """Whether a redrawn progress bar makes sense: only when standard output is a terminal."""
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochLog(L.Callback):
    """Log one line per training epoch (see the module docstring). ``monitor``/``mode``: the metric whose best
    value is shown (the checkpoint's, ``monitor.metric`` in the config); ``max_metrics``: at most this many
    validation metrics on a line (the monitored one and ``val/loss`` first)."""

    def __init__(self, monitor: str | None = "val/dice", mode: str = "max", max_metrics: int = 4):
        self.monitor, self.mode, self.max_metrics = monitor, mode, int(max_metrics)
        self.best: float | None = None
        self._start: float | None = None
        self._epoch_start: float | None = None
        self._epochs_timed = 0
        self._time_spent = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._epoch_start is None:
            return
        self._time_spent += time.monotonic() - self._epoch_start
        self._epochs_timed += 1
        log.info(self.line(trainer.current_epoch, trainer.max_epochs, dict(trainer.callback_metrics)))

    def line(self, epoch: int, max_epochs: int | None, metrics: dict[str, Any]) -> str:
        """The line for ``epoch`` (0-based) given the trainer's current metrics (tensors or numbers)."""
        values = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        parts = []
        loss = values.get("train/loss_epoch", values.get("train/loss"))
        if loss is not None:
            parts.append(f"train/loss {loss:.4g}")
        val = [k for k in values if k.startswith("val/")]
        ordered = [k for k in (self.monitor, "val/loss") if k in val] + sorted(
            k for k in val if k not in (self.monitor, "val/loss")
        )
        if self.monitor in values:
            current = values[self.monitor]
            better = self.best is None or (current > self.best if self.mode == "max" else current < self.best)
            self.best = current if better else self.best
        for k in ordered[: self.max_metrics]:
            text = f"{k} {values[k]:.4g}"
            if k == self.monitor and self.best is not None:
                text += f" (best {self.best:.4g})"
            parts.append(text)
        total = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
        head = f"epoch {epoch + 1}{total}: " + (", ".join(parts) if parts else "no metrics yet")
        if not self._epochs_timed:
            return head
        per_epoch = self._time_spent / self._epochs_timed
        tail = f"; {_duration(per_epoch)}/epoch"
        if max_epochs and max_epochs > 0:
            tail += f", about {_duration(per_epoch * max(max_epochs - epoch - 1, 0))} left"
        return head + tail


def _is_number(value: Any) -> bool:
    try:
        return value.numel() == 1 if hasattr(value, "numel") else isinstance(value, (int, float))
    except Exception:  # noqa: BLE001
        return False

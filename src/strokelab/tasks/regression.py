"""Regression task: a network that predicts a perfusion map (Tmax, in s) from the raw 4D series.

The Stanford report (shared/seeds/001) in a LightningModule: input the CTP with time as channels (resampled
to a fixed number of frames by the data module), target the Tmax map in seconds. The network, the loss
(MSE or the asymmetric MSE the report proposes), the optimiser and the scheduler are injected by Hydra.
Validation runs sliding-window inference on whole volumes, sets the prediction to 0 outside the input's
brain mask (where ISLES maps are 0), and logs ``val/mse``, ``val/mae``, ``val/ssim``, ``val/psnr`` inside
the reference brain (the target's non-zero voxels) and ``val/loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchio as tio
from torch import nn
from torchmetrics import MeanMetric

from strokelab.metrics import REGRESSION_COLUMNS, regression_metrics
from strokelab.nn.sliding_window import infer
from strokelab.tasks.base import VolumeTask
from strokelab.tasks.segmentation import DEFAULT_INFERENCE, batch_input


class RegressionTask(VolumeTask):
    progress_metric = "mae"

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        modalities: Sequence[str],
        value_range: Sequence[float],
        scheduler: Callable[..., Any] | None = None,
        inference: dict | None = None,
        loss_in_brain: bool = True,
    ):
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.modalities = list(modalities)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.inference = {**DEFAULT_INFERENCE, **dict(inference or {})}
        self.loss_in_brain = loss_in_brain
        self.meta: dict[str, Any] = {}  # the config needed to rebuild the predictor; stored in checkpoints
        self.metrics = nn.ModuleDict({k: MeanMetric() for k in (*REGRESSION_COLUMNS, "loss")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, list | tuple) else out

    def _weight(self, target: torch.Tensor) -> torch.Tensor | None:
        """Voxels the loss counts: the reference brain (target != 0), or all of them."""
        return (target != 0).float() if self.loss_in_brain else None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch_input(batch, self.modalities), batch["target"][tio.DATA].float()
        loss = self.loss(self(x), y, self._weight(y))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    @torch.no_grad()
    def predict_volume(self, x: torch.Tensor, brain: torch.Tensor | None = None) -> torch.Tensor:
        pred = infer(self, x, self.inference)
        return pred if brain is None else pred * (brain > 0)

    def _evaluate(self, batch: dict) -> None:
        x, y = batch_input(batch, self.modalities), batch["target"][tio.DATA].float()
        brain = batch["brain"][tio.DATA] if "brain" in batch else None
        pred = self.predict_volume(x, brain)
        self.metrics["loss"].update(self.loss(pred, y, self._weight(y)))
        span = self.value_range[1] - self.value_range[0]
        for i in range(x.shape[0]):
            values = regression_metrics(pred[i, 0], y[i, 0], y[i, 0] != 0, span)
            for key, value in values.items():
                if value == value:  # NaN: no brain in this volume
                    self.metrics[key].update(value)

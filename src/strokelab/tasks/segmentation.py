"""Segmentation task: the LightningModule that trains a network to predict the final infarct mask.

The network, the loss, the optimiser (a partial) and the scheduler (a partial) are injected by Hydra;
this module owns the training step, whole-volume validation with sliding-window inference, and the
validation metrics (logged as ``val/dice``, ``val/precision``, ``val/recall``, ``val/avd_ml``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchio as tio
from torch import nn
from torchmetrics import MeanMetric

from strokelab.nn.sliding_window import infer
from strokelab.tasks.base import VolumeTask

DEFAULT_INFERENCE = {"patch_size": (64, 64, 16), "overlap": 0.5, "batch_size": 4, "mirror_axes": ()}


def batch_input(batch: dict, modalities: Sequence[str]) -> torch.Tensor:
    """Stack the modality images of a TorchIO batch into (B, C, X, Y, Z), channels in config order."""
    return torch.cat([batch[m][tio.DATA] for m in modalities], dim=1).float()


def overlap_stats(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dice, precision, recall of boolean volumes (both empty counts as perfect)."""
    tp = (pred & target).sum().float()
    npred, ntrue = pred.sum().float(), target.sum().float()
    one = torch.ones((), device=pred.device)
    return {
        "dice": torch.where(npred + ntrue > 0, 2 * tp / (npred + ntrue).clamp(min=1), one),
        "precision": torch.where(npred > 0, tp / npred.clamp(min=1), torch.where(ntrue > 0, 0 * one, one)),
        "recall": torch.where(ntrue > 0, tp / ntrue.clamp(min=1), one),
    }


class SegmentationTask(VolumeTask):
    progress_metric = "dice"

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        modalities: Sequence[str],
        scheduler: Callable[..., Any] | None = None,
        inference: dict | None = None,
        threshold: float = 0.5,
    ):
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.modalities = list(modalities)
        self.inference = {**DEFAULT_INFERENCE, **dict(inference or {})}
        self.threshold = threshold
        self.meta: dict[str, Any] = {}  # the config needed to rebuild the predictor; stored in checkpoints
        self.metrics = nn.ModuleDict({k: MeanMetric() for k in ("dice", "precision", "recall", "avd_ml", "loss")})

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.net(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch_input(batch, self.modalities), batch["label"][tio.DATA].float()
        loss = self.loss(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        return infer(self.net, x, self.inference)

    def _evaluate(self, batch: dict) -> None:
        x, y = batch_input(batch, self.modalities), batch["label"][tio.DATA].float()
        logits = self.predict_logits(x)
        self.metrics["loss"].update(self.loss(logits, y))
        pred, target = torch.sigmoid(logits) >= self.threshold, y > 0.5
        for key, value in overlap_stats(pred, target).items():
            self.metrics[key].update(value)
        voxel_ml = float(torch.as_tensor(batch[self.modalities[0]][tio.AFFINE])[0, :3, :3].double().det().abs()) / 1000.0
        self.metrics["avd_ml"].update((pred.sum() - target.sum()).abs().float() * voxel_ml)

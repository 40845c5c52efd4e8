"""The one LightningModule that trains any model (``strokelab.models``).

It reads the model's named inputs and targets from TorchIO batches, sums and logs its named loss terms
(``train/<term>`` and ``train/loss``), validates on whole volumes with the model's sliding-window inference,
logs the metrics of every declared output (``val/dice`` ... for the mask, ``val/mae`` ... for a map, plus
``val/loss``), builds the optimiser and scheduler the model config names, and stores the whole model config in
every checkpoint (``meta``, set by ``train.py``), so that ``predict.py`` can rebuild the model from it alone.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torchio as tio
from torch import Tensor, nn
from torchmetrics import MeanMetric

from strokelab.errors import ConfigError
from strokelab.metrics import REGRESSION_COLUMNS, regression_metrics
from strokelab.models.base import Model

MASK_METRICS = ("dice", "precision", "recall", "avd_ml")


def overlap_stats(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Dice, precision, recall of boolean volumes (both empty counts as perfect)."""
    tp = (pred & target).sum().float()
    npred, ntrue = pred.sum().float(), target.sum().float()
    one = torch.ones((), device=pred.device)
    return {
        "dice": torch.where(npred + ntrue > 0, 2 * tp / (npred + ntrue).clamp(min=1), one),
        "precision": torch.where(npred > 0, tp / npred.clamp(min=1), torch.where(ntrue > 0, 0 * one, one)),
        "recall": torch.where(ntrue > 0, tp / ntrue.clamp(min=1), one),
    }


def batch_images(batch: dict, names: list[str], spatial_dims: int) -> dict[str, Tensor]:
    """Named tensors of a TorchIO batch; in 2D slice mode the axial slices' singleton Z axis is dropped."""
    out = {}
    for name in names:
        if name not in batch:
            raise ConfigError("data", f"the batch has no '{name}'", "the data side must serve every input and target")
        t = batch[name][tio.DATA]
        if spatial_dims == 2 and t.dim() == 5 and t.shape[-1] == 1:
            t = t[..., 0]
        out[name] = t
    return out


class Task(L.LightningModule):
    def __init__(self, model: Model, meta: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.meta: dict[str, Any] = dict(meta or {})  # the model config and data settings: stored in checkpoints
        names = ["loss"]
        self.metric_names: dict[str, dict[str, str]] = {}  # output -> metric -> logged name
        maps = [n for n, s in model.outputs.items() if s.kind != "mask" and s.reference is not None]
        for name, spec in model.outputs.items():
            if spec.kind != "mask" and spec.reference is None:
                continue  # nothing to score it against
            keys = MASK_METRICS if spec.kind == "mask" else REGRESSION_COLUMNS
            prefix = "" if spec.kind == "mask" or len(maps) == 1 else f"{name}_"
            self.metric_names[name] = {k: prefix + k for k in keys}
            names += list(self.metric_names[name].values())
        self.metrics = nn.ModuleDict({k: MeanMetric() for k in names})
        mask = model.mask_output
        self.progress_metric = "dice" if mask else next(iter(self.metric_names[maps[0]].values()), "loss") if maps else "loss"

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        model = self.model
        images = batch_images(batch, model.inputs + model.served_targets, model.spatial_dims)
        outputs = model({m: images[m] for m in model.inputs})
        terms = model.losses(outputs, images)
        size = images[model.inputs[0]].shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=name == "loss", on_epoch=True, prog_bar=name == "loss", batch_size=size)
        return terms["loss"]

    # -- validation ------------------------------------------------------------------------------
    def _evaluate(self, batch: dict) -> None:
        model = self.model
        names = model.inputs + model.served_targets + (["brain"] if "brain" in batch else [])
        images = batch_images(batch, list(dict.fromkeys(names)), 3)  # whole volumes: always (B, C, X, Y, Z)
        preds = model.predict_volume(images)
        self.metrics["loss"].update(model.losses(preds, images)["loss"])
        affine = torch.as_tensor(batch[model.inputs[0]][tio.AFFINE])[0, :3, :3].double()
        voxel_ml = float(affine.det().abs()) / 1000.0
        for name, logged in self.metric_names.items():
            spec = model.outputs[name]
            if spec.kind == "mask":
                pred, target = torch.sigmoid(preds[name]) >= model.threshold, images["label"] > 0.5
                for key, value in overlap_stats(pred, target).items():
                    self.metrics[logged[key]].update(value)
                self.metrics[logged["avd_ml"]].update((pred.sum() - target.sum()).abs().float() * voxel_ml)
                continue
            reference = images[spec.reference].float()
            value_range = spec.value_range
            for i in range(reference.shape[0]):
                span = (value_range[1] - value_range[0]) if value_range else float(reference[i].max() - reference[i].min())
                region = reference[i, 0] != 0 if spec.kind == "map" else images.get("brain", reference)[i, 0] != 0
                values = regression_metrics(preds[name][i, 0], reference[i, 0], region, max(span, 1e-6))
                for key, value in values.items():
                    if value == value:  # NaN: no brain in this volume
                        self.metrics[logged[key]].update(value)

    def _log_epoch(self, prefix: str) -> None:
        for key, metric in self.metrics.items():
            if metric.update_count == 0:
                continue
            self.log(f"{prefix}/{key}", metric.compute(), prog_bar=key == self.progress_metric, sync_dist=True)
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    # -- optimisation and checkpoints --------------------------------------------------------------
    def configure_optimizers(self):
        if self.model.optimizer_factory is None:
            raise ConfigError("model.optimizer", "is not set", "give a partial optimiser, e.g. torch.optim.AdamW")
        optimizer = self.model.optimizer_factory(params=self.model.parameters())
        if self.model.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.model.scheduler_factory(optimizer=optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["strokelab"] = self.meta

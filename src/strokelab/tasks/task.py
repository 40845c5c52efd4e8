"""The one LightningModule that trains any model (``strokelab.models``).

It reads the model's named inputs and targets from TorchIO batches, sums and logs its named loss terms
(``train/<term>`` and ``train/loss``), validates on whole volumes with the model's sliding-window inference,
logs the metrics of every declared output (``val/dice`` ... for the mask, ``val/mae`` ... for a map,
``val/ssim``, ``val/psnr``, ``val/ssim_local`` ... for an image such as a pseudo-DWI, plus ``val/loss``),
draws one slice per validation case (``strokelab.previews``: a PNG under ``<run>/val_images/`` and an image
``val/images/<case>`` in wandb/TensorBoard; ``val_images`` cases, at the validation that ends every
``val_images_every``-th epoch, see :meth:`Task.images_due`), builds the optimiser and scheduler the model
config names, and stores the whole model config in every checkpoint (``meta``, set by ``train.py``), so that
``predict.py`` can rebuild the model from it alone, and the id of the wandb run (a resumed run continues it,
``strokelab.dashboards``).

A model trained in stages switches before every epoch (``Model.set_epoch``). A model with an adversary (a
``discriminator`` module, Table 1's GAN rows) is optimised manually: one step of the model's optimiser on its
loss, then one step of a second optimiser (``model.discriminator_optimizer_factory``, else the model's settings)
on ``model.discriminator_loss``, logged as
``train/discriminator``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torchio as tio
from torch import Tensor, nn
from torchmetrics import MeanMetric

from strokelab.errors import ConfigError
from strokelab.metrics import REGRESSION_COLUMNS, SYNTHESIS_COLUMNS, regression_metrics, synthesis_metrics
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


def brain_region(images: dict[str, Tensor], reference: Tensor) -> Tensor:
    """Where a synthesised image is scored globally: the skull-strip mask when served, else the union of the
    perfusion maps' non-zero voxels among the inputs (ISLES maps are 0 outside the brain), else the
    reference's non-zero voxels. The same rule as ``strokelab.evaluation`` at test time."""
    from strokelab.perfusion.derive import ISLES_MAPS

    if "brain" in images:
        return images["brain"] > 0
    maps = [images[m] != 0 for m in ISLES_MAPS if m in images]
    if maps:
        return torch.stack(maps).any(dim=0)
    return reference != 0


class Task(L.LightningModule):
    def __init__(self, model: Model, meta: dict[str, Any] | None = None, val_images: int = 8, val_images_every: int = 1):
        super().__init__()
        self.model = model
        self.meta: dict[str, Any] = dict(meta or {})  # the model config and data settings: stored in checkpoints
        self.val_images = int(val_images)  # validation cases drawn per validation (one slice each)
        if isinstance(val_images_every, bool) or int(val_images_every) != val_images_every or val_images_every < 1:
            raise ConfigError(
                "val_images_every", f"is {val_images_every!r}", "give a whole number of epochs >= 1 (val_images=0 draws none)"
            )
        self.val_images_every = int(val_images_every)  # draw them at the validation ending every N-th epoch
        self._drawn = 0
        self.adversarial = getattr(model, "discriminator", None) is not None
        if self.adversarial:
            self.automatic_optimization = False
        names = ["loss"]
        self.metric_names: dict[str, dict[str, str]] = {}  # output -> metric -> logged name
        maps = [n for n, s in model.outputs.items() if s.kind != "mask" and s.reference is not None]
        for name, spec in model.outputs.items():
            if spec.kind != "mask" and spec.reference is None:
                continue  # nothing to score it against
            keys = MASK_METRICS if spec.kind == "mask" else SYNTHESIS_COLUMNS if spec.kind == "image" else REGRESSION_COLUMNS
            prefix = "" if spec.kind == "mask" or len(maps) == 1 else f"{name}_"
            self.metric_names[name] = {k: prefix + k for k in keys}
            names += list(self.metric_names[name].values())
        self.metrics = nn.ModuleDict({k: MeanMetric() for k in names})
        mask = model.mask_output
        self.progress_metric = "dice" if mask else next(iter(self.metric_names[maps[0]].values()), "loss") if maps else "loss"

    # -- training --------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.model.set_epoch(self.current_epoch, int(self.trainer.max_epochs or 1))
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        model = self.model
        images = batch_images(batch, model.inputs + model.served_targets, model.spatial_dims)
        outputs = model({m: images[m] for m in model.inputs})
        terms = model.losses(outputs, images)
        size = images[model.inputs[0]].shape[0]
        if self.adversarial:
            self._adversarial_step(outputs, images, terms["loss"], size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=name == "loss", on_epoch=True, prog_bar=name == "loss", batch_size=size)
        return terms["loss"]

    def _adversarial_step(self, outputs: dict, images: dict, loss: Tensor, size: int) -> None:
        """Manual optimisation: the model's step on its loss, then the discriminator's on its own loss."""
        opt_model, opt_disc = self.optimizers()
        opt_model.zero_grad()
        self.manual_backward(loss)
        opt_model.step()
        if self.model.discriminator_active:
            disc_loss = self.model.discriminator_loss(outputs, images)
            opt_disc.zero_grad()
            self.manual_backward(disc_loss)
            opt_disc.step()
            self.log("train/discriminator", disc_loss, on_step=False, on_epoch=True, batch_size=size)

    def on_train_epoch_end(self) -> None:
        if self.adversarial:  # manual optimisation: the epoch-wise schedulers are stepped here
            schedulers = self.lr_schedulers()
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
                scheduler.step()

    # -- validation ------------------------------------------------------------------------------
    def _evaluate(self, batch: dict) -> None:
        model = self.model
        names = model.inputs + model.served_targets + (["brain"] if "brain" in batch else [])
        images = batch_images(batch, list(dict.fromkeys(names)), 3)  # whole volumes: always (B, C, X, Y, Z)
        preds = model.predict_volume(images)
        terms = model.losses(preds, images, partial=True)
        if "loss" in terms:
            self.metrics["loss"].update(terms["loss"])
        affine = torch.as_tensor(batch[model.inputs[0]][tio.AFFINE])[0, :3, :3].double()
        voxel_ml = float(affine.det().abs()) / 1000.0
        spacing = tuple(float(v) for v in affine.norm(dim=0))
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
            if spec.kind == "image":  # a synthesised image: SSIM/PSNR in the brain and around the lesion
                brain = brain_region(images, reference)
                lesion = images["label"] > 0.5 if "label" in images else torch.zeros_like(brain)
                span = (value_range[1] - value_range[0]) if value_range else 1.0
                for i in range(reference.shape[0]):
                    values = synthesis_metrics(preds[name][i, 0], reference[i, 0], brain[i, 0], lesion[i, 0], spacing, span)
                    for key, value in values.items():
                        if value == value:
                            self.metrics[logged[key]].update(value)
                continue
            for i in range(reference.shape[0]):
                span = (value_range[1] - value_range[0]) if value_range else float(reference[i].max() - reference[i].min())
                region = reference[i, 0] != 0 if spec.kind == "map" else images.get("brain", reference)[i, 0] != 0
                values = regression_metrics(preds[name][i, 0], reference[i, 0], region, max(span, 1e-6))
                for key, value in values.items():
                    if value == value:  # NaN: no brain in this volume
                        self.metrics[logged[key]].update(value)
        self._draw(batch, images, preds)

    def _log_epoch(self, prefix: str) -> None:
        for key, metric in self.metrics.items():
            if metric.update_count == 0:
                continue
            self.log(f"{prefix}/{key}", metric.compute(), prog_bar=key == self.progress_metric, sync_dist=True)
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_start(self) -> None:
        self._drawn = 0

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def _draw(self, batch: dict, images: dict[str, Tensor], preds: dict[str, Tensor]) -> None:
        """One slice per validation case (up to ``val_images``): a PNG in the run folder and the loggers' images."""
        from pathlib import Path

        from strokelab.previews import lesion_slice, render_row, save_png

        if self.val_images <= 0 or self.trainer is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if not self.images_due():
            return
        model = self.model
        cases = batch.get("case") or [f"case{self._drawn + i}" for i in range(images[model.inputs[0]].shape[0])]
        folder = Path(self.trainer.default_root_dir or ".") / "val_images" / f"epoch_{self.current_epoch:03d}"
        for i, case in enumerate(cases):
            if self._drawn >= self.val_images:
                return
            self._drawn += 1
            label = images["label"][i, 0].cpu().numpy() > 0.5 if "label" in images else None
            z = lesion_slice(label, images[model.inputs[0]].shape[-1])
            panels, ranges, overlay, mask = {}, {}, None, None
            for m in model.inputs:
                panels[m] = images[m][i, 0, ..., z].float().cpu().numpy()
            for name, spec in model.outputs.items():
                values = preds[name][i, 0, ..., z].float()
                if spec.kind == "mask":
                    mask = (torch.sigmoid(values) >= model.threshold).cpu().numpy()
                    continue
                panels[name] = values.cpu().numpy()
                if spec.value_range is not None:
                    ranges[name] = spec.value_range
                if spec.reference is not None and spec.reference in images:
                    panels[spec.reference] = images[spec.reference][i, 0, ..., z].float().cpu().numpy()
                    ranges[spec.reference] = spec.value_range or ranges.get(name)
                    overlay = panels[spec.reference]
            if mask is None and label is None:
                overlay = None
            elif overlay is None:
                overlay = panels[model.inputs[0]]
            rgb = render_row(
                panels,
                ranges,
                overlay,
                mask,
                None if label is None else label[..., z],
                f"{case}, slice {z}, epoch {self.current_epoch}",
            )
            save_png(rgb, folder / f"{case}.png")
            self._log_image(f"val/images/{case}", rgb)

    def images_due(self) -> bool:
        """Whether this validation draws images: at the validation that ends every ``val_images_every``-th epoch
        (epochs counted from 1: N, 2N, ...; when validation runs less often, at the first validation after such
        an epoch) and at the last epoch. Derived from the epoch alone, so a resumed run draws where the
        uninterrupted one does."""
        n, epoch = self.val_images_every, self.current_epoch + 1
        if n <= 1:
            return True
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs:
            return True
        every = int(trainer.check_val_every_n_epoch or 1)  # epochs between validations (None: within epochs)
        return epoch // n > max(epoch - every, 0) // n

    def _log_image(self, key: str, rgb) -> None:
        for logger in self.loggers:
            kind = type(logger).__name__
            try:
                if kind == "WandbLogger":
                    logger.log_image(key=key, images=[rgb], step=self.global_step)
                elif kind == "TensorBoardLogger":
                    logger.experiment.add_image(key, rgb, self.global_step, dataformats="HWC")
            except Exception as exc:  # noqa: BLE001 - a dashboard hiccup must not stop training
                import logging

                logging.getLogger(__name__).warning("could not log %s to %s: %s", key, kind, exc)

    # -- optimisation and checkpoints --------------------------------------------------------------
    def configure_optimizers(self):
        if self.model.optimizer_factory is None:
            raise ConfigError("model.optimizer", "is not set", "give a partial optimiser, e.g. torch.optim.AdamW")
        optimizer = self.model.optimizer_factory(params=self.model.generator_parameters())
        if self.adversarial:
            factory = getattr(self.model, "discriminator_optimizer_factory", None) or self.model.optimizer_factory
            disc = factory(params=self.model.discriminator.parameters())
            if self.model.scheduler_factory is None:
                return [optimizer, disc]
            return [optimizer, disc], [self.model.scheduler_factory(optimizer=o) for o in (optimizer, disc)]
        if self.model.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.model.scheduler_factory(optimizer=optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from strokelab.dashboards import remember_wandb_run

        checkpoint["strokelab"] = self.meta
        remember_wandb_run(checkpoint, self.loggers)

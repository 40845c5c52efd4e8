"""What every strokelab LightningModule shares: whole-volume validation and testing through ``_evaluate``,
epoch-end logging of its ``metrics`` as ``val/<name>`` and ``test/<name>``, Hydra-partial optimiser and
scheduler, and the predictor config stored in every checkpoint (``meta``)."""

from __future__ import annotations

import lightning as L


class VolumeTask(L.LightningModule):
    """Subclasses set ``self.metrics`` (a ModuleDict of MeanMetric), ``self.optimizer_factory``,
    ``self.scheduler_factory``, ``self.meta`` and implement ``_evaluate(batch)``."""

    progress_metric = ""  # the metric shown in the progress bar

    def _log_epoch(self, prefix: str) -> None:
        for key, metric in self.metrics.items():
            self.log(f"{prefix}/{key}", metric.compute(), prog_bar=key == self.progress_metric, sync_dist=True)
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["strokelab"] = self.meta

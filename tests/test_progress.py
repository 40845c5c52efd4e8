"""One progress line per epoch (strokelab.progress.EpochLog), as a log file keeps it."""

from __future__ import annotations

import logging

import lightning as L
import torch

from strokelab.progress import EpochLog, progress_bar_wanted


def test_line_has_loss_metrics_best_and_time_left():
    cb = EpochLog("val/dice", "max")
    first = cb.line(0, 12, {"train/loss_epoch": torch.tensor(0.5123), "val/dice": torch.tensor(0.41), "val/loss": 0.7})
    assert first == "epoch 1/12: train/loss 0.5123, val/dice 0.41 (best 0.41), val/loss 0.7"  # no timing yet
    cb._epochs_timed, cb._time_spent = 2, 76.0
    second = cb.line(2, 12, {"train/loss_epoch": 0.4, "val/dice": 0.38, "val/recall": 0.9, "lr": "x"})
    assert second == "epoch 3/12: train/loss 0.4, val/dice 0.38 (best 0.41), val/recall 0.9; 38 s/epoch, about 6 min left"
    low = EpochLog("val/mae", "min")
    low.line(0, 2, {"val/mae": 3.0})
    assert "(best 2)" in low.line(1, 2, {"val/mae": 2.0}) and "(best 2)" in low.line(1, 2, {"val/mae": 2.5})


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = ((self.w * batch) ** 2).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/dice", 1 - self.w.detach().abs().clamp(max=1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_one_logged_line_per_epoch_in_a_fit(tmp_path, caplog):
    data = torch.utils.data.DataLoader([torch.ones(2) for _ in range(3)], batch_size=None)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochLog()],
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.INFO, logger="strokelab.progress"):
        trainer.fit(_Tiny(), train_dataloaders=data, val_dataloaders=data)
    lines = [r.getMessage() for r in caplog.records if r.name == "strokelab.progress"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("train/loss" in line and "val/dice" in line and "/epoch" in line for line in lines)
    assert "about 0 s left" in lines[-1]


def test_no_redrawn_progress_bar_when_stdout_is_not_a_terminal(capsys):
    assert progress_bar_wanted() is False  # pytest captures stdout: not a terminal

"""Checkpoints are read weights-only: one that would run code when opened is refused in one line, and nothing
in it runs (predict.py, ModelPredictor, resuming with train.py); the checkpoints train.py writes (Lightning's
optimizer, scheduler, callback and loop states, a LambdaLR with a picklable lr factor, strokelab's metadata)
load that way."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import write_case
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from test_cli import CONF, TINY, one_error_line, run

from strokelab.data.cache import plain
from strokelab.entry import register_resolvers
from strokelab.errors import CheckpointError
from strokelab.inference import CHECKPOINT_FORMAT, ModelPredictor, load_checkpoint, read_checkpoint
from strokelab.train import checkpoint_meta


class Payload:
    """Creates ``marker`` when unpickled, as a hostile checkpoint would run any command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, Path]:
    """A checkpoint shaped like ours with a payload in it, and the file its payload creates. The payload is
    shown to work (an unsafe load runs it), so that its marker's absence later means it did not run."""
    marker = tmp_path / "payload-ran"
    ckpt = {
        "state_dict": {"model.w": torch.zeros(1)},
        "strokelab": {"format": CHECKPOINT_FORMAT, "model": {}, "note": Payload(marker)},
    }
    path = tmp_path / "shared.ckpt"
    torch.save(ckpt, path)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(hostile):
    path, marker = hostile
    with pytest.raises(CheckpointError) as err:
        ModelPredictor.from_checkpoint(path, device="cpu")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: would run code when loaded")
    assert "(weights-only loading refused it: posix.system is not allowed)" in line and "only open checkpoints you trust" in line
    with pytest.raises(CheckpointError, match="would run code"):
        read_checkpoint(path)
    assert not marker.exists()


def test_unreadable_checkpoints_are_not_called_hostile(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    for path in (garbage, truncated):
        with pytest.raises(CheckpointError, match="unreadable checkpoint") as err:
            load_checkpoint(path)
        assert "would run code" not in str(err.value)


def test_predict_refuses_a_checkpoint_that_would_run_code(hostile, tmp_path, monkeypatch):
    path, marker = hostile
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's default load would run the payload
    write_case(tmp_path / "isles", "sub-stroke0001")
    out = run("predict.py", f"input={tmp_path / 'isles'}", f"output={tmp_path / 'pred'}", f"ckpt={path}")
    one_error_line(out, str(path), "would run code when loaded", "posix.system is not allowed", "only open checkpoints you trust")
    assert not marker.exists() and not (tmp_path / "pred").exists()


def test_training_does_not_resume_from_a_checkpoint_that_would_run_code(hostile, tmp_path, monkeypatch):
    """Lightning loads a resume checkpoint with torch's default, which this setting turns unsafe."""
    path, marker = hostile
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    root = tmp_path / "isles"
    for i in range(10):
        write_case(root, f"sub-stroke{i + 1:04d}", nihss=i, seed=i)
    out = run(
        "train.py",
        *TINY,
        f"data.root={root}",
        f"paths.root_dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"ckpt_path={path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    one_error_line(out, str(path), "would run code when loaded", "only open checkpoints you trust")
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()  # refused before anything else happened


def test_checkpoint_meta_is_plain_data():
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model.net.channels=[4,8,16,32]", "task_name=unet"])
    model = instantiate(cfg.model)
    meta = checkpoint_meta(cfg, model)
    assert meta == plain(meta) and meta["parameters"] == model.parameter_count()
    assert plain({"n": np.int64(3), "x": np.float32(0.5), "a": np.eye(2)})["n"] == 3
    with pytest.raises(TypeError, match=r"entry\['p'\]: a PosixPath is not a plain type"):
        plain({"p": Path("x")})


def test_our_checkpoints_load_weights_only_and_resume(tmp_path):
    """A Lightning checkpoint as train.py writes it, with Wang et al.'s staged schedule (a LambdaLR whose lr factor
    is an object): weights-only loading reads it, the model rebuilds from it, and training resumes from it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from strokelab.tasks.task import Task

    register_resolvers()
    overrides = [
        "model.net.channels=[4,8,16,32]",
        "data.patch_size=[16,16,8]",
        "trainer.max_epochs=2",
        "model.scheduler._target_=strokelab.models.chain.staged_decay",
        "~model.scheduler.total_iters",
        "~model.scheduler.power",
        "+model.scheduler.stages=null",
        "+model.scheduler.max_epochs=2",
        "task_name=unet",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    batches = [
        {
            **{m: {"data": torch.randn(2, 1, 16, 16, 8)} for m in cfg.data.modalities},
            "label": {"data": (torch.rand(2, 1, 16, 16, 8) > 0.8).to(torch.uint8)},
        }
        for _ in range(2)
    ]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)

    def fit(max_epochs: int, ckpt_path: Path | None = None) -> Task:
        model = instantiate(cfg.model)
        task = Task(model, meta=checkpoint_meta(cfg, model), val_images=0)
        trainer = L.Trainer(
            max_epochs=max_epochs,
            accelerator="cpu",
            logger=False,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=tmp_path,
        )
        trainer.fit(task, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
        return task

    trained = fit(2)
    last = tmp_path / "ckpt" / "last.ckpt"
    ckpt = load_checkpoint(last)
    assert ckpt["lr_schedulers"][0]["lr_lambdas"] == [{"bounds": [0, 2], "fraction": 0.6, "gamma": 0.2}]
    assert ckpt["optimizer_states"] and ckpt["callbacks"] and ckpt["loops"] and ckpt["epoch"] == 1
    meta, state = read_checkpoint(last)
    assert meta["model"]["scheduler"]["_target_"] == "strokelab.models.chain.staged_decay"
    predictor = ModelPredictor.from_checkpoint(last, device="cpu")
    for name, value in trained.model.state_dict().items():
        assert torch.equal(predictor.model.state_dict()[name], value), name
    resumed = fit(3, ckpt_path=last)
    assert resumed.trainer.current_epoch == 3 and resumed.trainer.global_step == 6  # epochs 0-1 from the checkpoint

"""Interrupted work: checkpoints survive a kill during their write, a run killed with SIGKILL resumes to the
uninterrupted run's result bit for bit, and a re-run multirun skips its finished jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_case
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_cli import CONF, REPO, TINY, one_error_line, run

from strokelab.checkpointing import (
    AtomicCheckpointIO,
    ResumeState,
    finished_job,
    interrupted_checkpoint,
    newest_last_checkpoint,
    temp_pattern,
    write_done,
)
from strokelab.entry import register_resolvers
from strokelab.errors import CheckpointError, ConfigError

TESTS = Path(__file__).resolve().parent
# train.py subprocesses that instantiate PauseOnce (below) import it from this file.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)}


class PauseOnce(Callback):
    """Stops a training process mid-epoch (epoch ``epoch``, before its second batch) until it is killed, and
    says so by writing its pid to ``marker``; a process that finds the marker trains straight through."""

    def __init__(self, epoch: int, marker: str):
        self.epoch, self.marker = int(epoch), Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            while True:
                time.sleep(0.1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "isles"
    for i in range(10):
        write_case(root, f"sub-stroke{i + 1:04d}", nihss=i, seed=i)
    return root


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- 1. atomic checkpoints -----------------------------------------------------------------------------


def test_a_save_that_fails_halfway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"w": torch.zeros(1000), "epoch": 1}, path)
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        import io as _io

        buffer = _io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"w": torch.ones(1000), "epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    previous = load(path)
    assert previous["epoch"] == 1 and torch.equal(previous["w"], torch.zeros(1000))
    assert list(path.parent.iterdir()) == [path]  # the half-written temporary file is gone too


KILLED_SAVE = """
import os, signal, sys, torch
from strokelab.checkpointing import AtomicCheckpointIO
real_save = torch.save
def half_then_sigkill(obj, f, *args, **kwargs):
    import io
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: buffer.tell() // 2]); f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = half_then_sigkill
AtomicCheckpointIO().save_checkpoint({"w": torch.ones(100000), "epoch": 2}, sys.argv[1])
"""


def test_a_save_killed_midway_keeps_the_previous_checkpoint_and_the_next_save_cleans_up(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"w": torch.zeros(100000), "epoch": 1}, path)
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    leftovers = list(path.parent.glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size  # the kill hit the write itself
    previous = load(path)
    assert previous["epoch"] == 1 and torch.equal(previous["w"], torch.zeros(100000))
    io.save_checkpoint({"w": torch.full((100000,), 3.0), "epoch": 3}, path)
    assert load(path)["epoch"] == 3
    assert sorted(path.parent.iterdir()) == [path]  # the killed save's temporary file was removed
    assert temp_pattern(path).endswith(".last.ckpt.*.tmp")


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_every_trainer_config_saves_atomically_and_records_the_resume_state(trainer, tmp_path):
    from strokelab.train import build_trainer

    register_resolvers()
    overrides = [f"trainer={trainer}", f"paths.output_dir={tmp_path}"]
    if trainer != "cpu":  # the test machine has no GPU: keep everything else of the config
        overrides += ["trainer.accelerator=cpu", "trainer.devices=2" if trainer == "ddp" else "trainer.devices=1"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    built = build_trainer(cfg, [], [], ["data.fold=0"])
    assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)
    assert [cb.job for cb in built.callbacks if isinstance(cb, ResumeState)] == [["data.fold=0"]]
    if trainer == "ddp":
        assert type(built.strategy).__name__ == "DDPStrategy"


# -- 2. resume ----------------------------------------------------------------------------------------


class Scored(L.LightningModule):
    """A model whose per-epoch score is given: the test decides which epoch is the best."""

    def __init__(self, scores: list[float]):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scores = scores

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def on_train_epoch_end(self) -> None:
        self.log("score", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=2)


def fit_scored(folder: Path, epochs: int, ckpt_path: Path | None = None) -> ModelCheckpoint:
    """The two checkpoint callbacks of conf/callbacks/default.yaml (best.ckpt by score, last.ckpt every epoch)."""
    ckpt = ModelCheckpoint(dirpath=folder / "checkpoints", filename="best", monitor="score", mode="max")
    last = ModelCheckpoint(dirpath=folder / "checkpoints", filename="last", save_on_train_epoch_end=True)
    trainer = L.Trainer(
        default_root_dir=folder,
        max_epochs=epochs,
        callbacks=[ckpt, last, ResumeState(["x=1"])],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Scored([0.9, 0.1, 0.2, 0.3]), ckpt_path=ckpt_path)
    return ckpt


def test_resuming_into_a_new_folder_keeps_the_best_checkpoint_of_the_earlier_epochs(tmp_path):
    """The best epoch (0) lies before the resume point: the new folder gets its best.ckpt and keeps comparing
    with its score, where Lightning alone would make the first resumed epoch the best."""
    first = fit_scored(tmp_path / "a", epochs=2)
    assert first.best_model_score == pytest.approx(0.9)
    resumed = fit_scored(tmp_path / "b", epochs=4, ckpt_path=tmp_path / "a" / "checkpoints" / "last.ckpt")
    best = tmp_path / "b" / "checkpoints" / "best.ckpt"
    assert Path(resumed.best_model_path) == best and resumed.best_model_score == pytest.approx(0.9)
    assert load(best)["epoch"] == 0 and load(tmp_path / "b" / "checkpoints" / "last.ckpt")["epoch"] == 3
    assert load(tmp_path / "a" / "checkpoints" / "best.ckpt")["epoch"] == 0  # the old folder is left as it was


def wait_for(marker: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until the process paused (its marker is written); fail at once if it ends instead."""
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the training process never reached its pause"
        time.sleep(0.2)


def final_state(run_dir: Path) -> dict:
    done = json.loads((run_dir / "DONE.json").read_text())
    return {"result": done["result"], **{n: load(run_dir / "checkpoints" / n) for n in ("last.ckpt", "best.ckpt")}}


def assert_same_training(want: dict, got: dict) -> None:
    """Bit for bit: the stored result, and the weights and optimiser moments of last.ckpt and best.ckpt."""
    assert got["result"] == want["result"]  # the best val/dice, as sweepers receive it
    for name in ("last.ckpt", "best.ckpt"):
        assert got[name]["epoch"] == want[name]["epoch"], name
        a, b = want[name]["state_dict"], got[name]["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        a, b = want[name]["optimizer_states"][0]["state"], got[name]["optimizer_states"][0]["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[k][m], b[k][m]) for k in a for m in ("exp_avg", "exp_avg_sq"))


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result_bit_for_bit(data_root, tmp_path):
    """kill -9 in the middle of epoch 2 (the last checkpoint is epoch 1's), then resume it both ways a user
    would: ``ckpt_path=last`` into a new run folder, and the same command again (a named run resumes in
    place). Both end exactly where a run that was never interrupted ends: the same weights, optimiser moments
    and best validation score, bit for bit, and the same best.ckpt (validation every 2 epochs, as by default)."""
    common = [
        *TINY,
        "trainer.max_epochs=4",
        "trainer.check_val_every_n_epoch=2",
        "test=false",
        f"data.root={data_root}",
        f"paths.root_dir={tmp_path}",
    ]
    runs = tmp_path / "logs" / "unet" / "runs"
    straight = run("train.py", *common, "run_name=straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    want = final_state(runs / "straight")

    marker = tmp_path / "paused"
    killed = [*common, "run_name=killed", f"+callbacks.pause={{_target_:test_resume.PauseOnce,epoch:2,marker:'{marker}'}}"]
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *killed], cwd=REPO, env=ENV, stdout=out, stderr=out)
        try:
            wait_for(marker, proc, log)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = runs / "killed" / "checkpoints" / "last.ckpt"
    assert load(last)["epoch"] == 1 and not (runs / "killed" / "DONE.json").exists()

    into_new = run("train.py", *common, "run_name=resumed", "ckpt_path=last")
    assert into_new.returncode == 0, into_new.stderr[-3000:]
    assert f"resuming from {last} (ckpt_path=last)" in into_new.stdout + into_new.stderr
    assert_same_training(want, final_state(runs / "resumed"))

    in_place = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *killed], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert in_place.returncode == 0, in_place.stderr[-3000:]
    assert f"holds an interrupted run of this job: resuming from {last}" in in_place.stdout + in_place.stderr
    assert_same_training(want, final_state(runs / "killed"))
    for out in (into_new, in_place):
        assert "other patches than the uninterrupted run" not in out.stdout + out.stderr


def test_ckpt_path_last_resolves_the_newest_run_and_says_so_when_there_is_none(tmp_path):
    runs = tmp_path / "logs" / "unet" / "runs"
    for name, mtime in (("2026-01-01_00-00-00", 2_000_000_000), ("2025-12-31_23-59-59", 2_000_000_100)):
        ckpt = runs / name / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
        os.utime(ckpt, (mtime, mtime))
    assert newest_last_checkpoint(tmp_path / "logs", "unet") == runs / "2025-12-31_23-59-59" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        newest_last_checkpoint(tmp_path / "logs", "slnet")
    out = run("train.py", "model=slnet", "ckpt_path=last", f"paths.root_dir={tmp_path}", "logger=csv")
    one_error_line(out, str(tmp_path / "logs" / "slnet" / "runs"), "ckpt_path=last", "train once first")


# -- 3. jobs done once ---------------------------------------------------------------------------------


def test_job_records_match_by_overrides_and_refuse_another_jobs_folder(tmp_path):
    assert finished_job(tmp_path, ["data.fold=0"]) is None and interrupted_checkpoint(tmp_path, ["data.fold=0"]) is None
    write_done(tmp_path, ["data.fold=0", "run_name=cv"], 0.5, "val/dice", "best.ckpt")
    assert finished_job(tmp_path, ["data.fold=0", "run_name=cv"])["result"] == 0.5
    with pytest.raises(ConfigError, match=r"other overrides \(it has data.fold=0, this job data.fold=1\)"):
        finished_job(tmp_path, ["data.fold=1", "run_name=cv"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"epoch": 3, "callbacks": {"ResumeState": {"job": ["data.fold=0"]}}}, last)
    assert interrupted_checkpoint(tmp_path, ["data.fold=0"]) == last
    with pytest.raises(ConfigError, match="interrupted job with other overrides"):
        interrupted_checkpoint(tmp_path, ["data.fold=2"])
    torch.save({"epoch": 3, "callbacks": {}}, last)  # written before resume support: which job is unknown
    with pytest.raises(CheckpointError, match=f"ckpt_path={last}"):
        interrupted_checkpoint(tmp_path, ["data.fold=0"])
    last.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        interrupted_checkpoint(tmp_path, ["data.fold=0"])


def test_a_rerun_multirun_skips_its_finished_jobs_and_runs_the_others(data_root, tmp_path):
    """A sweep of two folds, then the same sweep named the same with a third fold (what a sweep killed after
    its second job looks like when run again): the finished jobs are not redone, the third runs."""
    common = ["-m", *TINY, "trainer.max_epochs=1", "test=false", f"data.root={data_root}", f"paths.root_dir={tmp_path}"]
    sweep = tmp_path / "logs" / "unet" / "multiruns" / "cv"
    first = run("train.py", *common, "run_name=cv", "data.fold=0,1")
    assert first.returncode == 0, first.stderr[-3000:]
    files = {job: [sweep / job / "DONE.json", *sorted((sweep / job / "checkpoints").iterdir())] for job in ("0", "1")}
    before = {job: [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in paths] for job, paths in files.items()}
    assert not (sweep / "2").exists()

    second = run("train.py", *common, "run_name=cv", "data.fold=0,1,2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("this job finished before") == 2
    for job, paths in files.items():  # no new checkpoint, the same DONE marker, no second training log
        assert [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in paths] == before[job]
        assert sorted(p.name for p in (sweep / job / "csv").iterdir()) == ["version_0"]
    done = json.loads((sweep / "2" / "DONE.json").read_text())
    assert "data.fold=2" in done["overrides"] and (sweep / "2" / "checkpoints" / "last.ckpt").exists()
    assert done["result"] is not None and Path(done["best_checkpoint"]).exists()

    reordered = run("train.py", *common, "run_name=cv", "data.fold=2,0")  # job 0's folder holds fold 0, not 2
    one_error_line(reordered, str(sweep / "0" / "DONE.json"), "other overrides", "data.fold=0", "data.fold=2")
    assert (sweep / "0" / "DONE.json").read_bytes() == before["0"][0][0]

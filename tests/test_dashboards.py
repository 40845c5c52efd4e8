"""Dashboards: one tiny training run with csv + wandb (offline) + TensorBoard, as a user runs it, leaves the
resolved config, every named loss term, the validation images (every N epochs), the per-case test tables and
the test plots in each of them; a resumed run continues its wandb run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import write_case
from omegaconf import OmegaConf
from test_cli import TINY, run

from strokelab.dashboards import WANDB_RUN_KEY, markdown_table
from strokelab.tasks.task import Task

MAIN = [*TINY, "logger=[default,tensorboard]", "trainer.max_epochs=3", "val_images=2", "val_images_every=2"]


def wandb_records(path: Path):
    """The records of an offline run's ``.wandb`` file: wandb's LevelDB-style log (a 7-byte file header, then
    chunks of checksum, length, type in 32 KiB blocks) of protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buffer = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer: padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buffer += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buffer)
            yield record
            buffer = b""


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dash") / "isles"
    for i in range(10):
        write_case(root, f"sub-stroke{i + 1:04d}", nihss=i, seed=i)
    return root


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dash_run")
    out = run("train.py", *MAIN, f"data.root={data_root}", f"paths.root_dir={tmp}", "run_name=main")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp / "logs" / "unet" / "runs" / "main"


def loss_terms(run_dir: Path) -> list[str]:
    """The named loss terms of the run's model, from its resolved config (not a list written into the test)."""
    return list(OmegaConf.load(run_dir / ".hydra" / "config.yaml").model.losses)


def test_validation_images_are_drawn_every_n_epochs_and_at_the_last():
    def drawn(n: int, every: int, epochs: int) -> list[int]:
        trainer = SimpleNamespace(max_epochs=epochs, check_val_every_n_epoch=every)
        validated = [e for e in range(epochs) if (e + 1) % every == 0]
        task = SimpleNamespace(val_images_every=n, trainer=trainer)
        return [e + 1 for e in validated if Task.images_due(SimpleNamespace(**vars(task), current_epoch=e))]

    assert drawn(1, 1, 4) == [1, 2, 3, 4]
    assert drawn(2, 1, 5) == [2, 4, 5]
    assert drawn(10, 5, 30) == [10, 20, 30]  # validations at 5, 15, 25 draw nothing
    assert drawn(3, 5, 20) == [5, 10, 15, 20]  # validation rarer than N: every validation


def test_an_offline_wandb_run_holds_config_loss_terms_images_and_the_per_case_tables(trained):
    (wandb_run,) = offline_runs(trained)
    files = wandb_run / "files" / "media"
    val_images = sorted((files / "images" / "val" / "images").glob("*.png"))
    on_disk = sorted(trained.glob("val_images/*/*.png"))
    assert {p.parent.name for p in on_disk} == {"epoch_001", "epoch_002"}  # val_images_every=2: epoch 2 and the last
    assert len(val_images) == len(on_disk) == 4  # 2 cases x 2 validations, in wandb as on disk
    for model in ("unet", "threshold"):
        table = pd.read_csv(trained / "test" / model / "metrics.csv")
        (logged,) = (files / "table" / "test" / model).glob("cases_*.table.json")
        content = json.loads(logged.read_text())
        assert content["columns"] == list(table.columns)
        assert [row[0] for row in content["data"]] == list(table["case"])
        dice = content["columns"].index("dice")
        assert [row[dice] for row in content["data"]] == pytest.approx(list(table["dice"]))
        plots = {p.stem.rsplit("_", 2)[0] for p in (files / "images" / "test" / model).glob("*.png")}
        assert plots == {"volume_scatter", "dice_vs_volume", *table["case"]}  # report plots and per-case previews

    records = list(wandb_records(next(wandb_run.glob("run-*.wandb"))))
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update}
    assert config["model"]["inputs"] == ["cbf", "cbv", "mtt", "tmax"] and config["model"]["net"]["in_channels"] == 4  # resolved
    assert config["val_images_every"] == 2
    history = {item.key or "/".join(item.nested_key) for r in records if r.HasField("history") for item in r.history.item}
    assert {f"train/{t}" for t in loss_terms(trained)} | {"train/loss_epoch", "val/dice", "test/unet/dice"} <= history


def test_csv_and_tensorboard_hold_the_config_loss_terms_images_and_tables(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    terms = {f"train/{t}" for t in loss_terms(trained)}
    (csv_dir,) = (trained / "csv").glob("version_*")
    assert terms | {"train/loss_epoch", "val/dice", "val/loss"} <= set(pd.read_csv(csv_dir / "metrics.csv").columns)
    assert OmegaConf.load(csv_dir / "hparams.yaml").model.inputs == ["cbf", "cbv", "mtt", "tmax"]

    events = EventAccumulator(str(next((trained / "tensorboard").glob("version_*"))), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert terms | {"train/loss_epoch", "val/dice"} <= set(tags["scalars"])
    assert sum(len(events.Images(t)) for t in tags["images"] if t.startswith("val/images/")) == 4
    table = pd.read_csv(trained / "test" / "unet" / "metrics.csv")
    assert {f"test/unet/{c}" for c in table["case"]} | {"test/unet/volume_scatter"} <= set(tags["images"])
    (text,) = events.Tensors("test/unet/cases/text_summary")
    markdown = text.tensor_proto.string_val[0].decode()
    assert markdown == markdown_table(table) and all(c in markdown for c in table["case"])


def test_every_held_out_case_gets_an_input_prediction_label_png_beside_metrics_csv(trained):
    for model in ("unet", "threshold"):
        table = pd.read_csv(trained / "test" / model / "metrics.csv")
        assert all((trained / "test" / model / f"{case}.png").stat().st_size > 1000 for case in table["case"])


def test_a_resumed_run_continues_its_wandb_run(trained, data_root, tmp_path):
    """In a new folder from a checkpoint (ckpt_path=PATH), and in place (a named run whose folder holds its
    interrupted run: here one whose DONE.json was never written)."""
    (first,) = offline_runs(trained)
    run_id = first.name.rsplit("-", 1)[1]
    assert torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)[WANDB_RUN_KEY] == run_id

    common = [*TINY, "logger=default", "test=false", f"data.root={data_root}", f"paths.root_dir={tmp_path}"]
    resumed = [*common, "trainer.max_epochs=4", "run_name=resumed", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"]
    out = run("train.py", *resumed)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder = tmp_path / "logs" / "unet" / "runs" / "resumed"
    (second,) = offline_runs(folder)
    assert second.name.endswith(f"-{run_id}")
    (record,) = [r.run for r in wandb_records(next(second.glob("run-*.wandb"))) if r.HasField("run")]
    assert record.run_id == run_id

    (folder / "DONE.json").unlink()  # as after a kill between the last checkpoint and the end of the job
    shutil.rmtree(folder / "wandb")
    out = run("train.py", *resumed[:-1])  # the same command without ckpt_path: the folder's own last.ckpt
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "holds an interrupted run of this job" in out.stdout + out.stderr
    assert [p.name.rsplit("-", 1)[1] for p in offline_runs(folder)] == [run_id]

"""The shared model interface: every model config builds on it, the data side serves what a model declares,
validation never touches the held-out fold, and a two-network, two-output model trains, checkpoints and
predicts every output in native geometry without any code of its own outside its module."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from strokelab.data.datamodule import StrokeDataModule
from strokelab.entry import register_resolvers
from strokelab.errors import ConfigError
from strokelab.models import SegmentationModel

CONF = Path(__file__).resolve().parents[1] / "conf"
WANG_MODELS = ("slnet", "slnet_no_se", "slnet_no_sn", "unet2d", "fcn", "resunet", "r2unet")


def compose_train(*overrides: str):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("name", ["unet", *WANG_MODELS])
def test_every_segmentation_config_builds_a_model_that_declares_its_io(name, single_thread):
    cfg = compose_train(f"model={name}", "model.net.channels=[4,8,8,8,8]" if name != "unet" else "model.net.channels=[4,8,8,8]")
    model = instantiate(cfg.model)
    assert isinstance(model, SegmentationModel) and model.inputs == ["cbf", "cbv", "mtt", "tmax"]
    assert model.mask_output == "logits" and model.served_targets == ["label"] and set(model.loss_terms) == {"seg"}
    dims = model.spatial_dims
    assert dims == (3 if name == "unet" else 2)
    shape = (2, 1, 64, 64, 16)[: 2 + dims]
    out = model({m: torch.randn(shape) for m in model.inputs})
    assert out["logits"].shape == shape
    if name != "unet":  # Wang et al.'s settings: RMSprop 0.002, x0.2 at 60 % of the epochs
        optimizer = model.optimizer_factory(params=model.parameters())
        scheduler = model.scheduler_factory(optimizer=optimizer)
        assert type(optimizer).__name__ == "RMSprop" and optimizer.defaults["lr"] == 0.002
        assert list(scheduler.milestones) == [round(0.6 * cfg.trainer.max_epochs)] and scheduler.gamma == 0.2


def test_switches_of_table3_change_what_they_say():
    nets = {n: instantiate(compose_train(f"model={n}", "model.net.channels=[4,8,8,8,8]").model).net for n in WANG_MODELS}
    names = {n: {type(m).__name__ for m in net.modules()} for n, net in nets.items()}
    assert {"SwitchableNorm", "SEBlock"} <= names["slnet"]
    assert "SEBlock" not in names["slnet_no_se"] and "SwitchableNorm" in names["slnet_no_se"]
    assert "SwitchableNorm" not in names["slnet_no_sn"] and "BatchNorm2d" in names["slnet_no_sn"]


def test_a_weighted_loss_makes_the_model_declare_and_the_data_serve_the_weight_map(tiny_root, tmp_path):
    cfg = compose_train("model=slnet", "loss=wce_hgd", "model.net.channels=[4,8,8,8,8]")
    model = instantiate(cfg.model)
    assert model.served_targets == ["label", "weight_map"] and model.loss_terms["seg"].voxel_weight == "weight_map"
    assert instantiate(compose_train("model=slnet", "loss=ce_hgd").model).served_targets == ["label"]
    dm = StrokeDataModule(
        root=str(tiny_root),
        modalities=model.inputs,
        targets=model.served_targets,
        spatial_dims=2,
        cache_dir=str(tmp_path / "cache"),
        patch_size=(16, 16),
        preprocess={"spacing": [2.0, 2.0, 5.0]},
    )
    dm.setup()
    subject = dm.train_subjects[0]
    weight, label = subject["weight_map"].data[0].numpy(), subject["label"].data[0].numpy() > 0
    assert np.allclose(weight[label], 1.5)
    assert weight[~label].min() >= 0.5 and weight[~label].max() <= 1.0
    for z in range(label.shape[2]):  # per axial slice, as the paper's 2D images: a slice without lesion is 0.5
        if not label[:, :, z].any():
            assert np.allclose(weight[:, :, z], 0.5)
    batch = next(iter(dm.train_dataloader()))
    assert batch["weight_map"]["data"].shape == (4, 1, 16, 16, 1)  # axial slices


def test_validation_comes_from_the_training_folds_never_the_held_out_one(tiny_root, tmp_path):
    def split(**kw):
        dm = StrokeDataModule(root=str(tiny_root), modalities=["cbf", "tmax"], cache_dir=None, **kw)
        return [[c.id for c in part] for part in dm.split()]

    for fold in range(5):
        train, val, test = split(fold=fold)
        assert not set(val) & set(test) and not set(train) & set(test) and not set(train) & set(val)
        assert sorted(train + val + test) == [f"sub-stroke{i:04d}" for i in range(1, 11)]
        assert len(val) >= 1 and split(fold=fold) == [train, val, test]  # deterministic
    inner = [split(val_fold=k)[1] for k in range(4)]
    assert sorted(sum(inner, [])) == sorted(split()[0] + split()[1])  # the inner folds tile the training folds
    with pytest.raises(ConfigError, match="data.val_fold"):
        split(val_fold=4)


def test_a_two_network_model_trains_checkpoints_and_predicts_every_output(tiny_root, tmp_path):
    """The interface's promise: a new family is a module and a config; train.py and predict.py need nothing else."""
    from strokelab.train import train

    cfg = compose_train(
        "data=isles24",
        f"data.root={tiny_root}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "task_name=toy",
        "model_name=toy",
        "data.patch_size=[16,16]",
        "data.batch_size=2",
        "data.samples_per_volume=2",
        "data.queue_length=8",
        "data.prepare_workers=1",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "logger=csv",
        "baseline=null",
    )
    from omegaconf import OmegaConf

    cfg.model = OmegaConf.create(
        {
            "_target_": "toy_models.ToyChain",
            "_convert_": "all",
            "inputs": ["cbf", "tmax"],
            "spatial_dims": 2,
            "losses": {
                "seg": {"fn": {"_target_": "strokelab.losses.BCELoss"}, "pred": "logits", "target": "label"},
                "aux": {"fn": {"_target_": "strokelab.losses.MSELoss"}, "weight": 0.1, "pred": "feature", "target": "label"},
            },
            "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2},
            "inference": {"patch_size": [16, 16], "batch_size": 4},
        }
    )
    train(cfg)
    run = tmp_path / "run"
    log = pd.read_csv(next((run / "csv").rglob("metrics.csv")))
    assert {"train/seg", "train/aux", "train/loss_epoch", "val/dice", "val/loss"} <= set(log.columns)
    meta = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["strokelab"]
    assert meta["model"]["_target_"] == "toy_models.ToyChain" and meta["outputs"] == {"logits": "mask", "feature": "image"}
    table = pd.read_csv(run / "test" / "toy" / "metrics.csv")
    cid = table.case[0]
    ref = nib.load(tiny_root / "derivatives" / cid / "ses-01" / "perfusion-maps" / f"{cid}_ses-01_space-ncct_cbf.nii.gz")
    for name, dtype in ((f"{cid}.nii.gz", np.uint8), (f"{cid}_feature.nii.gz", np.float32)):
        image = nib.load(run / "test" / "toy" / name)
        assert image.shape == ref.shape and np.array_equal(image.affine, ref.affine) and image.get_data_dtype() == dtype

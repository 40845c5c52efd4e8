"""The Tmax regression workflow as a user runs it: the Table I multirun, its pooled report, predict.py."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from test_cli import CONF, one_error_line, run

from strokelab.entry import register_resolvers
from strokelab.metrics import REGRESSION_COLUMNS

TINY_TMAX = [
    "data=isles24",
    "data.preprocess.spacing=[2,2,5]",
    "data.preprocess.frames=8",
    "data.patch_size=[16,16,8]",
    "data.samples_per_volume=2",
    "data.queue_length=8",
    "data.batch_size=2",
    "data.prepare_workers=1",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "logger=csv",
]


def test_table1_design_composes_three_networks_three_rates_six_folds():
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tmax_table1"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert params["model"] == "tmax_linear,tmax_two_layer,tmax_unet"
        assert params["model.optimizer.lr"] == "1e-5,1e-4,1e-3" and params["data.fold"] == "0,1,2,3,4,5"
        assert cfg.data.n_folds == 6 and cfg.trainer.max_epochs == 25 and cfg.model.target == "tmax"
        assert cfg.loss._target_.endswith("MSELoss") and cfg.monitor.mode == "min"
        for model in ("tmax_linear", "tmax_two_layer", "tmax_unet"):
            job = compose("train", overrides=["experiment=tmax", f"model={model}", "loss=asymmetric_mse"])
            model = instantiate(job.model)
            assert type(model).__name__ == "RegressionModel" and model.loss_terms["regression"].fn.over_weight == 2.0
            assert model.outputs["tmax"].kind == "map" and model.loss_terms["regression"].voxel_weight == "reference_brain"
            first = next(m for m in model.net.modules() if hasattr(m, "in_channels"))
            assert first.in_channels == job.data.preprocess.frames == 32


@pytest.fixture(scope="module")
def table1(tmp_path_factory):
    """The Table I multirun cut to 2 networks x 1 rate x 2 of the 6 folds, one epoch each."""
    from conftest import write_case, write_ctp

    tmp = tmp_path_factory.mktemp("tmax")
    root = tmp / "isles"
    for i in range(12):
        cid = f"sub-stroke{i + 1:04d}"
        write_case(root, cid, nihss=i, seed=i)
        write_ctp(root, cid)
    out = run(
        "train.py",
        "-m",
        "experiment=tmax_table1",
        *TINY_TMAX,
        "model=tmax_linear,tmax_unet",
        "model.optimizer.lr=1e-3",
        "data.fold=0,5",
        f"data.root={root}",
        f"paths.root_dir={tmp}",
        f"hydra.sweep.dir={tmp / 'multirun'}",
    )
    return root, tmp / "multirun", out


def test_table1_multirun_trains_tests_and_pools_by_network_and_rate(table1):
    root, sweep, out = table1
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (root / "isles24_multimodal_6fold_NIHSSstratified.json").exists()
    names = sorted(p.parent.name for p in sweep.rglob("test/*/metrics.csv"))
    assert names == ["tmax_linear_lr0.001"] * 2 + ["tmax_unet_lr0.001"] * 2
    report = subprocess.run([sys.executable, "-m", "strokelab.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert "tmax_linear_lr0.001" in report.stdout and "mse" in report.stdout and "ssim" in report.stdout
    pooled = pd.read_csv(sweep / "summary" / "tmax_unet_lr0.001" / "summary.csv")
    folds = pooled[(pooled["by"] == "fold") & (pooled["metric"] == "mse")]
    assert sorted(folds["group"].astype(int)) == [0, 5]


def test_predict_with_a_tmax_checkpoint_writes_maps_on_the_tmax_grid(table1, tmp_path):
    root, sweep, _ = table1
    ckpt = next(sweep.rglob("checkpoints/last.ckpt"))
    out = run("predict.py", f"input={root}", f"output={tmp_path}", f"ckpt={ckpt}")
    assert out.returncode == 0, out.stderr[-3000:]
    cid = "sub-stroke0003"
    ref = nib.load(root / "derivatives" / cid / "ses-01" / "perfusion-maps" / f"{cid}_ses-01_space-ncct_tmax.nii.gz")
    pred = nib.load(tmp_path / f"{cid}_tmax.nii.gz")
    assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine) and pred.get_data_dtype() == np.float32
    values = np.asarray(pred.dataobj)
    assert values.min() >= 0 and values.max() <= 20  # the trained value range, in s
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert len(table) == 12 and set(REGRESSION_COLUMNS) <= set(table.columns)


def test_regression_misconfigurations_end_in_one_line(table1, tmp_path):
    root, _, _ = table1
    out = run(
        "train.py",
        "experiment=tmax",
        *TINY_TMAX,
        "data.preprocess.frames=null",
        f"data.root={root}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'a'}",
        "model=tmax_linear",
        "model.net.in_channels=8",
    )
    one_error_line(out, "data.preprocess.frames", "4D series")
    out = run(
        "train.py",
        "experiment=tmax",
        *TINY_TMAX,
        "data.sampler=label",
        f"data.root={root}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'b'}",
    )
    one_error_line(out, "data.sampler", "brain or uniform")

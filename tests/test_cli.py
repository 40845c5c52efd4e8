"""train.py and predict.py as a user runs them: configs compose, runs finish, bad input ends in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REAL_ISLES24_MASK, write_case
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from strokelab.entry import register_resolvers
from strokelab.metrics import METRIC_COLUMNS

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# A network and patches small enough for a 32x36x10 test volume; one short epoch.
TINY = [
    "data=isles24",
    "data.preprocess.spacing=[2,2,5]",
    "data.patch_size=[16,16,8]",
    "data.samples_per_volume=2",
    "data.queue_length=8",
    "data.batch_size=2",
    "data.prepare_workers=1",
    "model.net.channels=[4,8,16,32]",
    "trainer.max_epochs=2",
    "trainer.check_val_every_n_epoch=1",
    "logger=csv",
]


def run(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def one_error_line(out: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """One ``error:`` line holding every needle, no traceback, exit ``code`` (2: a user error stopped everything;
    1: predict.py reported a failed case and finished the others)."""
    assert out.returncode == code, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=threshold"],
        ["experiment=bce_collapse"],
        ["loss=dice"],
        ["data=isles24"],
        ["logger=tensorboard"],
        ["trainer=gpu"],
        ["trainer=ddp"],
        ["model.net.deep_supervision=true"],
    ],
)
def test_train_configs_compose_and_instantiate(overrides):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if cfg.model._target_.endswith("ThresholdBaseline"):
        assert instantiate(cfg.model).rule == "union"
        return
    model = instantiate(cfg.model)
    assert model.net.required_divisor and model.inputs == list(cfg.data.modalities) and model.mask_output == "logits"
    assert set(model.loss_terms) == {"seg"} and cfg.baseline._target_.endswith("ThresholdBaseline")


def test_experiments_override_what_they_say():
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        bce = compose("train", overrides=["experiment=bce_collapse"])
        cv = compose("train", overrides=["experiment=cross_validation"], return_hydra_config=True)
    assert bce.loss.loss._target_.endswith("BCELoss") and bce.data.sampler == "uniform"
    assert cv.hydra.sweeper.params["data.fold"] == "0,1,2,3,4"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run on synthetic ISLES'24-layout data, shared by the tests below; with the default
    loggers (csv + wandb offline), as `make train` runs."""
    tmp = tmp_path_factory.mktemp("run")
    root = tmp / "isles"
    for i in range(10):
        write_case(root, f"sub-stroke{i + 1:04d}", nihss=i, seed=i)
    args = [*TINY, "logger=default", f"data.root={root}", f"paths.root_dir={tmp}", f"hydra.run.dir={tmp / 'run'}"]
    out = run("train.py", *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root, tmp / "run", out.stdout


def test_train_fits_tests_and_compares_with_the_baseline(trained):
    root, run_dir, stdout = trained
    assert "threshold" in stdout and "Held-out fold 0" in stdout
    assert list((run_dir / "wandb").glob("offline-run-*"))  # the wandb run was written and closed
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    for name in ("unet", "threshold"):
        table = pd.read_csv(run_dir / "test" / name / "metrics.csv")
        assert list(table.columns[:1]) == ["case"] and set(METRIC_COLUMNS) <= set(table.columns)
        assert len(table) == 2 and (run_dir / "test" / name / f"{table.case[0]}.nii.gz").exists()
    assert (root / "isles24_multimodal_5fold_NIHSSstratified.json").exists()
    log = pd.read_csv(next((run_dir / "csv").rglob("metrics.csv")))
    assert {"val/dice", "val/precision", "val/recall", "val/avd_ml", "train/loss_epoch"} <= set(log.columns)
    kept = (run_dir / "train.log").read_text()  # stdout was a pipe: one line per epoch, no redrawn bar
    assert "epoch 1/2: train/loss" in kept and "epoch 2/2: train/loss" in kept and "val/dice" in kept and "left" in kept
    assert "epoch 2/2: train/loss" in stdout


def test_predict_writes_masks_in_native_geometry_with_metrics(trained, tmp_path):
    root, run_dir, _ = trained
    out = run("predict.py", f"input={root}", f"output={tmp_path / 'pred'}", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert out.returncode == 0, out.stderr[-3000:]
    for cid in ("sub-stroke0001", "sub-stroke0010"):
        ref = nib.load(root / "derivatives" / cid / "ses-01" / "perfusion-maps" / f"{cid}_ses-01_space-ncct_cbf.nii.gz")
        mask = nib.load(tmp_path / "pred" / f"{cid}.nii.gz")
        assert mask.shape == ref.shape and np.array_equal(mask.affine, ref.affine)
        assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    table = pd.read_csv(tmp_path / "pred" / "metrics.csv")
    assert len(table) == 10 and table["case"].is_unique
    assert not list((tmp_path / "pred").glob(".*tmp*"))  # nothing half-written left behind


def test_predict_threshold_model_needs_no_checkpoint(tiny_root, tmp_path):
    out = run("predict.py", f"input={tiny_root / 'derivatives' / 'sub-stroke0002'}", f"output={tmp_path}", "model=threshold")
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(tmp_path / "metrics.csv")
    # The synthetic lesion is exactly the hypoperfused blob: the baseline must find it.
    assert table.case.tolist() == ["sub-stroke0002"] and table.dice[0] > 0.9


def test_bad_checkpoints_end_in_one_line(trained, tmp_path):
    root, run_dir, _ = trained
    case = str(root / "derivatives" / "sub-stroke0001")
    one_error_line(
        run("predict.py", f"input={case}", f"output={tmp_path}", f"ckpt={tmp_path / 'nope.ckpt'}"), "nope.ckpt", "does not exist"
    )
    good = run_dir / "checkpoints" / "last.ckpt"
    one_error_line(run("predict.py", f"input={case}", f"output={tmp_path}", f"ckpt={good}", "model=unet"), "model", "drop model=")
    ckpt = torch.load(good, map_location="cpu", weights_only=False)
    ckpt["strokelab"]["model"]["net"]["_target_"] = "strokelab.nn.unet.NoSuchNet"
    torch.save(ckpt, tmp_path / "renamed.ckpt")
    renamed = run("predict.py", f"input={case}", f"output={tmp_path}", f"ckpt={tmp_path / 'renamed.ckpt'}")
    one_error_line(renamed, "renamed.ckpt", "does not build")
    ckpt["strokelab"] = {"format": 1, "net": {}, "modalities": ["cbf"]}
    torch.save(ckpt, tmp_path / "old.ckpt")
    one_error_line(run("predict.py", f"input={case}", f"output={tmp_path}", f"ckpt={tmp_path / 'old.ckpt'}"), "format 1")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    one_error_line(run("predict.py", f"input={case}", f"output={tmp_path}", f"ckpt={garbage}"), "garbage.ckpt")
    assert not list(tmp_path.glob("*.nii.gz"))


def test_bad_data_ends_in_one_line_naming_the_file(tiny_root, tmp_path):
    case = tiny_root / "derivatives" / "sub-stroke0003"
    cbv = case / "ses-01" / "perfusion-maps" / "sub-stroke0003_ses-01_space-ncct_cbv.nii.gz"
    affine = nib.load(cbv).affine
    nib.save(nib.Nifti1Image(np.full((32, 36, 10), np.nan, np.float32), affine), cbv)
    out_dir = tmp_path / "out"
    one_error_line(
        run(
            "train.py",
            *TINY,
            f"data.root={tiny_root}",
            f"paths.root_dir={tmp_path}",
            "data.cache_dir=null",
            f"hydra.run.dir={tmp_path / 'run'}",
        ),
        "sub-stroke0003_ses-01_space-ncct_cbv.nii.gz",
        "NaN",
    )
    # model=threshold reads cbf and tmax only: break tmax the same way for predict.
    tmax = cbv.parent / "sub-stroke0003_ses-01_space-ncct_tmax.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 36, 10), np.inf, np.float32), affine), tmax)
    one_error_line(run("predict.py", f"input={case}", f"output={out_dir}", "model=threshold"), "tmax.nii.gz", "NaN/Inf", code=1)
    empty = tmp_path / "empty"
    (empty / "derivatives").mkdir(parents=True)
    one_error_line(run("predict.py", f"input={empty}", f"output={out_dir}", "model=threshold"), "holds no sub-stroke")
    assert not out_dir.exists() or not list(out_dir.glob("*.nii.gz"))


def test_a_broken_config_ends_in_one_line(tiny_root, tmp_path):
    out = run(
        "train.py",
        "data=isles24",
        f"data.root={tiny_root}",
        "data.preprocess.spacing=[2,2]",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=csv",
    )
    one_error_line(out, "data.preprocess.spacing")
    out = run("train.py", "model=nonexistent", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode != 0 and "Traceback" not in out.stderr and "nonexistent" in out.stderr


@pytest.mark.slow
def test_predict_on_real_isles24_geometry(trained, tmp_path):
    """512x586x74 voxels of 0.38x0.38x2 mm, LAS, oblique: the mask has exactly that shape and affine."""
    _, run_dir, _ = trained
    ref = nib.load(REAL_ISLES24_MASK)
    root = tmp_path / "isles"
    write_case(root, "sub-stroke0014", shape=ref.shape, affine=ref.affine, seed=3)
    out = run(
        "predict.py",
        f"input={root / 'derivatives' / 'sub-stroke0014'}",
        f"output={tmp_path / 'pred'}",
        f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    mask = nib.load(tmp_path / "pred" / "sub-stroke0014.nii.gz")
    assert mask.shape == ref.shape == (512, 586, 74) and np.array_equal(mask.affine, ref.affine)
    assert mask.get_data_dtype() == np.uint8


def _perfusion(case_dir: Path, name: str) -> Path:
    return case_dir / "ses-01" / "perfusion-maps" / f"{case_dir.name}_ses-01_space-ncct_{name}.nii.gz"


BREAKAGES = {
    "missing modality": (lambda d, a: _perfusion(d, "cbv").unlink(), "cbv.nii.gz", "lacks the input"),
    "truncated file": (
        lambda d, a: _perfusion(d, "mtt").write_bytes(_perfusion(d, "mtt").read_bytes()[:-300]),
        "mtt.nii.gz",
        "truncated",
    ),
    "shape mismatch": (
        lambda d, a: nib.save(nib.Nifti1Image(np.ones((30, 36, 10), np.float32), a), _perfusion(d, "cbv")),
        "cbv.nii.gz",
        "shape",
    ),
    "affine mismatch": (
        lambda d, a: nib.save(nib.Nifti1Image(np.ones((32, 36, 10), np.float32), a * 1.1), _perfusion(d, "cbv")),
        "cbv.nii.gz",
        "affine",
    ),
    "4D where 3D": (
        lambda d, a: nib.save(nib.Nifti1Image(np.ones((32, 36, 10, 4), np.float32), a), _perfusion(d, "tmax")),
        "tmax.nii.gz",
        "3D",
    ),
    "mask not 0/1": (
        lambda d, a: nib.save(
            nib.Nifti1Image(np.full((32, 36, 10), 2, np.uint8), a), d / "ses-02" / f"{d.name}_ses-02_space-ncct_lesion-msk.nii.gz"
        ),
        "lesion-msk.nii.gz",
        "values other than 0/1",
    ),
}


@pytest.mark.parametrize("what", list(BREAKAGES))
def test_predict_refuses_bad_cases_in_one_line(trained, tmp_path, what):
    _, run_dir, _ = trained
    root = tmp_path / "isles"
    write_case(root, "sub-stroke0001", seed=1)
    case_dir = root / "derivatives" / "sub-stroke0001"
    breaker, name, problem = BREAKAGES[what]
    breaker(case_dir, nib.load(_perfusion(case_dir, "cbf")).affine)
    out = run("predict.py", f"input={case_dir}", f"output={tmp_path / 'pred'}", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")
    one_error_line(out, name, problem, code=1)  # the case failed (predict.py goes on with any others)
    assert not (tmp_path / "pred" / "metrics.csv").exists() and not list((tmp_path / "pred").glob("*.nii.gz"))


def test_fold_file_with_missing_cases_stops_training_in_one_line(tiny_root, tmp_path):
    folds = tmp_path / "folds.json"
    folds.write_text('{"training": [{"caseID": "sub-stroke0042", "fold": 0}]}')
    out = run(
        "train.py",
        *TINY,
        f"data.root={tiny_root}",
        f"data.fold_file={folds}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    one_error_line(out, "folds.json", "sub-stroke0042")


def test_cross_validation_multirun_and_pooled_report(tiny_root, tmp_path):
    out = run(
        "train.py",
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        f"data.root={tiny_root}",
        f"paths.root_dir={tmp_path}",
        "data.fold=0,1",
        f"hydra.sweep.dir={tmp_path / 'cv'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Held-out fold 0" in out.stdout and "Held-out fold 1" in out.stdout
    report = subprocess.run([sys.executable, "-m", "strokelab.report", str(tmp_path / "cv")], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    pooled = pd.read_csv(tmp_path / "cv" / "summary" / "unet" / "summary.csv")
    folds = pooled[(pooled["by"] == "fold") & (pooled["metric"] == "dice")]
    assert sorted(folds["group"].astype(int)) == [0, 1] and set(folds["n"]) == {2}
    tables = [pd.read_csv(p) for p in (tmp_path / "cv").rglob("test/unet/metrics.csv")]
    assert sorted(f for t in tables for f in t.fold.unique()) == [0, 1] and sum(len(t) for t in tables) == 4


def test_ddp_trains_on_two_cpu_processes(tiny_root, tmp_path):
    """trainer=ddp on CPU (gloo): the TorchIO queue shards subjects per rank and rank 0 alone tests."""
    out = run(
        "train.py",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        f"data.root={tiny_root}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("Held-out fold 0") == 1 and "MEMBER: 2/2" in out.stdout + out.stderr


@pytest.mark.slow
def test_default_pipeline_generates_the_phantom_and_trains_on_it(tmp_path):
    """`make train` in small: the default config generates the phantom, trains, tests both models."""
    out = run(
        "train.py",
        "data.phantom.n_cases=10",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "data.samples_per_volume=2",
        "logger=csv",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "data" / "phantom"
    assert (root / "dataset_description.json").exists() and len(list((root / "derivatives").iterdir())) == 10
    assert (root / "isles24_multimodal_5fold_NIHSSstratified.json").exists()
    assert "| unet" in out.stdout and "| threshold" in out.stdout
    check = subprocess.run([sys.executable, "-m", "strokelab.data.check", str(root)], capture_output=True, text=True)
    assert check.returncode == 0 and "all usable" in check.stdout


def test_training_resumes_from_a_checkpoint(trained, tmp_path):
    root, run_dir, _ = trained
    out = run(
        "train.py",
        *TINY,
        "trainer.max_epochs=3",
        "test=false",
        f"data.root={root}",
        f"paths.root_dir={tmp_path}",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'resumed'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restored all states" in out.stdout + out.stderr
    log = pd.read_csv(next((tmp_path / "resumed" / "csv").rglob("metrics.csv")))
    assert sorted(log["epoch"].dropna().unique()) == [2]  # epochs 0-1 came from the checkpoint


def test_predict_computes_missing_maps_from_the_raw_ctp(trained, tmp_path):
    """A case with its CTP but without perfusion maps: predict.py derives them first (bcSVD), then predicts."""
    from strokelab.data.phantom import PhantomConfig, generate

    _, run_dir, _ = trained
    root = tmp_path / "phantom"
    generate(root, PhantomConfig(n_cases=1, seed=3))
    cid = "sub-stroke0001"
    maps_dir = root / "derivatives" / cid / "ses-01" / "perfusion-maps"
    reference = nib.load(next(maps_dir.glob("*_cbf.nii.gz")))
    for path in maps_dir.glob("*.nii.gz"):
        path.unlink()
    out = run("predict.py", f"input={root}", f"output={tmp_path / 'pred'}", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert out.returncode == 0, out.stderr[-3000:]
    derived = sorted(p.name for p in (tmp_path / "pred" / "perfusion-maps" / cid).glob("*.nii.gz"))
    assert derived == [f"{cid}_ses-01_space-ncct_{m}.nii.gz" for m in ("cbf", "cbv", "mtt", "tmax")]
    mask = nib.load(tmp_path / "pred" / f"{cid}.nii.gz")
    assert mask.shape == reference.shape and np.allclose(mask.affine, reference.affine)
    assert not list(maps_dir.glob("*.nii.gz"))  # the input data set is never written to


@pytest.mark.parametrize("dims", [2, 3])
def test_slnet_checkpoint_predicts_isles18_and_isles24_cases_in_native_geometry(tiny_root, tmp_path, dims):
    """SLNet trained in 2D slice mode or 3D; predict.py needs the checkpoint only, on either layout."""
    from strokelab.data.phantom import PhantomConfig, generate

    patch = "data.patch_size=[16,16]" if dims == 2 else "data.patch_size=[16,16,8]"
    strides = [] if dims == 2 else ["model.net.strides=[[2,2,1],[2,2,2],[2,2,2],[2,2,1]]"]
    out = run(
        "train.py",
        *TINY,
        "model=slnet",
        "loss=wce_hgd",
        f"model.spatial_dims={dims}",
        patch,
        "model.net.channels=[4,8,8,8,8]",
        *strides,
        f"data.root={tiny_root}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "checkpoint chosen by val/dice on" in out.stdout and "training folds" in out.stdout
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    root18 = tmp_path / "isles18"
    generate(root18, PhantomConfig(layout="isles18", n_cases=1, seed=3, shape=(48, 48, 4), spacing=(4.5, 4.5, 9.0), n_frames=43))
    for case_dir, mask_name, reference in (
        (root18 / "TRAINING" / "case_1", "case_1.nii.gz", next((root18 / "TRAINING" / "case_1").glob("*CT_CBF*/*.nii"))),
        (
            tiny_root / "derivatives" / "sub-stroke0002",
            "sub-stroke0002.nii.gz",
            _perfusion(tiny_root / "derivatives" / "sub-stroke0002", "cbf"),
        ),
    ):
        pred = run("predict.py", f"input={case_dir}", f"output={tmp_path / 'pred'}", f"ckpt={ckpt}")
        assert pred.returncode == 0, pred.stderr[-3000:]
        mask, ref = nib.load(tmp_path / "pred" / mask_name), nib.load(reference)
        assert mask.shape == ref.shape and np.array_equal(mask.affine, ref.affine) and mask.get_data_dtype() == np.uint8

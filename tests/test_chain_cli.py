"""The pseudo-DWI chain as a user runs it: ``train.py experiment=pseudo_dwi`` on a tiny ISLES'18-layout phantom
(every loss term logged, validation images written, synthesis scored), then ``predict.py`` with the checkpoint
alone, writing mask and pseudo-DWI in native geometry, on an ISLES'18 case and on an ISLES'24 case whose maps
are missing (derived from its raw CTP first)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_cli import run

from strokelab.data.phantom import PhantomConfig, generate

TINY_CHAIN = [
    "experiment=pseudo_dwi",
    "widths=[4,8,8,8,8]",
    "data.patch_size=[16,16,1]",
    "data.batch_size=2",
    "data.samples_per_volume=2",
    "data.queue_length=8",
    "data.prepare_workers=1",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.check_val_every_n_epoch=1",
    "logger=default",  # csv + wandb offline, as make train runs
    "val_images=2",
]


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    root = tmp / "isles18"
    generate(root, PhantomConfig(layout="isles18", n_cases=10, seed=5, shape=(48, 48, 4), spacing=(4.5, 4.5, 9.0), n_frames=43))
    args = [*TINY_CHAIN, f"data.root={root}", f"paths.root_dir={tmp}", f"hydra.run.dir={tmp / 'run'}"]
    out = run("train.py", *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root, tmp / "run", out.stdout


def test_chain_trains_logs_every_term_and_scores_synthesis(chain_run):
    root, run_dir, stdout = chain_run
    assert "ssim_local" in stdout and "checkpoint chosen by val/dice" in stdout
    log = pd.read_csv(next((run_dir / "csv").rglob("metrics.csv")))
    terms = {
        f"train/{t}_epoch" if t == "loss" else f"train/{t}"
        for t in ("seg", "synth_pixel", "synth_context", "extract_pixel", "extract_context", "loss")
    }
    assert terms <= set(log.columns)
    assert (log["train/synth_context"].dropna() > 0).all()  # ℓ_h is not trivially zero with the frozen Φ_c
    assert {"val/dice", "val/ssim", "val/psnr", "val/ssim_local", "val/psnr_local"} <= set(log.columns)
    pngs = sorted((run_dir / "val_images").rglob("*.png"))
    assert len(pngs) == 4 and {p.parent.name for p in pngs} == {"epoch_000", "epoch_001"}  # 2 cases x 2 validations
    logged = list((run_dir / "wandb").glob("offline-run-*/files/media/images/val/images/*.png"))
    assert len(logged) == 4  # the same rows in the wandb run
    table = pd.read_csv(run_dir / "test" / "pseudo_dwi" / "metrics.csv")
    assert {"dice", "rve", "ssim", "psnr", "ssim_local", "psnr_local"} <= set(table.columns)
    assert table["ssim"].between(-1, 1).all() and np.isfinite(table["psnr"]).all()


def test_chain_checkpoint_predicts_mask_and_pseudo_dwi_in_native_geometry(chain_run, tmp_path):
    root, run_dir, _ = chain_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    case = root / "TRAINING" / "case_1"
    out = run("predict.py", f"input={case}", f"output={tmp_path / 'pred'}", f"ckpt={ckpt}")
    assert out.returncode == 0, out.stderr[-3000:]
    ref = nib.load(next(case.glob("*CT_CBF*/*.nii")))
    mask, pseudo = nib.load(tmp_path / "pred" / "case_1.nii.gz"), nib.load(tmp_path / "pred" / "case_1_pseudo-dwi.nii.gz")
    for img in (mask, pseudo):
        assert img.shape == ref.shape and np.array_equal(img.affine, ref.affine)
    assert mask.get_data_dtype() == np.uint8 and pseudo.get_data_dtype() == np.float32
    values = np.asarray(pseudo.dataobj)
    assert values.min() >= 0 and values.max() <= 1
    table = pd.read_csv(tmp_path / "pred" / "metrics.csv")
    assert {"dice", "ssim", "ssim_local"} <= set(table.columns)
    assert (tmp_path / "pred" / "case_1_pseudo-dwi.png").exists()  # the preview is named like the image


def test_chain_predicts_from_raw_ctp_where_the_maps_are_missing(chain_run, tmp_path):
    _, run_dir, _ = chain_run
    root = tmp_path / "isles24"
    generate(root, PhantomConfig(n_cases=1, seed=3, shape=(48, 56, 12)))
    cid = "sub-stroke0001"
    maps_dir = root / "derivatives" / cid / "ses-01" / "perfusion-maps"
    reference = nib.load(next(maps_dir.glob("*_cbf.nii.gz")))
    for path in maps_dir.glob("*.nii.gz"):
        path.unlink()
    out = run("predict.py", f"input={root}", f"output={tmp_path / 'pred'}", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "pred" / "perfusion-maps" / cid).glob("*.nii.gz"))) == 4
    pseudo = nib.load(tmp_path / "pred" / f"{cid}_pseudo-dwi.nii.gz")
    assert pseudo.shape == reference.shape and np.allclose(pseudo.affine, reference.affine)
    assert (tmp_path / "pred" / f"{cid}.nii.gz").exists()

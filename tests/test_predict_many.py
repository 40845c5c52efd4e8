"""predict.py over many cases: a bad case is reported in one line and the others are finished (exit 1,
failed.csv); a re-run skips the finished cases and redoes missing, damaged or differently made outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_case, write_ctp
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from strokelab.entry import register_resolvers
from strokelab.errors import ConfigError
from strokelab.predict import FAILED_FILE, RECORD_FILE, predict, predict_cases

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
IDS = ("sub-stroke0001", "sub-stroke0002", "sub-stroke0003")
BAD, GOOD = IDS[0], IDS[1:]
PAST_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: an mtime no write of this test can produce


def perfusion(root: Path, cid: str, name: str) -> Path:
    return root / "derivatives" / cid / "ses-01" / "perfusion-maps" / f"{cid}_ses-01_space-ncct_{name}.nii.gz"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-300])


@pytest.fixture
def root(tmp_path) -> Path:
    """Three cases; the first one's Tmax map is truncated (its header still reads)."""
    root = tmp_path / "isles"
    for i, cid in enumerate(IDS):
        write_case(root, cid, seed=i)
    truncate(perfusion(root, BAD, "tmax"))
    return root


def config(root: Path, out: Path, *overrides: str):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("predict", overrides=[f"input={root}", f"output={out}", *overrides])


def threshold_run(root: Path, out: Path, *overrides: str, capsys=None) -> tuple[int, str, str]:
    """predict.py model=threshold in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        predict(config(root, out, "model=threshold", *overrides))
    except SystemExit as exc:
        code = int(exc.code)
    captured = capsys.readouterr() if capsys is not None else None
    return code, captured.out if captured else "", captured.err if captured else ""


def age_outputs(out: Path, ids=IDS) -> None:
    """Give the cases' outputs an old mtime, so that a rewrite shows whatever the clock's resolution."""
    for cid in ids:
        for path in out.glob(f"{cid}*.nii.gz"):
            os.utime(path, ns=(PAST_NS, PAST_NS))


def untouched(out: Path, cid: str) -> bool:
    paths = list(out.glob(f"{cid}*.nii.gz"))
    return bool(paths) and all(p.stat().st_mtime_ns == PAST_NS for p in paths)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_bad_first_case_does_not_stop_the_others(root, tmp_path):
    """As a user runs it: one error line for the bad case, the good ones written, exit 1, failed.csv."""
    out = tmp_path / "pred"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "predict.py"),
            f"input={root}",
            f"output={out}",
            "model=threshold",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and f"{BAD}_ses-01_space-ncct_tmax.nii.gz" in lines[0] and "truncated" in lines[0], proc.stderr
    assert f"predicted 2 of 3 case(s) to {out}; 1 failed: {BAD}" in proc.stdout
    for cid in GOOD:
        ref, mask = nib.load(perfusion(root, cid, "cbf")), nib.load(out / f"{cid}.nii.gz")
        assert mask.shape == ref.shape and np.array_equal(mask.affine, ref.affine) and mask.get_data_dtype() == np.uint8
    assert not (out / f"{BAD}.nii.gz").exists() and not list(out.glob(".*tmp*"))
    failed = pd.read_csv(out / FAILED_FILE)
    assert failed.case.tolist() == [BAD] and failed.file[0].endswith("tmax.nii.gz") and "truncated" in failed.problem[0]
    assert pd.read_csv(out / "metrics.csv").case.tolist() == list(GOOD)


def test_a_rerun_skips_finished_cases_retries_the_failed_one_and_overwrite_redoes_all(root, tmp_path, capsys):
    out = tmp_path / "pred"
    assert threshold_run(root, out, capsys=capsys)[0] == 1
    age_outputs(out)

    code, stdout, stderr = threshold_run(root, out, capsys=capsys)
    assert code == 1 and len(error_lines(stderr)) == 1 and BAD in error_lines(stderr)[0]
    assert f"predicted 0 of 3 case(s) to {out}; 2 skipped" in stdout and f"1 failed: {BAD}" in stdout
    assert all(untouched(out, cid) for cid in GOOD)
    assert pd.read_csv(out / "metrics.csv").case.tolist() == list(GOOD)  # the skipped cases' recorded rows
    assert pd.read_csv(out / FAILED_FILE).case.tolist() == [BAD]

    write_case(root, BAD, seed=0)  # the bad file fixed: only that case is predicted
    code, stdout, stderr = threshold_run(root, out, capsys=capsys)
    assert code == 0 and not error_lines(stderr), stderr
    assert f"predicted 1 of 3 case(s) to {out}; 2 skipped" in stdout and "failed" not in stdout
    assert all(untouched(out, cid) for cid in GOOD) and (out / f"{BAD}.nii.gz").exists()
    assert not (out / FAILED_FILE).exists()  # no stale failure list
    table = pd.read_csv(out / "metrics.csv")
    assert table.case.tolist() == list(IDS) and (table.dice > 0.9).all()

    age_outputs(out)
    code, stdout, _ = threshold_run(root, out, "overwrite=true", capsys=capsys)
    assert code == 0 and f"predicted 3 of 3 case(s) to {out}" in stdout and "skipped" not in stdout
    assert not any(untouched(out, cid) for cid in IDS)


@pytest.mark.parametrize("damage", ["truncated", "deleted", "other grid"])
def test_a_damaged_previous_output_is_redone(root, tmp_path, capsys, damage):
    out = tmp_path / "pred"
    threshold_run(root, out, capsys=capsys)
    age_outputs(out)
    mask = out / f"{GOOD[0]}.nii.gz"
    if damage == "truncated":
        truncate(mask)
    elif damage == "deleted":
        mask.unlink()
    else:
        nib.save(nib.Nifti1Image(np.zeros((32, 36, 9), np.uint8), np.eye(4)), mask)
    code, stdout, _ = threshold_run(root, out, capsys=capsys)
    assert code == 1 and f"predicted 1 of 3 case(s) to {out}; 1 skipped" in stdout
    assert untouched(out, GOOD[1]) and not untouched(out, GOOD[0])
    image = nib.load(mask)
    assert image.shape == (32, 36, 10) and np.asarray(image.dataobj).any()  # whole again


def test_outputs_made_with_other_settings_are_redone(root, tmp_path, capsys):
    """A re-run with another threshold rule (or checkpoint, threshold, inference) is no re-run: it predicts again."""
    out = tmp_path / "pred"
    threshold_run(root, out, capsys=capsys)
    age_outputs(out)
    code, stdout, _ = threshold_run(root, out, "model.rule=tmax", capsys=capsys)
    assert code == 1 and f"predicted 2 of 3 case(s) to {out}; 1 failed" in stdout and "skipped" not in stdout
    assert not any(untouched(out, cid) for cid in GOOD)
    code, stdout, _ = threshold_run(root, out, "model.rule=tmax", capsys=capsys)
    assert "2 skipped" in stdout


def test_errors_not_about_a_case_stop_before_any_case(root, tmp_path):
    out = tmp_path / "pred"
    with pytest.raises(InstantiationException) as bad_rule:  # strokelab.entry prints its cause in one line, exit 2
        predict_cases(config(root, out, "model=threshold", "model.rule=bogus"))
    assert isinstance(bad_rule.value.__cause__, ConfigError) and "model.rule" in str(bad_rule.value.__cause__)
    with pytest.raises(ConfigError, match="model.nan_policy"):
        predict_cases(config(root, out, "model=threshold", "model.nan_policy=ignore"))
    assert not out.exists() or not list(out.iterdir())


def test_a_case_that_fails_on_its_lesion_mask_writes_no_output(root, tmp_path, capsys):
    """The outputs are written once a case is predicted and scored: a failed case leaves nothing half-done."""
    label = root / "derivatives" / GOOD[0] / "ses-02" / f"{GOOD[0]}_ses-02_space-ncct_lesion-msk.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 36, 10), 2, np.uint8), nib.load(label).affine), label)
    out = tmp_path / "pred"
    code, stdout, stderr = threshold_run(root, out, capsys=capsys)
    assert code == 1 and f"2 failed: {BAD}, {GOOD[0]}" in stdout
    assert [line.split(":")[1].strip().rsplit("/", 1)[-1] for line in error_lines(stderr)] == [
        f"{BAD}_ses-01_space-ncct_tmax.nii.gz",
        f"{GOOD[0]}_ses-02_space-ncct_lesion-msk.nii.gz",
    ]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{GOOD[1]}.nii.gz"]
    assert pd.read_csv(out / FAILED_FILE).case.tolist() == [BAD, GOOD[0]]


def test_maps_derived_from_the_ctp_are_reused_and_the_case_skipped(tmp_path, capsys):
    root = tmp_path / "isles"
    write_case(root, IDS[0])
    write_ctp(root, IDS[0])
    for name in ("cbf", "cbv", "mtt", "tmax"):
        perfusion(root, IDS[0], name).unlink()
    out = tmp_path / "pred"
    assert threshold_run(root, out, capsys=capsys)[0] == 0
    derived = sorted((out / "perfusion-maps" / IDS[0]).glob("*.nii.gz"))
    assert len(derived) == 4
    for path in derived:  # marked, to see that they are not derived again; still newer than the CTP
        os.utime(path, ns=(PAST_NS + 1, PAST_NS + 1))
    os.utime(root / "derivatives" / IDS[0] / "ses-01" / f"{IDS[0]}_ses-01_space-ncct_ctp.nii.gz", ns=(PAST_NS, PAST_NS))
    age_outputs(out, IDS[:1])
    code, stdout, _ = threshold_run(root, out, capsys=capsys)
    assert code == 0 and "predicted 0 of 1 case(s)" in stdout and "1 skipped" in stdout
    assert untouched(out, IDS[0]) and all(p.stat().st_mtime_ns == PAST_NS + 1 for p in derived)


@pytest.fixture
def two_output_ckpt(tmp_path) -> Path:
    """An (untrained) two-output checkpoint (tests/toy_models.py: a mask and an image), written as train.py
    writes one."""
    from strokelab.train import checkpoint_meta

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["data=isles24", "data.preprocess.spacing=[2,2,5]", "task_name=toy"])
    cfg.model = OmegaConf.create(
        {
            "_target_": "toy_models.ToyChain",
            "_convert_": "all",
            "inputs": ["cbf", "tmax"],
            "spatial_dims": 2,
            "inference": {"patch_size": [16, 16], "batch_size": 4},
        }
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    path = tmp_path / "toy.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"strokelab": checkpoint_meta(cfg, model), "state_dict": state}, path)
    return path


def test_a_checkpoint_case_missing_one_of_its_two_outputs_is_redone(root, tmp_path, two_output_ckpt, single_thread):
    out = tmp_path / "pred"
    run = predict_cases(config(root, out, f"ckpt={two_output_ckpt}"))
    assert run.predicted == list(GOOD) and list(run.failed) == [BAD]
    for cid in GOOD:
        assert (out / f"{cid}.nii.gz").exists() and (out / f"{cid}_feature.nii.gz").exists()
    age_outputs(out)
    (out / f"{GOOD[0]}_feature.nii.gz").unlink()
    run = predict_cases(config(root, out, f"ckpt={two_output_ckpt}"))
    assert run.predicted == [GOOD[0]] and run.skipped == [GOOD[1]] and list(run.failed) == [BAD]
    assert (out / f"{GOOD[0]}_feature.nii.gz").exists() and untouched(out, GOOD[1]) and not untouched(out, GOOD[0])
    assert RECORD_FILE in {p.name for p in out.iterdir()}

    os.utime(two_output_ckpt, ns=(PAST_NS, PAST_NS))  # a retrained (rewritten) checkpoint: every case again
    run = predict_cases(config(root, out, f"ckpt={two_output_ckpt}"))
    assert run.predicted == list(GOOD) and not run.skipped


def test_the_next_case_read_in_the_background_gives_the_same_outputs_and_keeps_its_own_error(
    tmp_path, two_output_ckpt, single_thread, monkeypatch
):
    """predict.py reads case i+1 while the network runs on case i (ModelPredictor.prefetch): the outputs are those
    of reading each case in its turn, and a damaged file of a prefetched case fails that case alone."""
    from strokelab.inference import ModelPredictor

    root = tmp_path / "isles"
    for i, cid in enumerate(IDS):
        write_case(root, cid, seed=i)
    truncate(perfusion(root, IDS[1], "cbf"))  # the middle case: read in the background while the first is predicted
    started = []
    original = ModelPredictor._start_queued
    monkeypatch.setattr(ModelPredictor, "_start_queued", lambda self, key: started.append(self._queued) or original(self, key))
    run = predict_cases(config(root, tmp_path / "prefetched", f"ckpt={two_output_ckpt}"))
    assert [c.id for c in started if c is not None] == [IDS[1], IDS[2]]  # each read while its predecessor was predicted
    assert run.predicted == [IDS[0], IDS[2]] and list(run.failed) == [IDS[1]]
    assert str(run.failed[IDS[1]].where).endswith("cbf.nii.gz") and "truncated" in run.failed[IDS[1]].problem

    monkeypatch.setattr(ModelPredictor, "prefetch", lambda self, case: None)  # each case read in its turn
    plain = predict_cases(config(root, tmp_path / "plain", f"ckpt={two_output_ckpt}"))
    assert plain.predicted == run.predicted and list(plain.failed) == list(run.failed)
    for cid in run.predicted:
        for name in (f"{cid}.nii.gz", f"{cid}_feature.nii.gz"):
            a = np.asarray(nib.load(tmp_path / "prefetched" / name).dataobj)
            assert np.array_equal(a, np.asarray(nib.load(tmp_path / "plain" / name).dataobj)), name

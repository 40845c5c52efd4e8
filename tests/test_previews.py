"""The TUM project's two figures as features (shared/seeds/000): the preprocessing preview (Fig. 3.1: original |
normalised | difference and both histograms per input, from the data module's own preprocessing) and the
test-time case preview (Fig. 4.1: input | prediction | label with both contours, beside metrics.csv)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL, write_case
from matplotlib.image import imread

from strokelab.data.layouts import discover
from strokelab.data.preprocess import Preprocessing, Serve, load_or_preprocess
from strokelab.data.preview_preprocessing import compose_config, main, preview_rows
from strokelab.evaluation import evaluate_case
from strokelab.tasks.threshold import ThresholdBaseline

REAL_22 = REAL / "isles22"
SMALL = ["data=isles24", "data.preprocess.spacing=[2,2,5]"]


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "isles"
    for i in range(2):
        write_case(root, f"sub-stroke{i + 1:04d}", seed=i)
    return root


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_the_preview_shows_what_the_data_module_serves_and_the_original_on_the_same_grid(root):
    cfg = compose_config(SMALL)
    prep = Preprocessing.from_config(cfg.data.preprocess)
    inputs = list(cfg.model.inputs)
    (case,) = discover(root, inputs, ids=["sub-stroke0002"])
    rows, z = preview_rows(case, prep, inputs)
    served = load_or_preprocess(case, prep, None, Serve.make(inputs, ("label",)))
    label = served["images"]["label"][0].numpy()
    assert z == int(np.argmax(label.sum(axis=(0, 1))))  # the slice with the most lesion
    assert [r["name"] for r in rows] == inputs == ["cbf", "cbv", "mtt", "tmax"]
    for row, m in zip(rows, inputs):
        np.testing.assert_array_equal(row["normalised_values"], served["images"][m].numpy())  # what the network sees
        original, normalised = row["original_values"][0], row["normalised_values"][0]
        head = normalised != 0
        stats = served["stats"][m]  # z-score over the head: the original is the same voxels before it
        np.testing.assert_allclose((original[head] - stats["mean"]) / stats["std"], normalised[head], atol=1e-4)


def test_the_command_writes_one_row_per_input_and_names_a_missing_case_in_one_line(root, tmp_path, capsys):
    out = tmp_path / "fig" / "case.png"
    assert main([str(root), "--case", "sub-stroke0001", "--out", str(out), *SMALL, "data.modalities=[cbf,tmax]"]) == 0
    image = imread(out)
    assert image.shape[1] > 1000 and 350 < image.shape[0] < 800  # 5 panels wide, 2 input rows high
    assert main([str(root), "--case", "sub-stroke0042", "--out", str(out), *SMALL]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: {root}: has no case 'sub-stroke0042'") and "sub-stroke0001" in line
    assert main([str(root), "data.preprocess.zscore_regon=all"]) == 2
    (line,) = error_lines(capsys)
    assert "data.preprocess.zscore_regon" in line and "zscore_region" in line


@pytest.mark.skipif(not REAL_22.exists(), reason="the real sample files are not here")
def test_the_preview_runs_on_a_real_isles22_dwi_and_adc(tmp_path):
    """The real ISLES'22 case (MR: DWI, ADC and its lesion mask, 112x112x73 at 2 mm) read as ISLES'24's
    later-release DWI/ADC files: z-scored as inputs like any MR image."""
    case = tmp_path / "isles" / "derivatives" / "sub-stroke0009" / "ses-02"
    case.mkdir(parents=True)
    raw = REAL_22 / "rawdata" / "sub-strokecase0009" / "ses-0001"
    masks = REAL_22 / "derivatives" / "sub-strokecase0009" / "ses-0001"
    for m in ("dwi", "adc"):
        shutil.copy(raw / f"sub-strokecase0009_ses-0001_{m}.nii.gz", case / f"sub-stroke0009_ses-02_space-ncct_{m}.nii.gz")
    shutil.copy(masks / "sub-strokecase0009_ses-0001_msk.nii.gz", case / "sub-stroke0009_ses-02_lesion-msk.nii.gz")
    cfg = compose_config(["data=isles24", "data.modalities=[dwi,adc]"])
    prep = Preprocessing.from_config(cfg.data.preprocess)
    (found,) = discover(tmp_path / "isles", ["dwi", "adc"])
    rows, z = preview_rows(found, prep, ["dwi", "adc"])
    served = load_or_preprocess(found, prep, None, Serve.make(["dwi", "adc"], ("label",)))
    assert served["images"]["label"][0, :, :, z].any()  # the 4 ml lesion is on the slice shown
    for row in rows:
        head = row["normalised_values"] != 0
        assert abs(row["normalised_values"][head].mean()) < 1e-3 and abs(row["normalised_values"][head].std() - 1) < 1e-3
    out = tmp_path / "real.png"
    assert main([str(case.parent), "--out", str(out), "data=isles24", "data.modalities=[dwi,adc]"]) == 0
    assert imread(out).shape[1] > 1000


def test_a_scored_mask_gets_an_input_prediction_label_png_with_both_contours(root, tmp_path):
    """evaluate_case (the test stage of train.py and predict.py) draws it when asked for previews."""
    (case,) = discover(root, ["cbf", "tmax"], ids=["sub-stroke0001"])
    baseline = ThresholdBaseline(rule="tmax", tmax_s=0.5)  # the whole brain: a contour apart from the label's
    score = evaluate_case(baseline, case, tmp_path / "a")
    image = imread(tmp_path / "a" / "sub-stroke0001.png")[..., :3]
    assert score is not None and image.shape[1] > 3 * image.shape[0]  # four panels in a row
    red = (image[..., 0] > 0.8) & (image[..., 1] < 0.3) & (image[..., 2] < 0.3)
    green = (image[..., 1] > 0.8) & (image[..., 0] < 0.3) & (image[..., 2] < 0.3)
    assert red.sum() > 20 and green.sum() > 20  # the prediction and label contours on the input
    evaluate_case(baseline, case, tmp_path / "b", previews=False)
    assert (tmp_path / "b" / "sub-stroke0001.nii.gz").exists() and not list((tmp_path / "b").glob("*.png"))

"""Properties of strokelab.report: statistics against hand-computed values, files a user reads."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from strokelab.errors import DataError
from strokelab.metrics import METRIC_COLUMNS, case_metrics
from strokelab.report import (
    LESION_BIN_LABELS,
    STAT_COLUMNS,
    _volumes,  # private: the plots' volume derivation
    comparison_table,
    lesion_size_bin,
    summarize,
    summarize_by,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table(n: int = 8, seed: int = 0, **overrides) -> pd.DataFrame:
    """A per-case table shaped like a run's output (one case_metrics dict per row + extras)."""
    rng = np.random.default_rng(seed)
    lesion_ml = np.linspace(0.0, 120.0, n)
    df = pd.DataFrame(
        {
            "case": [f"sub-stroke{i:04d}" for i in range(n)],
            "fold": np.arange(n) % 2,
            "centre": ["A", "B", "C", "A", "B", "C", "A", "B"][:n] if n <= 8 else rng.choice(["A", "B"], n),
            "lesion_ml": lesion_ml,
            **{m: rng.random(n) for m in METRIC_COLUMNS},
        }
    )
    for key, value in overrides.items():
        df[key] = value
    return df


# -------------------------------------------------------------------------------------- summarize


def test_summarize_matches_hand_computed_statistics_and_counts_nan():
    df = table(4, dice=[1.0, 0.5, np.nan, 0.0], hd95_mm=[np.nan] * 4)
    s = summarize(df).set_index("metric")
    assert list(s.index) == list(METRIC_COLUMNS)
    assert list(s.columns) == list(STAT_COLUMNS)
    dice = s.loc["dice"]
    assert dice["mean"] == pytest.approx(0.5)
    assert dice["std"] == pytest.approx(0.5)  # sample std of (1, 0.5, 0)
    assert dice["median"] == pytest.approx(0.5)
    assert dice["q25"] == pytest.approx(0.25) and dice["q75"] == pytest.approx(0.75)
    assert (dice["n"], dice["n_nan"]) == (3, 1)
    hd = s.loc["hd95_mm"]
    assert (hd["n"], hd["n_nan"]) == (0, 4) and math.isnan(hd["mean"])


def test_summarize_uses_only_metric_columns_present_and_rejects_bad_tables():
    df = table(3)[["case", "dice", "avd_ml"]]
    assert list(summarize(df)["metric"]) == ["dice", "avd_ml"]
    with pytest.raises(DataError, match="`case`"):
        summarize(df.drop(columns="case"))
    with pytest.raises(DataError, match="none of the metric columns"):
        summarize(df[["case"]])
    with pytest.raises(DataError, match="not numeric"):
        summarize(df.assign(dice=["a", "b", "c"]))


def test_summarize_by_fold_equals_summarize_of_each_fold():
    df = table(8)
    by = summarize_by(df, "fold")
    assert list(by.columns) == ["fold", "metric", *STAT_COLUMNS]
    for fold in (0, 1):
        expected = summarize(df[df["fold"] == fold]).reset_index(drop=True)
        got = by[by["fold"] == fold].drop(columns="fold").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)
    with pytest.raises(DataError, match="no column `scanner`"):
        summarize_by(df, "scanner")


def test_lesion_size_bins_are_left_closed_and_all_listed():
    assert [lesion_size_bin(v) for v in (0.0, 4.99, 5.0, 19.9, 20.0, 69.9, 70.0, 300.0)] == [
        "<5 ml",
        "<5 ml",
        "5-20 ml",
        "5-20 ml",
        "20-70 ml",
        "20-70 ml",
        ">=70 ml",
        ">=70 ml",
    ]
    assert lesion_size_bin(float("nan")) is None
    df = table(4, lesion_ml=[1.0, 2.0, 5.0, 80.0], dice=[0.2, 0.4, 0.6, 0.9])
    by = summarize_by(df, "lesion_size")
    dice = by[by["metric"] == "dice"].set_index("lesion_size")
    assert list(dice.index) == list(LESION_BIN_LABELS)
    assert dice.loc["<5 ml", "mean"] == pytest.approx(0.3) and dice.loc["<5 ml", "n"] == 2
    assert dice.loc["5-20 ml", "n"] == 1 and dice.loc["20-70 ml", "n"] == 0
    assert dice.loc[">=70 ml", "mean"] == pytest.approx(0.9)
    with pytest.raises(DataError, match="lesion_ml"):
        summarize_by(df.drop(columns="lesion_ml"), "lesion_size")


# ------------------------------------------------------------------------------------ write_report


def test_write_report_writes_readable_files_atomically(tmp_path):
    df = table(8)
    out = tmp_path / "report"
    paths = write_report(df, out, title="fold 0 run")
    assert set(paths) == {"summary_csv", "summary_md", "volume_scatter", "dice_vs_volume"}
    assert all(p.parent == out and p.exists() for p in paths.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temp files

    csv = pd.read_csv(paths["summary_csv"])
    overall = csv[csv["by"] == "all"].drop(columns=["by", "group"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(overall, summarize(df), check_dtype=False)
    assert set(csv["by"]) == {"all", "fold", "centre", "lesion_size"}

    md = paths["summary_md"].read_text()
    assert md.startswith("# fold 0 run")
    assert "## By fold" in md and "## By lesion size" in md
    mean_dice = f"{df['dice'].mean():.3f}"
    assert any(line.startswith("| dice ") and mean_dice in line for line in md.splitlines())
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    widths = {len(line) for line in table_lines[: 2 + len(METRIC_COLUMNS)]}
    assert len(widths) == 1  # fixed-width columns: aligned in a terminal

    for key in ("volume_scatter", "dice_vs_volume"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
        height, width = matplotlib.image.imread(paths[key]).shape[:2]
        assert height >= 400 and width >= 500

    # Writing again replaces the files in place.
    again = write_report(df.assign(dice=0.25), out, title="rerun")
    assert again["summary_md"].read_text().startswith("# rerun")
    assert len(list(out.iterdir())) == 4


def test_write_report_without_lesion_volume_writes_tables_only(tmp_path):
    paths = write_report(table(3).drop(columns=["lesion_ml", "fold", "centre"]), tmp_path)
    assert set(paths) == {"summary_csv", "summary_md"}
    with pytest.raises(DataError, match="no rows"):
        write_report(table(3).iloc[:0], tmp_path)


def test_plots_recover_predicted_volume_from_rve_and_avd():
    label_ml = np.array([0.0, 10.0, 50.0])
    pred_ml = np.array([3.0, 12.5, 20.0])
    df = table(
        3,
        lesion_ml=label_ml,
        avd_ml=np.abs(pred_ml - label_ml),
        rve=np.where(label_ml > 0, (pred_ml - label_ml) / np.where(label_ml > 0, label_ml, 1), np.nan),
    )
    true_out, pred_out = _volumes(df)
    np.testing.assert_allclose(true_out, label_ml)
    np.testing.assert_allclose(pred_out, pred_ml)


# ------------------------------------------------------------------------------- comparison_table


def test_comparison_table_shows_mean_and_std_per_model():
    trained = table(4, dice=[0.6, 0.8, 0.7, 0.9])
    baseline = table(4, dice=[0.1, 0.3, np.nan, 0.2]).drop(columns="hd95_mm")
    text = comparison_table({"trained model": trained, "threshold baseline": baseline})
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[0].split("|")[1].strip() == "model"
    trained_line = next(line for line in lines if "trained model" in line)
    baseline_line = next(line for line in lines if "threshold baseline" in line)
    assert "0.750 ± 0.129" in trained_line  # mean 0.75, sample std 0.1291
    assert "0.200 ± 0.100 (1 nan)" in baseline_line
    assert baseline_line.rstrip(" |").endswith("n/a")  # no hd95_mm column for the baseline
    with pytest.raises(DataError, match="unknown metric"):
        comparison_table({"a": trained}, metrics=("dice", "accuracy"))
    with pytest.raises(DataError, match="no models"):
        comparison_table({})


# ----------------------------------------------------------------------------------- end to end


def test_report_from_case_metrics_output(tmp_path):
    shape, spacing = (40, 40, 12), (0.5, 0.5, 2.0)
    rows = []
    for i, (size, shift) in enumerate([(4, 0), (8, 1), (12, 2), (16, 0)]):
        label = np.zeros(shape, bool)
        label[10 : 10 + size, 10 : 10 + size, 2:8] = True
        pred = np.roll(label, shift, axis=0)
        lesion_ml = label.sum() * np.prod(spacing) / 1000
        rows.append({"case": f"c{i}", "lesion_ml": lesion_ml, **case_metrics(pred, label, spacing)})
    df = pd.DataFrame(rows)
    paths = write_report(df, tmp_path, title="synthetic")
    s = summarize(df).set_index("metric")
    assert s.loc["avd_ml", "mean"] == pytest.approx(0.0)
    assert s.loc["dice", "n"] == 4
    _, pred_ml = _volumes(df)
    np.testing.assert_allclose(pred_ml, df["lesion_ml"])  # shifts keep the volume
    assert paths["volume_scatter"].read_bytes()[:8] == PNG_MAGIC

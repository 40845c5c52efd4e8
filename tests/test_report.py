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
    WANG_STRATA_LABELS,
    _volumes,  # private: the plots' volume derivation
    comparison_table,
    lesion_size_bin,
    main,
    paper_table,
    strata_table,
    summarize,
    summarize_by,
    wang_stratum,
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


# ------------------------------------------------------------------------- Wang et al. layout


def wang_models() -> dict[str, pd.DataFrame]:
    """Two small models whose statistics are easy to compute by hand (see the comments)."""
    a = pd.DataFrame(
        {
            "case": ["a1", "a2", "a3"],
            "precision": [0.5, 0.6, 0.7],  # 60.00 ± 10.00 %
            "recall": [0.8, 0.8, 0.8],  # 80.00 ± 0.00 %
            "dice": [0.4, 0.5, 0.9],  # mean 0.6, sd sqrt(0.14 / 2) = 0.2646 -> 60.00 ± 26.46 %
            "hd95_mm": [10.0, 20.0, 30.0],  # 20.00 ± 10.00
            "assd_mm": [1.0, 2.0, np.nan],  # 1.50 ± 0.71, one NaN left out
            "rve": [-0.5, 0.5, 1.0],  # |rve| 0.5, 0.5, 1.0: 0.67 ± 0.29 (signed it would be 0.33)
            "lesion_ml": [5.0, 10.0, 60.0],
            "params_m": [31.04, 31.04, 31.04],
        }
    )
    b = pd.DataFrame(
        {
            "case": ["b1", "b2"],
            "precision": [0.2, 0.4],  # 30.00 ± 14.14
            "recall": [1.0, 0.5],  # 75.00 ± 35.36
            "dice": [0.3, 0.5],  # 40.00 ± 14.14
            "hd95_mm": [5.0, 7.0],  # 6.00 ± 1.41
            "assd_mm": [0.5, 1.5],  # 1.00 ± 0.71
            "rve": [-0.2, -0.4],  # 0.30 ± 0.14
            "lesion_ml": [50.0, 50.5],
        }
    )
    return {"UNet": a, "SLNet": b}


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_paper_table_prints_wang_columns_as_percent_and_mm():
    lines = paper_table(wang_models()).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # aligned
    assert cells(lines[0]) == ["Model", "Params (M)", "Precision (%)", "Recall (%)", "Dice (%)", "HD95 (mm)", "ASSD (mm)"]
    assert cells(lines[2]) == ["UNet", "31.04", "60.00±10.00", "80.00±0.00", "60.00±26.46", "20.00±10.00", "1.50±0.71 (1 nan)"]
    assert cells(lines[3]) == ["SLNet", "n/a", "30.00±14.14", "75.00±35.36", "40.00±14.14", "6.00±1.41", "1.00±0.71"]


def test_paper_table_params_column_only_with_params_and_rve_is_absolute():
    models = wang_models()
    models["UNet"] = models["UNet"].drop(columns="params_m")
    header = cells(paper_table(models).splitlines()[0])
    assert "Params (M)" not in header and header[1] == "Precision (%)"
    lines = paper_table(wang_models(), columns=["dice", "rve"]).splitlines()
    assert cells(lines[0]) == ["Model", "Dice (%)", "RVE"]
    assert cells(lines[2]) == ["UNet", "60.00±26.46", "0.67±0.29"]  # mean |rve|, not the signed 0.33
    assert cells(lines[3]) == ["SLNet", "40.00±14.14", "0.30±0.14"]


def test_paper_table_row_order_and_errors():
    models = wang_models()
    assert [cells(line)[0] for line in paper_table(models).splitlines()[2:]] == ["UNet", "SLNet"]
    assert [cells(line)[0] for line in paper_table(models, order=["SLNet"]).splitlines()[2:]] == ["SLNet", "UNet"]
    with pytest.raises(DataError, match="unknown model"):
        paper_table(models, order=["SLNet", "FCN"])
    with pytest.raises(DataError, match="unknown layout"):
        paper_table(models, layout="isles")
    with pytest.raises(DataError, match="unknown column"):
        paper_table(models, columns=["dice", "hd_mm"])
    with pytest.raises(DataError, match="params_m"):
        paper_table({"UNet": models["UNet"].assign(params_m=[31.04, 31.04, 33.84])})
    with pytest.raises(DataError, match="no models"):
        paper_table({})


def test_wang_strata_put_10_and_50_ml_in_the_middle():
    assert [wang_stratum(v) for v in (0.0, 9.99, 10.0, 50.0, 50.01, 300.0)] == [
        "<10 ml",
        "<10 ml",
        "10-50 ml",
        "10-50 ml",
        ">50 ml",
        ">50 ml",
    ]
    assert wang_stratum(float("nan")) is None
    assert lesion_size_bin(10.0) == "5-20 ml"  # the default bins of summarize_by are unchanged


def test_strata_table_gives_dice_per_wang_stratum():
    lines = strata_table(wang_models(), "wang").splitlines()
    assert lines[0] == "Dice (%) by true lesion volume"
    table = lines[2:]
    # UNet: 5 ml -> <10, 10 ml -> 10-50, 60 ml -> >50; SLNet: 50 ml -> 10-50, 50.5 ml -> >50.
    assert cells(table[0]) == ["Model", *(f"{label} (n=1)" for label in WANG_STRATA_LABELS)]
    assert cells(table[2]) == ["UNet", "40.00±nan", "50.00±nan", "90.00±nan"]
    assert cells(table[3]) == ["SLNet", "n/a (n=0)", "30.00±nan", "50.00±nan"]
    pooled = {"all": pd.concat(wang_models().values(), ignore_index=True)}
    row = cells(strata_table(pooled, "wang").splitlines()[4])
    assert row == ["all", "40.00±nan", "40.00±14.14", "70.00±28.28"]  # (0.5, 0.3) and (0.9, 0.5)
    default = strata_table(pooled, "default").splitlines()[2]
    assert cells(default)[1:] == [f"{label} (n={n})" for label, n in zip(LESION_BIN_LABELS, (0, 2, 3, 0))]  # 5, 10 | 60, 50, 50.5
    with pytest.raises(DataError, match="lesion_ml"):
        strata_table({"x": wang_models()["UNet"].drop(columns="lesion_ml")})
    with pytest.raises(DataError, match="unknown strata"):
        strata_table(wang_models(), "tertiles")


def test_report_cli_prints_the_wang_layout_in_run_order(tmp_path, capsys):
    models = wang_models()
    # Run folders sorted by name: fold0 holds UNet's first cases, fold1 the rest and SLNet.
    for folder, model, frame in (
        ("fold0", "UNet", models["UNet"].iloc[:2]),
        ("fold1", "UNet", models["UNet"].iloc[2:]),
        ("fold1", "SLNet", models["SLNet"]),
    ):
        path = tmp_path / folder / "test" / model / "metrics.csv"
        path.parent.mkdir(parents=True)
        frame.to_csv(path, index=False)
    assert main([str(tmp_path), "--layout", "wang", "--columns", "dice,rve", "--strata", "wang"]) == 0
    out = capsys.readouterr().out
    rows = [cells(line) for line in out.splitlines() if line.startswith("| UNet") or line.startswith("| SLNet")]
    assert rows[:2] == [["UNet", "60.00±26.46", "0.67±0.29"], ["SLNet", "40.00±14.14", "0.30±0.14"]]  # all folds pooled
    assert "Dice (%) by true lesion volume" in out and "RVE by true lesion volume" in out
    assert (tmp_path / "summary" / "UNet" / "summary.md").exists()

    assert main([str(tmp_path), "--layout", "wang", "--order", "SLNet,UNet"]) == 0
    out = capsys.readouterr().out
    names = [cells(line)[0] for line in out.splitlines() if line.startswith("| UNet") or line.startswith("| SLNet")]
    assert names == ["SLNet", "UNet"] and "Params (M)" in out

    assert main([str(tmp_path), "--layout", "wang", "--order", "FCN"]) == 2
    assert "unknown model" in capsys.readouterr().err


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


def test_paired_table_gives_the_mean_paired_difference_its_interval_and_wins():
    from strokelab.report import paired_table

    ref = pd.DataFrame({"case": ["a", "b", "c"], "fold": [0, 0, 1], "dice": [0.5, 0.6, 0.7]})
    other = pd.DataFrame({"case": ["c", "b", "a"], "fold": [1, 0, 0], "dice": [0.9, 0.6, 0.4]})  # any row order
    baseline = pd.concat([other, other])  # the same predictions tested in two runs count once
    text = paired_table({"ref": ref, "other": other, "baseline": baseline}, "ref")
    row = next(line for line in text.splitlines() if line.startswith("| other"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and cells[2] == "-3.33" and cells[4] == "1/3"  # diffs +10, 0, -20 points
    low, high = (float(v) for v in cells[3].strip("[]").split(","))
    assert -20.0 <= low <= -3.33 <= high <= 10.0
    assert "| baseline" in text
    with pytest.raises(DataError, match="several times"):
        paired_table({"ref": ref, "twice": pd.concat([other, other.assign(dice=[0.1, 0.2, 0.3])])}, "ref")

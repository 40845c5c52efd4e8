"""Tables and figures from a run's per-case metrics.

Input everywhere is a per-case table (``pandas.DataFrame``) with one row per case: a ``case``
column plus the columns of :data:`strokelab.metrics.METRIC_COLUMNS` (as returned by
:func:`strokelab.metrics.case_metrics`) or, for a regression run, of
:data:`strokelab.metrics.REGRESSION_COLUMNS`, and optionally

* ``fold``, ``centre``: groupings for :func:`summarize_by`;
* ``lesion_ml``: true lesion volume in ml (binned by :func:`summarize_by` with
  ``by="lesion_size"``, and the x axis of the plots);
* ``pred_ml``: predicted lesion volume in ml (if absent, the plots derive it from
  ``lesion_ml`` and ``rve`` / ``avd_ml``);
* ``model``: the model's name, when one table holds several models;
* ``params_m``: the model's number of trainable parameters in millions (the same on every row
  of a model), shown by :func:`paper_table`.

:func:`paper_table` prints several models in the layout of Wang et al. 2020 (Tables 3-5, the
ISLES'18 winner, ``shared/seeds``) and :func:`strata_table` their Dice by lesion-size stratum
(Fig. 10); ``python -m strokelab.report RUN_DIR --layout wang [--strata wang]`` prints both.

NaN metric values (the documented "undefined" cases of ``case_metrics``, e.g. ``hd95_mm`` when
exactly one mask is empty) are left out of every statistic and counted in ``n_nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from strokelab.errors import DataError
from strokelab.io import atomic_path, atomic_write_text
from strokelab.metrics import METRIC_COLUMNS as SEGMENTATION_COLUMNS
from strokelab.metrics import REGRESSION_COLUMNS, SYNTHESIS_COLUMNS

# A table holds segmentation metrics, map-regression metrics, or (a synthesis chain) both kinds of its outputs.
METRIC_COLUMNS = SEGMENTATION_COLUMNS + REGRESSION_COLUMNS + tuple(c for c in SYNTHESIS_COLUMNS if c not in REGRESSION_COLUMNS)

STAT_COLUMNS: tuple[str, ...] = ("mean", "std", "median", "q25", "q75", "n", "n_nan")
"""Statistic columns of :func:`summarize` (``std`` is the sample std, ddof=1)."""

LESION_BIN_EDGES_ML: tuple[float, ...] = (5.0, 20.0, 70.0)
"""Edges (ml) of the true-lesion-volume bins: ``[0, 5)``, ``[5, 20)``, ``[20, 70)``, ``[70, inf)``."""

LESION_BIN_LABELS: tuple[str, ...] = ("<5 ml", "5-20 ml", "20-70 ml", ">=70 ml")
"""Labels of the lesion-volume bins, in order."""

WANG_STRATA_LABELS: tuple[str, ...] = ("<10 ml", "10-50 ml", ">50 ml")
"""Lesion-size strata of Wang et al. 2020 (Section 4.4, Fig. 10): ``< 10``, ``10 - 50`` and ``> 50`` ml
(cc); 10 and 50 ml themselves fall in the middle stratum, as the paper's ``<`` and ``>`` say."""

STRATA: tuple[str, ...] = ("wang", "default")
"""Names accepted by :func:`strata_table`: Wang's three strata, or the 5/20/70 ml bins of :func:`summarize_by`."""

PAPER_LAYOUTS: tuple[str, ...] = ("wang", "wang_synthesis")
"""Layouts of :func:`paper_table`: ``wang`` (segmentation, Tables 3-5), ``wang_synthesis`` (Tables 1-2)."""

WANG_COLUMNS: tuple[str, ...] = ("params_m", "precision", "recall", "dice", "hd95_mm", "assd_mm")
"""Default columns of :func:`paper_table` (Wang et al. Tables 3 and 4; ``params_m`` only when a table has it).
Add ``rve`` for Table 5."""

WANG_SYNTHESIS_COLUMNS: tuple[str, ...] = ("ssim", "psnr", "ssim_local", "psnr_local", "dice")
"""Default columns of the ``wang_synthesis`` layout (Wang et al. Tables 1 and 2: pseudo-DWI quality globally
and around the lesion, :func:`strokelab.metrics.synthesis_metrics`, and the Dice of the segmentation)."""

_PAPER_HEADERS = {
    "params_m": "Params (M)",
    "precision": "Precision (%)",
    "recall": "Recall (%)",
    "dice": "Dice (%)",
    "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)",
    "rve": "RVE",
    "ssim": "SSIM (global)",
    "psnr": "PSNR (dB, global)",
    "ssim_local": "SSIM (local)",
    "psnr_local": "PSNR (dB, local)",
}
_PERCENT = ("precision", "recall", "dice")

LESION_SIZE = "lesion_size"
"""Value of ``by`` in :func:`summarize_by` that groups by binned ``lesion_ml``."""

_GROUP_COLUMNS = ("model", "fold", "centre", LESION_SIZE)

# Decimals used when printing each metric (fractions with 3, physical quantities with 2).
_DECIMALS = {
    "dice": 3,
    "precision": 3,
    "recall": 3,
    "lesion_f1": 3,
    "rve": 3,
    "avd_ml": 2,
    "lesion_count_diff": 2,
    "hd95_mm": 2,
    "assd_mm": 2,
    "mse": 3,
    "mae": 3,
    "ssim": 3,
    "psnr": 2,
}


# ---------------------------------------------------------------------------------------- summaries


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Summary statistics of every metric column present in ``df``.

    Returns:
        A tidy table with one row per metric (in :data:`METRIC_COLUMNS` order) and columns
        ``metric, mean, std, median, q25, q75, n, n_nan``. ``n`` counts the cases with a value,
        ``n_nan`` those without (NaN); all statistics are over the ``n`` values (``std`` with
        ddof=1, quartiles with linear interpolation). A metric with no values has NaN statistics.

    Raises:
        DataError: ``df`` has no ``case`` column, none of the metric columns, or a metric
            column that is not numeric.
    """
    metrics = _metric_columns(df)
    rows = []
    for metric in metrics:
        values = pd.to_numeric(df[metric], errors="coerce").astype(float)
        rows.append({"metric": metric, **_stats(values)})
    return pd.DataFrame(rows, columns=["metric", *STAT_COLUMNS])


def summarize_by(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """:func:`summarize` within each group of ``df[by]``.

    ``by`` is a column name (``"fold"``, ``"centre"``, ``"model"``, ...) or ``"lesion_size"``,
    which bins the true lesion volume ``lesion_ml`` into ``<5``, ``5-20``, ``20-70`` and
    ``>=70`` ml (left-closed: 5.0 ml falls in ``5-20 ml``; a case without lesion, 0 ml, in
    ``<5 ml``). All four size bins are always listed, empty ones with ``n = 0``.

    Returns:
        A tidy table with columns ``by, metric, mean, std, median, q25, q75, n, n_nan``,
        groups in sorted order (size bins from small to large), metrics in
        :data:`METRIC_COLUMNS` order within each group. Rows whose group value is missing form
        a group named ``"(missing)"``.

    Raises:
        DataError: the grouping column (or ``lesion_ml`` for ``"lesion_size"``) is missing, or
            as :func:`summarize`.
    """
    metrics = _metric_columns(df)
    groups = _group_labels(df, by)
    if by == LESION_SIZE:
        order = list(LESION_BIN_LABELS)
        if groups.isna().any():
            order.append("(missing)")
    else:
        present = groups.dropna().unique().tolist()
        try:
            order = sorted(present)
        except TypeError:
            order = sorted(present, key=str)
        if groups.isna().any():
            order.append("(missing)")
    groups = groups.astype(object).where(groups.notna(), "(missing)")
    parts = []
    for group in order:
        summary = summarize(df.loc[groups == group, ["case", *metrics]])
        summary.insert(0, by, group)
        parts.append(summary)
    return pd.concat(parts, ignore_index=True)


def lesion_size_bin(volume_ml: float) -> str | None:
    """Label of the lesion-volume bin of ``volume_ml`` (see :data:`LESION_BIN_EDGES_ML`); None if NaN."""
    if volume_ml is None or not np.isfinite(volume_ml):
        return None
    return LESION_BIN_LABELS[int(np.searchsorted(LESION_BIN_EDGES_ML, float(volume_ml), side="right"))]


# ------------------------------------------------------------------------------------------ output


def write_report(df: pd.DataFrame, out_dir: Path, title: str = "") -> dict[str, Path]:
    """Write the run report for a per-case metrics table into ``out_dir`` (created if needed).

    Files:
        * ``summary.csv``: tidy statistics, columns ``by, group, metric, mean, std, median,
          q25, q75, n, n_nan``. Rows with ``by == "all"`` summarise all cases; further rows
          summarise each group of every grouping present (``model``, ``fold``, ``centre``, and
          ``lesion_size`` when ``lesion_ml`` is present).
        * ``summary.md``: the same as fixed-width markdown tables (readable in a terminal),
          headed by ``title``.
        * ``volume_scatter.png`` (needs ``lesion_ml``): predicted vs true lesion volume with
          the identity line.
        * ``dice_vs_volume.png`` (needs ``lesion_ml``): Dice vs true lesion volume
          (symmetric-log x axis, linear below 1 ml, so 0 ml cases are shown).

    Each file is written to a temporary name in ``out_dir`` and moved into place with
    ``os.replace``, so a reader never sees a half-written file.

    Returns:
        ``{"summary_csv", "summary_md"[, "volume_scatter", "dice_vs_volume"]}`` -> path.

    Raises:
        DataError: ``df`` has no rows, or as :func:`summarize`.
    """
    _metric_columns(df)
    if len(df) == 0:
        raise DataError("write_report", "the per-case metrics table has no rows", "evaluate at least one case")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    overall = summarize(df)
    tables: list[tuple[str, pd.DataFrame]] = [("all", overall)]
    for by in _GROUP_COLUMNS:
        if (by == LESION_SIZE and "lesion_ml" in df.columns) or (by != LESION_SIZE and by in df.columns):
            tables.append((by, summarize_by(df, by)))

    long_parts = []
    for by, table in tables:
        t = table.copy()
        if by == "all":
            t.insert(0, "group", "all")
        else:
            t = t.rename(columns={by: "group"})
        t.insert(0, "by", by)
        long_parts.append(t)
    summary_long = pd.concat(long_parts, ignore_index=True)

    paths: dict[str, Path] = {}
    paths["summary_csv"] = _atomic_write_text(out_dir / "summary.csv", summary_long.to_csv(index=False))
    paths["summary_md"] = _atomic_write_text(out_dir / "summary.md", _summary_markdown(df, tables, title))

    if "lesion_ml" in df.columns:
        paths["volume_scatter"] = _plot_volume_scatter(df, out_dir / "volume_scatter.png", title)
        paths["dice_vs_volume"] = _plot_dice_vs_volume(df, out_dir / "dice_vs_volume.png", title)
    return paths


def comparison_table(
    named: Mapping[str, pd.DataFrame], metrics: Sequence[str] = ("dice", "lesion_f1", "avd_ml", "hd95_mm")
) -> str:
    """A fixed-width markdown table comparing models: one row per model, ``mean ± std`` per metric.

    Args:
        named: model name -> its per-case metrics table (e.g. ``{"trained model": df_a,
            "threshold baseline": df_b}``); rows keep the mapping's order.
        metrics: metric columns to show.

    Returns:
        The table as a string (header, separator, one line per model), e.g.::

            | model              | n  | dice          | lesion_f1     | ...
            |--------------------|----|---------------|---------------| ...
            | trained model      | 20 | 0.512 ± 0.210 | 0.430 ± 0.190 | ...

        ``n`` is the number of cases; a cell gets `` (k nan)`` appended when ``k`` cases have no
        value for that metric, and is ``n/a`` when the table lacks the column.

    Raises:
        DataError: ``named`` is empty or ``metrics`` names an unknown metric.
    """
    if not named:
        raise DataError("comparison_table", "no models to compare")
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRIC_COLUMNS]
    if unknown:
        raise DataError("comparison_table", f"unknown metric(s) {unknown}", f"choose from {list(METRIC_COLUMNS)}")
    header = ["model", "n", *metrics]
    rows = []
    for name, frame in named.items():
        row = [str(name), str(len(frame))]
        for metric in metrics:
            if metric not in frame.columns:
                row.append("n/a")
                continue
            stats = _stats(pd.to_numeric(frame[metric], errors="coerce").astype(float))
            cell = f"{_fmt(stats['mean'], metric)} ± {_fmt(stats['std'], metric)}"
            if stats["n_nan"]:
                cell += f" ({stats['n_nan']} nan)"
            row.append(cell)
        rows.append(row)
    return _markdown_table(header, rows, right_align=range(1, len(header)))


def paper_table(
    named_tables: Mapping[str, pd.DataFrame],
    layout: str = "wang",
    columns: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
) -> str:
    """Several models in the layout of Wang et al. 2020, Tables 3-5: one row per model, ``mean±sd``.

    Args:
        named_tables: model name -> its per-case metrics table (e.g. :func:`collect_runs`).
        layout: ``"wang"`` (segmentation, Tables 3-5) or ``"wang_synthesis"`` (pseudo-DWI quality, Tables 1-2:
            :data:`WANG_SYNTHESIS_COLUMNS`, SSIM with 4 and PSNR with 2 decimals).
        columns: what to show, from ``params_m`` and the metric columns. Default
            :data:`WANG_COLUMNS`: ``Params (M)`` (only if some table has ``params_m``),
            ``Precision (%)``, ``Recall (%)``, ``Dice (%)``, ``HD95 (mm)``, ``ASSD (mm)``; add
            ``"rve"`` for Table 5's ``RVE`` column.
        order: model names in the order to print; models not named follow in their own order.
            Default: the order of ``named_tables``.

    Cells:
        * ``precision``, ``recall``, ``dice``: mean±sd in percent, 2 decimals (``54.45±21.23``).
        * ``hd95_mm``, ``assd_mm``: mean±sd in mm, 2 decimals. Note that Wang et al. report the
          full Hausdorff distance (their Eq. 17, the maximum); ``hd95_mm`` is its
          95th-percentile variant, so the column is headed ``HD95``.
        * ``rve``: mean±sd of ``|rve|``. Wang et al. define ``RVE = abs(Vg - Vs) / Vg``, always
          >= 0, while :func:`strokelab.metrics.case_metrics` stores the signed
          ``(V(P) - V(L)) / V(L)``; the table shows the absolute value, as a fraction (2 decimals).
        * ``params_m``: the model's parameters in millions, 2 decimals; ``n/a`` when its table
          has no ``params_m``.
        * other metric columns: mean±sd with the decimals of :func:`comparison_table`.

        ``sd`` is the sample standard deviation (ddof=1; ``nan`` for a single case). NaN values (undefined metrics) are
        left out and counted: `` (k nan)`` is appended to the cell. ``n/a``: the table lacks
        the column.

    Raises:
        DataError: no models, an unknown layout, column or model name, or a model whose
            ``params_m`` differs between rows.
    """
    if not named_tables:
        raise DataError("paper_table", "no models to tabulate")
    if layout not in PAPER_LAYOUTS:
        raise DataError("paper_table", f"unknown layout {layout!r}", f"choose from {list(PAPER_LAYOUTS)}")
    if columns is None:
        has_params = any("params_m" in frame.columns for frame in named_tables.values())
        default = WANG_SYNTHESIS_COLUMNS if layout == "wang_synthesis" else WANG_COLUMNS
        columns = [c for c in default if c != "params_m" or has_params]
    columns = list(columns)
    unknown = [c for c in columns if c != "params_m" and c not in METRIC_COLUMNS]
    if unknown:
        raise DataError("paper_table", f"unknown column(s) {unknown}", f"choose from {['params_m', *METRIC_COLUMNS]}")
    header = ["Model", *(_PAPER_HEADERS.get(c, c) for c in columns)]
    rows = []
    for name in _ordered_names(named_tables, order, "paper_table"):
        frame = named_tables[name]
        rows.append([str(name), *(_paper_cell(frame, c, name) for c in columns)])
    return _markdown_table(header, rows, right_align=range(1, len(header)))


def wang_stratum(volume_ml: float) -> str | None:
    """Wang et al.'s lesion-size stratum of ``volume_ml`` (see :data:`WANG_STRATA_LABELS`); None if NaN."""
    if volume_ml is None or not np.isfinite(volume_ml):
        return None
    if volume_ml < 10.0:
        return WANG_STRATA_LABELS[0]
    return WANG_STRATA_LABELS[1] if volume_ml <= 50.0 else WANG_STRATA_LABELS[2]


def strata_table(
    named_tables: Mapping[str, pd.DataFrame],
    strata: str = "wang",
    metric: str = "dice",
    order: Sequence[str] | None = None,
) -> str:
    """``metric`` by true lesion volume (``lesion_ml``) for several models, as in Wang et al. Fig. 10.

    One row per model (order as :func:`paper_table`), one column per stratum headed
    ``<label> (n=<cases>)``, with ``mean±sd`` formatted as in :func:`paper_table` (Dice in %,
    ``rve`` as mean±sd of ``|rve|``). ``strata="wang"``: ``<10``, ``10-50`` (both ends included),
    ``>50`` ml; ``strata="default"``: the ``<5 / 5-20 / 20-70 / >=70`` ml bins of
    :func:`summarize_by`. Every stratum is listed; a stratum without cases shows ``n/a``. A
    column header gives the first model's case count; a cell whose model has a different count
    in that stratum appends `` (n=k)``.

    Raises:
        DataError: no models, an unknown strata name, metric or model name, or a table without
            ``lesion_ml``.
    """
    if not named_tables:
        raise DataError("strata_table", "no models to tabulate")
    if strata not in STRATA:
        raise DataError("strata_table", f"unknown strata {strata!r}", f"choose from {list(STRATA)}")
    if metric not in METRIC_COLUMNS:
        raise DataError("strata_table", f"unknown metric {metric!r}", f"choose from {list(METRIC_COLUMNS)}")
    labels, bin_of = (WANG_STRATA_LABELS, wang_stratum) if strata == "wang" else (LESION_BIN_LABELS, lesion_size_bin)
    names = _ordered_names(named_tables, order, "strata_table")
    groups = {}
    for name in names:
        frame = named_tables[name]
        if "lesion_ml" not in frame.columns:
            raise DataError("strata_table", f"the table of {name!r} has no `lesion_ml` column (true volume, ml)")
        groups[name] = pd.to_numeric(frame["lesion_ml"], errors="coerce").astype(float).map(bin_of)
    first = groups[names[0]]
    counts = [int((first == label).sum()) for label in labels]
    header = ["Model", *(f"{label} (n={n})" for label, n in zip(labels, counts))]
    rows = []
    for name in names:
        frame, group = named_tables[name], groups[name]
        row = [str(name)]
        for label, n_first in zip(labels, counts):
            sel = (group == label).to_numpy()
            cell = _paper_cell(frame.loc[sel], metric, name) if sel.any() else "n/a"
            if int(sel.sum()) != n_first:
                cell += f" (n={int(sel.sum())})"
            row.append(cell)
        rows.append(row)
    title = f"{_PAPER_HEADERS.get(metric, metric)} by true lesion volume"
    return f"{title}\n\n" + _markdown_table(header, rows, right_align=range(1, len(header)))


def _ordered_names(named: Mapping[str, pd.DataFrame], order: Sequence[str] | None, where: str) -> list[str]:
    names = list(named)
    if not order:
        return names
    order = [str(o) for o in order]
    unknown = [o for o in order if o not in named]
    if unknown:
        raise DataError(where, f"unknown model name(s) {unknown} in the order", f"the models are {names}")
    return list(dict.fromkeys(order)) + [n for n in names if n not in order]


def _paper_cell(frame: pd.DataFrame, column: str, name: str) -> str:
    if column not in frame.columns:
        return "n/a"
    values = pd.to_numeric(frame[column], errors="coerce").astype(float)
    if column == "params_m":
        distinct = values.dropna().unique()
        if distinct.size == 0:
            return "n/a"
        if np.ptp(distinct) > 1e-9 * max(1.0, float(np.abs(distinct).max())):
            raise DataError("paper_table", f"`params_m` of model {name!r} differs between rows: {sorted(distinct)[:5]}")
        return f"{float(distinct[0]):.2f}"
    if column == "rve":
        values = values.abs()  # Wang et al.: RVE = abs(Vg - Vs) / Vg
    stats = _stats(values)
    scale, decimals = (100.0, 2) if column in _PERCENT else (1.0, 2 if column in _PAPER_HEADERS else _DECIMALS.get(column, 3))
    if column.startswith("ssim"):
        decimals = 4  # Wang et al. Tables 1-2

    def number(v: float) -> str:
        return "nan" if not np.isfinite(v) else f"{v * scale:.{decimals}f}"

    cell = f"{number(stats['mean'])}±{number(stats['std'])}"
    if stats["n_nan"]:
        cell += f" ({stats['n_nan']} nan)"
    return cell


# ----------------------------------------------------------------------------------------- helpers


def _metric_columns(df: pd.DataFrame) -> list[str]:
    if not isinstance(df, pd.DataFrame):
        raise DataError("per-case metrics", f"expected a pandas DataFrame, got {type(df).__name__}")
    if "case" not in df.columns:
        raise DataError(
            "per-case metrics",
            "the table has no `case` column",
            "build it from one case_metrics() dict per case plus a `case` id",
        )
    metrics = [m for m in METRIC_COLUMNS if m in df.columns]
    if not metrics:
        raise DataError("per-case metrics", f"the table has none of the metric columns {list(METRIC_COLUMNS)}")
    for m in metrics:
        col = df[m]
        if not (pd.api.types.is_numeric_dtype(col) or col.isna().all()):
            raise DataError("per-case metrics", f"column `{m}` is not numeric (dtype {col.dtype})")
    return metrics


def _stats(values: pd.Series) -> dict[str, float | int]:
    finite = values.dropna()
    n = int(finite.size)
    if n == 0:
        nan = math.nan
        return {"mean": nan, "std": nan, "median": nan, "q25": nan, "q75": nan, "n": 0, "n_nan": int(values.size)}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if n > 1 else math.nan,
        "median": float(finite.median()),
        "q25": float(finite.quantile(0.25)),
        "q75": float(finite.quantile(0.75)),
        "n": n,
        "n_nan": int(values.size - n),
    }


def _group_labels(df: pd.DataFrame, by: str) -> pd.Series:
    if by == LESION_SIZE:
        if "lesion_ml" not in df.columns:
            raise DataError("summarize_by", "grouping by lesion size needs a `lesion_ml` column (true volume, ml)")
        volumes = pd.to_numeric(df["lesion_ml"], errors="coerce").astype(float)
        return volumes.map(lesion_size_bin)
    if by not in df.columns:
        raise DataError(
            "summarize_by",
            f"the table has no column `{by}` to group by",
            f"choose one of {sorted(set(df.columns) - set(METRIC_COLUMNS))} or '{LESION_SIZE}'",
        )
    return df[by]


def _fmt(value: float, metric: str) -> str:
    if value is None or not np.isfinite(value):
        return "nan" if value is None or np.isnan(value) else str(value)
    return f"{value:.{_DECIMALS.get(metric, 3)}f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_align: Iterable[int] = ()) -> str:
    """Markdown pipe table with every column padded to equal width (reads well as plain text)."""
    right = set(right_align)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _summary_rows(table: pd.DataFrame, by: str | None) -> tuple[list[str], list[list[str]]]:
    header = ([by] if by else []) + ["metric", *STAT_COLUMNS]
    rows = []
    for rec in table.to_dict("records"):
        metric = rec["metric"]
        row = ([str(rec[by])] if by else []) + [metric]
        row += [_fmt(rec[s], metric) for s in ("mean", "std", "median", "q25", "q75")]
        row += [str(int(rec["n"])), str(int(rec["n_nan"]))]
        rows.append(row)
    return header, rows


def _summary_markdown(df: pd.DataFrame, tables: list[tuple[str, pd.DataFrame]], title: str) -> str:
    lines = [f"# {title}" if title else "# Evaluation report", ""]
    lines.append(
        f"{len(df)} cases. NaN values (metric undefined for the case, e.g. HD95 with one empty mask) "
        "are excluded from the statistics and counted in `n_nan`."
    )
    if "model" in df.columns and df["model"].nunique(dropna=False) > 1:
        lines.append("The table holds several models; `all` pools them - compare the `by model` table.")
    lines.append("")
    for by, table in tables:
        lines.append("## All cases" if by == "all" else f"## By {by.replace('_', ' ')}")
        lines.append("")
        header, rows = _summary_rows(table, None if by == "all" else by)
        first_stat = len(header) - len(STAT_COLUMNS)
        lines.append(_markdown_table(header, rows, right_align=range(first_stat, len(header))))
        lines.append("")
    return "\n".join(lines)


def _volumes(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) volumes in ml; predicted from `pred_ml` or derived from rve / avd_ml."""
    true_ml = pd.to_numeric(df["lesion_ml"], errors="coerce").to_numpy(dtype=float)
    if "pred_ml" in df.columns:
        return true_ml, pd.to_numeric(df["pred_ml"], errors="coerce").to_numpy(dtype=float)
    pred_ml = np.full_like(true_ml, np.nan)
    if "rve" in df.columns:
        rve = pd.to_numeric(df["rve"], errors="coerce").to_numpy(dtype=float)
        pred_ml = np.where(true_ml > 0, true_ml * (1.0 + rve), pred_ml)
    if "avd_ml" in df.columns:  # V_true == 0  =>  V_pred = |V_pred - V_true| = avd
        avd = pd.to_numeric(df["avd_ml"], errors="coerce").to_numpy(dtype=float)
        pred_ml = np.where(true_ml == 0, avd, pred_ml)
    return true_ml, pred_ml


def _series_by_model(df: pd.DataFrame) -> list[tuple[str | None, np.ndarray]]:
    if "model" in df.columns and df["model"].nunique() > 1:
        return [(str(name), (df["model"] == name).to_numpy()) for name in df["model"].dropna().unique()]
    return [(None, np.ones(len(df), dtype=bool))]


def _new_figure():
    """A standalone Figure rendered by Agg on save; pyplot and the global backend are not touched."""
    from matplotlib.figure import Figure

    return Figure(figsize=(6.0, 5.0), dpi=120, layout="constrained")


def _plot_volume_scatter(df: pd.DataFrame, path: Path, title: str) -> Path:
    true_ml, pred_ml = _volumes(df)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, sel in _series_by_model(df):
        ax.scatter(true_ml[sel], pred_ml[sel], s=22, alpha=0.75, edgecolors="none", label=name)
    finite = np.concatenate([true_ml[np.isfinite(true_ml)], pred_ml[np.isfinite(pred_ml)]])
    top = float(finite.max()) * 1.05 if finite.size and finite.max() > 0 else 1.0
    ax.plot([0, top], [0, top], color="0.4", linestyle="--", linewidth=1, label="identity (perfect)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("true lesion volume (ml)")
    ax.set_ylabel("predicted lesion volume (ml)")
    ax.set_title(f"{title}: predicted vs true volume" if title else "Predicted vs true lesion volume")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _atomic_save_figure(fig, path)


def _plot_dice_vs_volume(df: pd.DataFrame, path: Path, title: str) -> Path:
    true_ml = pd.to_numeric(df["lesion_ml"], errors="coerce").to_numpy(dtype=float)
    from matplotlib.ticker import NullLocator

    dice = pd.to_numeric(df["dice"], errors="coerce").to_numpy(dtype=float) if "dice" in df.columns else np.full(len(df), np.nan)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, sel in _series_by_model(df):
        ax.scatter(true_ml[sel], dice[sel], s=22, alpha=0.75, edgecolors="none", label=name)
    ax.set_xscale("symlog", linthresh=1.0)
    finite = true_ml[np.isfinite(true_ml)]
    right = max(float(finite.max()) * 1.5, 10.0) if finite.size else 10.0
    ax.set_xlim(0, right)
    ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if t <= right]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(-0.03, 1.03)
    for edge in LESION_BIN_EDGES_ML:
        ax.axvline(edge, color="0.7", linewidth=0.8, linestyle=":")
    ax.set_xlabel("true lesion volume (ml, symlog axis; dotted lines: 5 / 20 / 70 ml bins)")
    ax.set_ylabel("Dice")
    ax.set_title(f"{title}: Dice vs true volume" if title else "Dice vs true lesion volume")
    ax.grid(True, alpha=0.3)
    if any(name for name, _ in _series_by_model(df)):
        ax.legend(loc="lower right", fontsize=8)
    return _atomic_save_figure(fig, path)


def plot_map_comparison(
    pred: np.ndarray,
    target: np.ndarray,
    path: Path,
    title: str = "",
    value_range: tuple[float, float] | None = None,
    unit: str = "s",
) -> Path:
    """Reference map | predicted map | prediction - reference, on the axial slice with the most reference
    voxels (e.g. Tmax in s). Written atomically as a PNG."""
    region = target != 0
    z = int(np.argmax(region.sum(axis=(0, 1)))) if region.any() else target.shape[2] // 2
    lo, hi = value_range if value_range is not None else (float(np.min(target)), float(np.max(target)))
    diff = np.where(region[:, :, z], pred[:, :, z] - target[:, :, z], 0.0)
    span = max(float(np.abs(diff).max()), 1e-6)
    fig = _new_figure()
    fig.set_size_inches(10.0, 3.8)
    panels = [
        ("reference", target[:, :, z], "magma", lo, hi),
        ("prediction", pred[:, :, z], "magma", lo, hi),
        ("prediction - reference", diff, "RdBu_r", -span, span),
    ]
    for i, (name, data, cmap, vmin, vmax) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        shown = ax.imshow(np.rot90(data), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{name} (slice {z})", fontsize=9)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.8, label=unit)
    if title:
        fig.suptitle(title, fontsize=10)
    return _atomic_save_figure(fig, path)


def _atomic_write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return path


def _atomic_save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def collect_runs(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Per-case test tables of every run under ``run_dir`` (e.g. a cross-validation multirun), by model.

    Looks for ``**/test/<model>/metrics.csv`` as ``train.py`` writes them; cases of all folds are pooled. A row
    that repeats another of the same model in every column but the run and the time (the threshold baseline,
    scored again beside each trained model of a fold) is counted once.
    """
    tables: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(Path(run_dir).rglob("test/*/metrics.csv")):
        frame = pd.read_csv(path)
        frame["run"] = str(path.parent.parent.parent.relative_to(run_dir))
        tables.setdefault(path.parent.name, []).append(frame)
    if not tables:
        raise DataError(run_dir, "holds no test/<model>/metrics.csv", "point to a train.py run or multirun folder")
    out = {}
    for model, frames in tables.items():
        table = pd.concat(frames, ignore_index=True)
        same = [c for c in table.columns if c not in ("run", "seconds")]
        out[model] = table.drop_duplicates(subset=same, keep="first").reset_index(drop=True)
    return out


PERCENT_METRICS = frozenset({"dice", "precision", "recall", "lesion_f1"})


def paired_table(
    named: Mapping[str, pd.DataFrame],
    reference: str,
    metric: str = "dice",
    order: Sequence[str] | None = None,
    n_boot: int = 5000,
    seed: int = 0,
) -> str:
    """Every model against ``reference`` on the same cases (matched by ``case`` and, when present, ``fold``):
    the mean paired difference ``reference - model`` (in points of % for Dice-like metrics), its 95 % percentile
    bootstrap interval over cases (``n_boot`` resamples, fixed ``seed``), and on how many cases the reference is
    higher. Cross-validated models differ far less than their spread over cases; the paired difference is what
    tells them apart (or shows that it cannot, when the interval holds 0)."""
    if reference not in named:
        raise DataError("paired_table", f"no model named '{reference}'", f"choose one of {list(named)}")
    keys = ["case", "fold"] if all("fold" in t.columns for t in named.values()) else ["case"]

    def values(frame: pd.DataFrame, name: str) -> pd.Series:
        if metric not in frame.columns:
            raise DataError("paired_table", f"model '{name}' has no column `{metric}`")
        series = frame.set_index(keys)[metric].astype(float)
        if series.index.duplicated().any():
            # The same deterministic predictions tested in several runs (the threshold baseline of a multirun): one copy.
            if (series.groupby(level=keys).nunique(dropna=False) > 1).any():
                raise DataError("paired_table", f"model '{name}' has one case several times", "pool one run per fold and model")
            series = series[~series.index.duplicated()]
        return series

    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    unit = " (points of %)" if scale == 100.0 else ""
    ref = values(named[reference], reference)
    rng = np.random.default_rng(seed)
    rows = []
    for name in _ordered_names(named, order, "paired_table"):
        if name == reference:
            continue
        diff = ((ref - values(named[name], name)) * scale).dropna().to_numpy()
        if diff.size == 0:
            rows.append([name, "0", "n/a", "n/a", "n/a"])
            continue
        boots = rng.choice(diff, size=(n_boot, diff.size)).mean(axis=1)
        low, high = np.percentile(boots, [2.5, 97.5])
        wins = f"{int((diff > 0).sum())}/{diff.size}"
        rows.append([name, str(diff.size), f"{diff.mean():+.2f}", f"[{low:+.2f}, {high:+.2f}]", wins])
    header = ["model", "n", f"{reference} - model{unit}", "95 % bootstrap CI", f"{reference} higher"]
    return f"Paired {metric}: {reference} against each model on the same cases\n\n" + _markdown_table(
        header, rows, right_align=range(1, 5)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m strokelab.report RUN_DIR``: pool the held-out folds of a (multi)run and report them."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m strokelab.report", description=main.__doc__)
    parser.add_argument(
        "run_dir", nargs="+", help="train.py run or multirun folder(s) (e.g. logs/cv/multiruns/DATE); several are pooled"
    )
    parser.add_argument(
        "--layout",
        choices=("summary", *PAPER_LAYOUTS),
        default="summary",
        help="summary: mean ± std of the main metrics; wang: Wang et al. 2020 Tables 3-5 (Precision/Recall/Dice in %%, "
        "HD95/ASSD in mm, Params (M) when the tables have params_m); wang_synthesis: Tables 1-2 (global and local "
        "SSIM/PSNR of the pseudo-DWI, Dice in %%)",
    )
    parser.add_argument(
        "--columns",
        type=_csv_list,
        default=None,
        help="comma-separated columns instead of the layout's default, e.g. "
        "params_m,precision,recall,dice,hd95_mm,assd_mm,rve (rve: mean±sd of |rve|, as Wang's Table 5)",
    )
    parser.add_argument("--order", type=_csv_list, default=None, help="comma-separated model names: the row order")
    parser.add_argument(
        "--strata",
        choices=STRATA,
        default=None,
        help="also print Dice by true lesion volume: wang = <10 / 10-50 / >50 ml (Fig. 10), default = 5/20/70 ml bins",
    )
    parser.add_argument(
        "--paired",
        default=None,
        metavar="MODEL",
        help="also print each model's paired Dice difference to MODEL on the same cases, with a bootstrap 95%% interval",
    )
    parser.add_argument(
        "--paired-metrics",
        type=_csv_list,
        default=["dice"],
        help="the metrics of --paired, comma-separated (default dice; e.g. dice,ssim,psnr,ssim_local for Tables 1-2)",
    )
    args = parser.parse_args(argv)
    try:
        tables: dict[str, pd.DataFrame] = {}
        for run_dir in args.run_dir:
            for model, table in collect_runs(run_dir).items():
                tables[model] = pd.concat([tables[model], table], ignore_index=True) if model in tables else table
        if args.layout == "summary":
            regression = all(set(REGRESSION_COLUMNS) <= set(t.columns) for t in tables.values())
            metrics = args.columns or (REGRESSION_COLUMNS if regression else None)
            ordered = {name: tables[name] for name in _ordered_names(tables, args.order, "report")}
            text = comparison_table(ordered, **({"metrics": metrics} if metrics else {}))
        else:
            text = paper_table(tables, layout=args.layout, columns=args.columns, order=args.order)
        if args.strata:
            blocks = [strata_table(tables, args.strata, "dice", args.order)]
            if args.columns and "rve" in args.columns:
                blocks.append(strata_table(tables, args.strata, "rve", args.order))
            text = "\n\n".join([text, *blocks])
        if args.paired:
            blocks = []
            for metric in args.paired_metrics:  # models without the metric (e.g. no synthesis) are left out of its block
                have = {k: v for k, v in tables.items() if metric in v.columns}
                order = None if args.order is None else [o for o in args.order if o in have]
                blocks.append(paired_table(have, args.paired, metric, order))
            text = "\n\n".join([text, *blocks])
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.run_dir[0])
    for model, table in tables.items():
        write_report(table, out / "summary" / model, title=f"{model}, pooled held-out folds")
    print(text)
    print(f"reports: {out / 'summary'}/<model>/summary.md")
    return 0


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    raise SystemExit(main())

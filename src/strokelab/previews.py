"""Slice previews: the validation rows, the test-time mask preview and the preprocessing preview.

* :func:`render_row`, the validation images: one axial slice per validation case, panels left to right:
  every input (first channel of a multi-channel input such as the windowed CTP), every image or map output
  (e.g. the pseudo-DWI), the reference it is scored against (e.g. the real DWI), and an overlay of the
  predicted (red) and true (green) lesion contours on the reference image (or the first input). The slice
  is the one with the most lesion voxels (the middle slice without a lesion). The task writes each row as
  ``<run>/val_images/epoch_NNN/<case>.png`` and sends it to the experiment loggers (wandb, TensorBoard).
* :func:`mask_row`, the TUM project's Fig. 4.1 at test time (``shared/seeds/000``): input | prediction |
  label | both contours on the input, drawn by :func:`render_row` on a case's native grid
  (``strokelab.evaluation`` writes it as ``<case>.png`` beside ``metrics.csv``).
* :func:`render_preprocessing`, the TUM project's Fig. 3.1: per modality original | normalised |
  difference and both histograms (``python -m strokelab.data.preview_preprocessing``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from strokelab.io import atomic_path


def lesion_slice(label: np.ndarray | None, depth: int) -> int:
    """The axial slice with the most lesion voxels; the middle one without a lesion."""
    if label is None or not np.any(label):
        return depth // 2
    label = np.asarray(label)
    counts = np.count_nonzero(label, axis=tuple(range(label.ndim - 1)))  # 20x faster than a sum on a native ISLES mask
    return int(np.argmax(counts))


def _window(a: np.ndarray) -> tuple[float, float]:
    values = a[a != 0] if np.any(a != 0) else a.ravel()
    lo, hi = np.percentile(values, (1, 99)) if values.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-6))


def render_row(
    panels: Mapping[str, np.ndarray],
    ranges: Mapping[str, tuple[float, float]] | None = None,
    overlay: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    label: np.ndarray | None = None,
    title: str = "",
) -> np.ndarray:
    """A row of 2D panels (gray, each with its own 1-99th percentile window unless ``ranges`` gives one) and,
    when ``overlay`` is given, a last panel with the ``prediction`` (red) and ``label`` (green) contours on it.
    Returns the figure as an RGB uint8 array (H, W, 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranges = dict(ranges or {})
    items = list(panels.items())
    n = len(items) + (overlay is not None)
    fig = Figure(figsize=(2.1 * n, 2.5), dpi=80)  # a fixed layout: constrained layout took half the time of a row
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.82 if title else 0.9, wspace=0.06)
    canvas = FigureCanvasAgg(fig)
    for i, (name, image) in enumerate(items):
        ax = fig.add_subplot(1, n, i + 1)
        lo, hi = ranges.get(name) or _window(image)
        ax.imshow(np.rot90(image), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if overlay is not None:
        ax = fig.add_subplot(1, n, n)
        lo, hi = _window(overlay)
        ax.imshow(np.rot90(overlay), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        for mask, colour in ((label, "lime"), (prediction, "red")):
            if mask is not None and np.any(mask) and not np.all(mask):
                ax.contour(np.rot90(mask.astype(float)), levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title("prediction (red), label (green)", fontsize=7)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def mask_row(image: np.ndarray, prediction: np.ndarray, label: np.ndarray, name: str, title: str = "") -> np.ndarray:
    """TUM Fig. 4.1 for one 2D slice: the input ``image`` (named ``name``) | the predicted mask | the label
    mask | the prediction (red) and label (green) contours on the input, as :func:`render_row` draws them."""
    panels = {name: image, "prediction": prediction.astype(np.float32), "label": label.astype(np.float32)}
    binary = {"prediction": (0.0, 1.0), "label": (0.0, 1.0)}
    return render_row(panels, binary, image, prediction, label, title)


def _num(value: float) -> str:
    return "0" if abs(value) < 5e-4 else f"{value:.4g}"


def render_preprocessing(rows: list[dict], title: str = "") -> np.ndarray:
    """TUM Fig. 3.1, one row per modality: original | normalised | original - normalised (one slice; the
    difference on a diverging scale centred on 0, saturating at the 99th percentile of the changes) | histogram
    of the original | histogram of the normalised volume (every voxel, log counts, with range, mean and SD).

    Each row is ``{"name", "original", "normalised"}`` (2D slices on one grid) plus ``"original_values"``
    and ``"normalised_values"`` (every voxel, for the histograms). Returns an RGB uint8 array (H, W, 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.0, 2.7 * len(rows) + 0.4), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 5, squeeze=False)
    for r, row in enumerate(rows):
        original, normalised = np.asarray(row["original"], float), np.asarray(row["normalised"], float)
        diff = original - normalised
        changed = np.abs(diff[diff != 0])
        span = max(float(np.percentile(changed, 99)) if changed.size else 0.0, 1e-6)  # a few outliers do not wash it out
        images = (
            (f"{row['name']}: original", original, "gray", *_window(original)),
            (f"{row['name']}: normalised", normalised, "gray", *_window(normalised)),
            ("original - normalised", diff, "RdBu_r", -span, span),
        )
        for ax, (name, data, cmap, lo, hi) in zip(axes[r, :3], images):
            shown = ax.imshow(np.rot90(data), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(name, fontsize=8)
            ax.set_axis_off()
            fig.colorbar(shown, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
        for ax, (name, key, colour) in zip(
            axes[r, 3:], (("original", "original_values", "tab:blue"), ("normalised", "normalised_values", "tab:orange"))
        ):
            values = np.asarray(row[key], float).ravel()
            values = values[np.isfinite(values)]
            if not values.size:
                values = np.zeros(1)
            ax.hist(values, bins=100, color=colour, log=True)
            stats = f"[{_num(values.min())}, {_num(values.max())}], mean {_num(values.mean())}, SD {_num(values.std())}"
            ax.set_title(f"{name} (all voxels)\n{stats}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_xlabel("intensity", fontsize=7)
            ax.set_ylabel("voxels", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(rgb: np.ndarray, path: Path) -> Path:
    """Write an RGB array as a PNG, atomically."""
    from matplotlib.image import imsave

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        imsave(tmp, rgb, format="png")
    return path

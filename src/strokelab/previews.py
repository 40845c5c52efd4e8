"""Validation images: one axial slice per validation case, drawn as a row of panels.

Panels, left to right: every input (first channel of a multi-channel input such as the windowed CTP), every
image or map output (e.g. the pseudo-DWI), the reference it is scored against (e.g. the real DWI), and an
overlay of the predicted (red) and true (green) lesion contours on the reference image (or the first input).
The slice is the one with the most lesion voxels (the middle slice without a lesion). The task writes each
row as ``<run>/val_images/epoch_NNN/<case>.png`` and sends it to the experiment loggers (wandb, TensorBoard).
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
    return int(np.argmax(np.asarray(label).reshape(-1, depth).sum(axis=0)))


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
    fig = Figure(figsize=(2.1 * n, 2.5), dpi=80, layout="constrained")
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


def save_png(rgb: np.ndarray, path: Path) -> Path:
    """Write an RGB array as a PNG, atomically."""
    from matplotlib.image import imsave

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        imsave(tmp, rgb, format="png")
    return path

"""Temporal features of a raw CTP series, as in Wang et al. 2020 (section 3.1).

For a series ``I(x, y, z, t)``, ``t = 0 .. T-1`` (time last):

* **temporal MIP** (Eq. 1): ``F_l(x, y, z) = max_t I(x, y, z, t)`` -- :func:`temporal_mip`;
* **accumulated intensity** ``q(t) = sum_{x,y,z} I(x, y, z, t)`` -- :func:`accumulated_intensity`;
* **perfusion window** ``[Ts, Te]`` from ``q`` with ``K = 5`` (Eq. 2-3) -- :func:`perfusion_window`::

      Ts = min { t | 0 <= t < T - K,  sum_{k=0}^{K-1} H(q'(t + k)) = K }    (q' > 0 at t .. t+K-1)
      Te = max { t | K <= t < T,      sum_{k=0}^{K-1} H(q'(t - k)) = 0 }    (q' < 0 at t-K+1 .. t)

* **temporal crop and uniform resampling** of frames ``Ts .. Te`` to ``Ce`` frames by linear interpolation
  (Wang et al. use ``Ce = 6``) -- :func:`crop_and_resample`.

Two choices the paper leaves open, made explicit here:

* ``q'`` is ``numpy.gradient(q)`` (central differences inside, one-sided at the ends): Eq. 2 needs
  ``q'(0)`` and Eq. 3 needs ``q'(T-1)``, which a one-sided difference would leave undefined at one end.
* ``H(0)``: the text reads "keeps positive" (Ts) and "keeps negative" (Te), so a zero derivative counts as
  neither: Ts needs ``q' > 0`` and Te needs ``q' < 0`` throughout (Eq. 2 with ``H(0) = 0``, Eq. 3 with
  ``H(0) = 1``). Exact zeros only occur in synthetic data.

If no ``t`` satisfies Eq. 2 the window starts at 0; if none satisfies Eq. 3 (or ``Te <= Ts``) it ends at
``T - 1``; :class:`PerfusionWindow` records which rule was met.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strokelab.errors import ConfigError, DataError

WANG_K = 5  # consecutive derivative signs (Wang et al. 2020)
WANG_CE = 6  # frames after resampling (Wang et al. 2020, ISLES 2018 experiments)


def temporal_mip(series: np.ndarray) -> np.ndarray:
    """Temporal maximum intensity projection ``max_t I(..., t)`` (Eq. 1); time is the last axis.
    Same unit and dtype as the series."""
    series = np.asarray(series)
    if series.ndim < 2:
        raise DataError("series", f"has shape {series.shape}", "give a series with time as the last axis")
    return series.max(axis=-1)


def accumulated_intensity(series: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``q(t) = sum over voxels of I(voxel, t)`` (float64, shape (T,)); within ``mask`` (> 0.5) if given."""
    series = np.asarray(series)
    if series.ndim < 2:
        raise DataError("series", f"has shape {series.shape}", "give a series with time as the last axis")
    if mask is None:
        return series.sum(axis=tuple(range(series.ndim - 1)), dtype=np.float64)
    m = np.asarray(mask) > 0.5
    if m.shape != series.shape[:-1]:
        raise DataError("mask", f"has shape {m.shape}, the series {series.shape[:-1]}", "give a mask on the series grid")
    return np.array([series[..., t][m].sum(dtype=np.float64) for t in range(series.shape[-1])])


@dataclass(frozen=True)
class PerfusionWindow:
    """Frames ``start .. end`` (inclusive, 0-based) of the perfusion stage; ``found_start``/``found_end`` say
    whether Eq. 2 / Eq. 3 were satisfied (otherwise the series' first / last frame was used)."""

    start: int
    end: int
    found_start: bool
    found_end: bool

    @property
    def n_frames(self) -> int:
        return self.end - self.start + 1

    def seconds(self, dt: float) -> tuple[float, float]:
        """(Ts, Te) in s for frame interval ``dt`` (first frame at 0 s)."""
        return self.start * dt, self.end * dt


def perfusion_window(q: np.ndarray, k: int = WANG_K) -> PerfusionWindow:
    """The perfusion window ``[Ts, Te]`` of an accumulated-intensity curve ``q`` by Eq. 2-3 of Wang et al."""
    q = np.asarray(q, dtype=np.float64).ravel()
    t_len = q.size
    if int(k) != k or k < 1:
        raise ConfigError("temporal.k", f"is {k}", "use a positive whole number of frames, e.g. 5")
    k = int(k)
    if t_len < k + 1:
        raise DataError("series", f"has {t_len} frames", f"need more than K = {k} frames for the perfusion window")
    dq = np.gradient(q)
    windows_pos = np.lib.stride_tricks.sliding_window_view(dq > 0, k).all(axis=1)  # [s] = all q' > 0 on s .. s+k-1
    windows_neg = np.lib.stride_tricks.sliding_window_view(dq < 0, k).all(axis=1)
    # Eq. 2: t in [0, T-K) with q'(t .. t+K-1) > 0, i.e. window start s = t.
    starts = np.flatnonzero(windows_pos[: t_len - k])
    # Eq. 3: t in [K, T) with q'(t-K+1 .. t) < 0, i.e. window start s = t-K+1 in [1, T-K].
    ends = np.flatnonzero(windows_neg[1 : t_len - k + 1]) + k  # t = s + K - 1 with s = index + 1
    found_start, found_end = starts.size > 0, ends.size > 0
    ts = int(starts[0]) if found_start else 0
    te = int(ends[-1]) if found_end else t_len - 1
    if te <= ts:
        te, found_end = t_len - 1, False
    return PerfusionWindow(ts, te, found_start, found_end)


def crop_and_resample(series: np.ndarray, start: int, end: int, n_out: int = WANG_CE) -> np.ndarray:
    """Frames ``start .. end`` (inclusive) resampled uniformly to ``n_out`` frames by linear interpolation.

    Output frame ``m`` sits at input position ``start + m * (end - start) / (n_out - 1)`` (the first and last
    output frames are frames ``start`` and ``end``; ``n_out = 1`` gives frame ``start``). Returns float32 with
    time last, in the memory order of the input.
    """
    series = np.asarray(series)
    t_len = series.shape[-1]
    if int(n_out) != n_out or n_out < 1:
        raise ConfigError("temporal.ce", f"is {n_out}", "use a positive number of output frames, e.g. 6")
    if not 0 <= start <= end < t_len:
        raise DataError("series", f"window [{start}, {end}] is outside frames 0..{t_len - 1}", "give 0 <= start <= end < T")
    n_out = int(n_out)
    pos = np.linspace(start, end, n_out) if n_out > 1 else np.array([float(start)])
    order = "F" if (series.flags.f_contiguous and not series.flags.c_contiguous) else "C"
    out = np.empty(series.shape[:-1] + (n_out,), np.float32, order=order)
    for m, p in enumerate(pos):
        i0 = min(int(np.floor(p)), max(end - 1, start))
        w = np.float32(p - i0)
        a = series[..., i0].astype(np.float32)
        if w > 0:
            a *= 1 - w
            a += w * series[..., i0 + 1].astype(np.float32)
        out[..., m] = a
    return out


def temporal_features(series: np.ndarray, k: int = WANG_K, ce: int = WANG_CE, mask: np.ndarray | None = None) -> dict:
    """All three features of Wang et al. §3.1: ``{"mip", "q", "window", "cropped"}`` (MIP in the series'
    unit, q(t), :class:`PerfusionWindow`, the cropped series resampled to ``ce`` frames)."""
    q = accumulated_intensity(series, mask)
    window = perfusion_window(q, k)
    return {
        "mip": temporal_mip(series),
        "q": q,
        "window": window,
        "cropped": crop_and_resample(series, window.start, window.end, ce),
    }

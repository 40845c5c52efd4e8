"""CT perfusion maps (CBF, CBV, MTT, Tmax, TTP) from a raw 4D CTP series, by deconvolution.

Pipeline (:func:`compute_maps`), for a series ``I(x, y, z, t)`` in HU with frame interval ``dt`` (s):

1. **Bolus arrival and baseline.** A global curve (mean HU of the soft-tissue voxels of the first frame)
   gives the first frame whose enhancement exceeds ``bolus_rise_fraction`` of its peak; the frames before
   it, less one for safety, are the pre-bolus baseline (at least one frame). Once the AIF is known the
   baseline also ends before the AIF's own arrival. The baseline image is their mean; every curve
   becomes enhancement ``dHU(t) = I(t) - baseline``.
2. **Brain mask** (:func:`brain_mask`) from the baseline image: ``brain_hu`` (0-80 HU), away from bone,
   the largest connected component, holes filled.
3. **AIF**: a given mask or curve, or automatic selection (:func:`select_aif`): the brain voxels with the
   highest enhancement are candidates; of those, the earliest-peaking ones (arterial, not venous and not
   in a delayed territory) are scored by peak / width (narrow, high) with a penalty for a high tail, and
   the best ``aif_voxels`` are averaged.
4. Optional **VOF scaling**: the AIF is scaled so that its area equals that of the venous output function
   (the late-peaking curves of largest area), which corrects partial-volume loss in small arteries.
5. Optional **smoothing**: temporal Gaussian, ``smoothing_sigma_s`` in s, the same for AIF and tissue;
   in-plane spatial Gaussian, ``spatial_sigma_mm``, of the tissue enhancement only (normalised inside the
   brain mask, vessels left out), since single CTP voxels are noisy.
6. **Deconvolution and maps**, in chunks of ``chunk_voxels`` brain voxels with one matrix product per
   chunk (:class:`CurveAnalyser`, :mod:`strokelab.perfusion.deconvolution`).

Units and the central volume theorem (:class:`CurveAnalyser` has the derivation)::

    CBF [ml/100g/min] = (kH / rho) * max_t k(t) * 60 * 100
    CBV [ml/100g]     = (kH / rho) * (dt * sum C_tissue) / (dt * sum C_AIF) * 100
    MTT [s]           = 60 * CBV / CBF
    Tmax [s]          = time of the maximum of k(t)
    TTP [s]           = time of the maximum of the tissue curve, from the first frame

``rho`` (tissue density, g/ml) and ``kH = (1 - Hct_large) / (1 - Hct_small)`` are the constants of
``strokelab.perfusion.physics`` by default (the phantom simulates with the same) and settings here. Maps are
0 outside the brain mask.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from strokelab.errors import ConfigError, DataError
from strokelab.perfusion.deconvolution import DeconvolutionSettings, Deconvolver
from strokelab.perfusion.physics import HCT_LARGE_VESSEL, HCT_SMALL_VESSEL, RHO_TISSUE

log = logging.getLogger(__name__)

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax", "ttp")
MAP_UNITS = {"cbf": "ml/100g/min", "cbv": "ml/100g", "mtt": "s", "tmax": "s", "ttp": "s"}
MIN_FRAMES = 8


@dataclass(frozen=True)
class PerfusionSettings:
    """Everything that changes the maps. Times in s, CT numbers in HU.

    deconvolution: method and thresholds (:class:`DeconvolutionSettings`; default bcSVD, 0.1).
    tissue_density: rho, g/ml (brain tissue; 1.04).
    hct_large_vessel, hct_small_vessel: haematocrit where the AIF is measured / in capillaries
        (0.45, 0.25), giving ``kH = (1 - 0.45) / (1 - 0.25)``.
    smoothing_sigma_s: Gaussian temporal smoothing of AIF and tissue curves, SD in s (0 = none).
    spatial_sigma_mm: in-plane Gaussian smoothing of the tissue enhancement inside the brain mask
        (normalised convolution: no mixing with bone or air), SD in mm (0 = none). Not applied to the AIF.
        Raw CTP voxels are noisy (10-20 HU against a few HU of tissue enhancement); vendor software
        smooths too. Costs a pass over the brain's bounding box per frame (wide Gaussians on tiles, see
        :class:`_InPlaneGaussian`).
    vessel_hu: with spatial smoothing, voxels enhancing by more than this (HU) are vessels: they are left
        out of their neighbours' smoothing (so arteries do not bleed into tissue) and keep their own curve.
    subframe_peaks: refine Tmax and TTP by a parabola through the peak and its neighbours (+-0.5 frame).
    mtt_max_s: MTT is clipped to [0, mtt_max_s]; None = the acquisition length ``N * dt``.
    bolus_rise_fraction: the bolus has arrived when a curve rose by this fraction of its peak enhancement.
    brain_hu: HU range of brain (grey/white matter, CSF, unenhanced blood) in the baseline image.
    bone_hu: baseline HU above which a voxel is bone; its in-plane neighbours are excluded too.
    brain_erosion_vox: in-plane erosion (voxels) before the largest component is taken (cuts thin links
        to scalp or neck through foramina); the mask grows back inside ``brain_hu`` afterwards.
    aif_voxels: number of best-scoring voxels averaged into the AIF.
    aif_candidates: at most this many most-enhancing brain voxels are AIF candidates ...
    aif_candidate_fraction: ... and at most this fraction of the brain voxels.
    aif_early_fraction: of the candidates, only the earliest-peaking fraction is scored (arterial phase).
    vof_scaling: scale the AIF to the area of the venous output function.
    vof_voxels: number of voxels averaged into the VOF.
    chunk_voxels: brain voxels processed per chunk (bounds memory: ~ chunk_voxels * 2N * 4 bytes).
    """

    deconvolution: DeconvolutionSettings = DeconvolutionSettings()
    tissue_density: float = RHO_TISSUE
    hct_large_vessel: float = HCT_LARGE_VESSEL
    hct_small_vessel: float = HCT_SMALL_VESSEL
    smoothing_sigma_s: float = 0.0
    spatial_sigma_mm: float = 0.0
    vessel_hu: float = 120.0
    subframe_peaks: bool = True
    mtt_max_s: float | None = None
    bolus_rise_fraction: float = 0.1
    brain_hu: tuple[float, float] = (0.0, 80.0)
    bone_hu: float = 150.0
    brain_erosion_vox: int = 2
    aif_voxels: int = 5
    aif_candidates: int = 2000
    aif_candidate_fraction: float = 0.01
    aif_early_fraction: float = 0.25
    vof_scaling: bool = False
    vof_voxels: int = 3
    chunk_voxels: int = 8192

    def __post_init__(self) -> None:
        if isinstance(self.deconvolution, dict):
            object.__setattr__(self, "deconvolution", DeconvolutionSettings(**self.deconvolution))
        object.__setattr__(self, "brain_hu", tuple(float(v) for v in self.brain_hu))

        def bad(name: str, fix: str) -> None:
            raise ConfigError(f"perfusion.{name}", f"is {getattr(self, name)!r}", fix)

        if not self.tissue_density > 0:
            bad("tissue_density", "use a positive density in g/ml (1.04 for brain)")
        for name in ("hct_large_vessel", "hct_small_vessel"):
            if not 0 <= getattr(self, name) < 1:
                bad(name, "use a haematocrit fraction in [0, 1)")
        if self.smoothing_sigma_s < 0:
            bad("smoothing_sigma_s", "use 0 (no smoothing) or a positive SD in s")
        if self.spatial_sigma_mm < 0:
            bad("spatial_sigma_mm", "use 0 (no smoothing) or a positive SD in mm")
        if not self.vessel_hu > 0:
            bad("vessel_hu", "use a positive enhancement in HU, e.g. 120")
        if self.mtt_max_s is not None and not self.mtt_max_s > 0:
            bad("mtt_max_s", "use a positive time in s or None")
        if not 0 < self.bolus_rise_fraction < 1:
            bad("bolus_rise_fraction", "use a fraction in (0, 1), e.g. 0.1")
        if len(self.brain_hu) != 2 or self.brain_hu[0] >= self.brain_hu[1]:
            bad("brain_hu", "give [low, high] HU with low < high, e.g. [0, 80]")
        if self.bone_hu <= self.brain_hu[1]:
            bad("bone_hu", "use a bone threshold above the brain range, e.g. 150")
        if self.brain_erosion_vox < 0:
            bad("brain_erosion_vox", "use 0 or a positive number of voxels")
        for name in ("aif_voxels", "aif_candidates", "vof_voxels", "chunk_voxels"):
            if int(getattr(self, name)) < 1:
                bad(name, "use a positive count")
        for name in ("aif_candidate_fraction", "aif_early_fraction"):
            if not 0 < getattr(self, name) <= 1:
                bad(name, "use a fraction in (0, 1]")

    @property
    def kh(self) -> float:
        """Haematocrit correction ``kH = (1 - Hct_large) / (1 - Hct_small)`` (dimensionless, ~0.733)."""
        return (1.0 - self.hct_large_vessel) / (1.0 - self.hct_small_vessel)

    def replace(self, **changes) -> PerfusionSettings:
        return dataclasses.replace(self, **changes)

    def with_method(self, method: str, threshold: float | None = None) -> PerfusionSettings:
        """A copy with another deconvolution method (and optionally its regularisation parameter)."""
        dec = self.deconvolution.replace(method=method)
        return self.replace(deconvolution=dec if threshold is None else dec.with_threshold(threshold))


# ==================================================================================================
# Curve level: the maps of a set of enhancement curves
# ==================================================================================================
def smoothing_matrix(n_frames: int, sigma_frames: float) -> np.ndarray:
    """(N, N) matrix ``S`` with ``S @ c`` the Gaussian-smoothed curve ``c`` (SD in frames, edges repeated)."""
    eye = np.eye(n_frames)
    if sigma_frames <= 0:
        return eye
    return ndimage.gaussian_filter1d(eye, sigma_frames, axis=0, mode="nearest", truncate=4.0)


def trapezoid_area(curves: np.ndarray, dt: float) -> np.ndarray:
    """Area under curves sampled every ``dt`` s (trapezoidal rule, last axis), in curve unit * s."""
    c = np.asarray(curves, dtype=np.float32)
    return (c.sum(axis=-1) - 0.5 * (c[..., 0] + c[..., -1])) * np.float32(dt)


def _peak_offsets(y: np.ndarray, j: np.ndarray, wrap: bool) -> np.ndarray:
    """Sub-sample offset (in samples, within +-0.5) of the maximum of a parabola through y[j-1], y[j], y[j+1]."""
    n = y.shape[1]
    rows = np.arange(y.shape[0])
    if wrap:
        lo, hi = (j - 1) % n, (j + 1) % n
        valid = np.ones(j.shape, bool)
    else:
        lo, hi = np.clip(j - 1, 0, n - 1), np.clip(j + 1, 0, n - 1)
        valid = (j > 0) & (j < n - 1)
    ym, y0, yp = y[rows, lo], y[rows, j], y[rows, hi]
    den = ym - 2.0 * y0 + yp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(valid & (den < 0), 0.5 * (ym - yp) / den, 0.0)
    return np.clip(off, -0.5, 0.5).astype(np.float32)


class CurveAnalyser:
    """Perfusion maps of enhancement curves by one AIF.

    Args:
        aif: arterial enhancement (HU above baseline) per frame, shape (N,).
        dt: frame interval, s.
        settings: :class:`PerfusionSettings` (deconvolution, constants, smoothing).

    Calling it on curves (n, N) in HU above baseline returns ``{name: (n,) float32}`` for
    :data:`MAP_NAMES`, plus ``"residue_peak"`` (max k, 1/s).

    Derivation of the units. The indicator-dilution model (as ``strokelab.data.phantom`` simulates it) is::

        C(t) = (rho / kH) * F * (AIF (x) R)(t)          C, AIF in HU; (x) convolution in s
             = (AIF (x) k)(t),   k(t) = (rho / kH) * F * R(t)

    with ``F`` the flow per gram of tissue in ml/g/s and ``R(0) = 1``. ``rho`` (g/ml) turns "per gram" into
    "per ml of tissue", ``1/kH`` the large-vessel haematocrit of the AIF into the capillary one. The
    deconvolution solves ``c = dt * A k`` with ``dt`` in s, so ``k`` comes out in 1/s, and since R peaks at 1::

        F   [ml/g/s]       = (kH / rho) * max k
        CBF [ml/100g/min]  = (kH / rho) * max k * 100 [g -> 100 g] * 60 [s -> min]

    Integrating the model over all t (the convolution of two functions has the product of their areas)::

        area(C) = (rho / kH) * F * MTT * area(AIF) = (rho / kH) * CBV[ml/g] * area(AIF)
        CBV [ml/100g] = (kH / rho) * area(C) / area(AIF) * 100

    Both areas are taken with the same rule and the same ``dt`` (s), so the ratio is dimensionless and does
    not depend on ``dt``. The pitfall this guards against: integrating one curve with ``dx=dt`` and the other
    with unit spacing (a mistake reported in open-source CTP code: tissue integrated with the frame interval,
    the AIF per sample) scales CBV by ``dt`` (or ``1/dt``): invisible at ``dt = 1 s``, 2x wrong at ``dt = 2 s``.
    Finally the central volume theorem ``CBV = CBF * MTT`` with CBF per minute gives ``MTT [s] = 60 * CBV / CBF``.

    Residue samples ``j >= N`` of the block-circulant methods are negative times (tissue before AIF); Tmax
    is clipped at 0 s. CBF and CBV are clipped at 0 (noise); MTT is 0 where CBF is 0 and at most ``mtt_max_s``.
    """

    def __init__(self, aif: np.ndarray, dt: float, settings: PerfusionSettings = PerfusionSettings()):
        aif = np.asarray(aif, dtype=np.float64).ravel()
        self.dt = float(dt)
        self.settings = settings
        self.n_frames = aif.size
        sigma = settings.smoothing_sigma_s / self.dt
        self.smooth = smoothing_matrix(aif.size, sigma).astype(np.float32) if sigma > 0 else None
        self.aif = (self.smooth @ aif) if self.smooth is not None else aif
        self.smooth_t = None if self.smooth is None else np.ascontiguousarray(self.smooth.T)
        self.deconvolver = Deconvolver(self.aif, self.dt, settings.deconvolution)
        self.aif_area = float(trapezoid_area(self.aif, self.dt))
        if not self.aif_area > 0:
            raise DataError("AIF", "has no positive area under the curve", "choose voxels inside an artery that enhance")
        factor = settings.kh / settings.tissue_density
        self.cbf_factor = np.float32(factor * 100.0 * 60.0)  # (1/s) -> ml/100g/min
        self.cbv_factor = np.float32(factor * 100.0 / self.aif_area)  # HU*s -> ml/100g
        self.mtt_max = float(settings.mtt_max_s if settings.mtt_max_s is not None else aif.size * self.dt)
        self.times = self.deconvolver.times.astype(np.float32)

    def __call__(self, curves: np.ndarray) -> dict[str, np.ndarray]:
        c = np.asarray(curves, dtype=np.float32)
        if self.smooth_t is not None:
            c = c @ self.smooth_t
        k = self.deconvolver.residue(c)
        rows = np.arange(k.shape[0])
        j = k.argmax(axis=1)
        kmax = k[rows, j]
        tmax = self.times[j]
        jt = c.argmax(axis=1)
        ttp = jt.astype(np.float32) * np.float32(self.dt)
        if self.settings.subframe_peaks:
            tmax = tmax + _peak_offsets(k, j, self.deconvolver.circulant) * np.float32(self.dt)
            ttp = ttp + _peak_offsets(c, jt, False) * np.float32(self.dt)
        cbf = np.maximum(kmax, 0.0) * self.cbf_factor
        cbv = np.maximum(trapezoid_area(c, self.dt), 0.0) * self.cbv_factor
        with np.errstate(divide="ignore", invalid="ignore"):
            mtt = np.where(cbf > 0, 60.0 * cbv / cbf, 0.0)
        mtt = np.clip(mtt, 0.0, self.mtt_max)
        f32 = np.float32
        return {
            "cbf": cbf.astype(f32),
            "cbv": cbv.astype(f32),
            "mtt": mtt.astype(f32),
            "tmax": np.maximum(tmax, 0.0).astype(f32),
            "ttp": np.clip(ttp, 0.0, (self.n_frames - 1) * self.dt).astype(f32),
            "residue_peak": kmax.astype(f32),
        }


# ==================================================================================================
# Volume level
# ==================================================================================================
@dataclass
class PerfusionResult:
    """Maps of one CTP series and how they were obtained.

    maps: ``{cbf, cbv, mtt, tmax, ttp}`` 3D float32 in the units of :data:`MAP_UNITS`, 0 outside ``brain``.
    brain: the brain mask used (3D bool).
    aif: the AIF used (HU above baseline per frame, after VOF scaling, before smoothing).
    aif_voxels: (m, 3) voxel indices averaged into the AIF (empty for a given curve).
    vof: the venous output function (HU above baseline) or None; aif_scale: factor applied to the AIF.
    baseline_frames: the frames ``[0, baseline_frames)`` averaged into the baseline image.
    dt: frame interval (s); times: frame times (s, first frame at 0).
    """

    maps: dict[str, np.ndarray]
    brain: np.ndarray
    aif: np.ndarray
    aif_voxels: np.ndarray
    vof: np.ndarray | None
    aif_scale: float
    baseline_frames: int
    dt: float
    times: np.ndarray
    settings: PerfusionSettings
    timings: dict[str, float] = field(default_factory=dict)

    def aif_table(self) -> str:
        """CSV text: ``time_s,aif_dhu[,vof_dhu]`` per frame."""
        head = "time_s,aif_dhu" + (",vof_dhu" if self.vof is not None else "")
        rows = [head]
        for i, t in enumerate(self.times):
            row = f"{t:.4f},{self.aif[i]:.4f}"
            if self.vof is not None:
                row += f",{self.vof[i]:.4f}"
            rows.append(row)
        return "\n".join(rows) + "\n"

    def aif_info(self) -> dict[str, Any]:
        """JSON-ready description of the AIF and the settings."""
        return {
            "dt_s": self.dt,
            "baseline_frames": int(self.baseline_frames),
            "aif_dhu": [round(float(v), 4) for v in self.aif],
            "aif_voxels_ijk": [[int(v) for v in row] for row in self.aif_voxels],
            "aif_scale_from_vof": round(float(self.aif_scale), 6),
            "vof_dhu": None if self.vof is None else [round(float(v), 4) for v in self.vof],
            "brain_voxels": int(self.brain.sum()),
            "units": MAP_UNITS,
            "settings": _jsonable(dataclasses.asdict(self.settings)),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Layout:
    """Flat voxel indexing that matches the series' memory order (F for NIfTI, C for numpy-made arrays),
    so that a voxel's curve is gathered without copying the whole series."""

    def __init__(self, series: np.ndarray):
        self.shape = series.shape[:3]
        self.n_frames = series.shape[3]
        self.order = "F" if (series.flags.f_contiguous and not series.flags.c_contiguous) else "C"
        if not (series.flags.f_contiguous or series.flags.c_contiguous):
            series = np.ascontiguousarray(series)
        self.series = series
        self.flat = series.reshape(-1, self.n_frames, order=self.order)  # a view

    def indices(self, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask.ravel(order=self.order))

    def unravel(self, idx: np.ndarray) -> np.ndarray:
        return np.stack(np.unravel_index(idx, self.shape, order=self.order), axis=1)

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Curves (len(idx), N) as float32."""
        return self.flat[idx].astype(np.float32, copy=False)

    def volume(self, flat_values: np.ndarray) -> np.ndarray:
        return flat_values.reshape(self.shape, order=self.order)

    def frame(self, t: int) -> np.ndarray:
        return self.series[..., t]

    def time_max(self) -> np.ndarray:
        """Maximum over time per voxel (3D, series dtype)."""
        if self.order == "F":
            out = np.array(self.frame(0), copy=True)
            for t in range(1, self.n_frames):
                np.maximum(out, self.frame(t), out=out)
            return out
        return self.series.max(axis=-1)

    def time_sum(self) -> np.ndarray:
        """Sum over time per voxel (3D float32)."""
        if self.order == "F":
            out = np.zeros(self.shape, np.float32)
            for t in range(self.n_frames):
                out += self.frame(t)
            return out
        return self.series.sum(axis=-1, dtype=np.float32)

    def frame_mean(self, frames: int) -> np.ndarray:
        """Mean of frames [0, frames) per voxel (3D float32)."""
        out = np.zeros(self.shape, np.float32)
        for t in range(frames):
            out += self.frame(t)
        return out / np.float32(frames)


def bolus_arrival(curve: np.ndarray, rise_fraction: float = 0.1) -> int:
    """First frame at which ``curve`` exceeds its first value by ``rise_fraction`` of its peak rise.

    Returns 0 for a curve that never rises."""
    c = np.asarray(curve, dtype=np.float64)
    rise = c - c[0]
    peak = rise.max()
    if not peak > 0:
        return 0
    return int(np.argmax(rise > rise_fraction * peak))


def baseline_frame_count(curve: np.ndarray, rise_fraction: float = 0.1) -> int:
    """Number of pre-bolus frames: those before the bolus arrival less one (the arrival frame's predecessor
    may already hold the first rise), at least one."""
    return max(1, bolus_arrival(curve, rise_fraction) - 1)


def global_curve(layout: _Layout, hu_range: tuple[float, float] = (-50.0, 150.0), max_voxels: int = 200_000) -> np.ndarray:
    """Mean HU per frame over soft-tissue voxels of the first frame (a regular subsample of them)."""
    shape = layout.shape
    step = max(1, int(math.ceil(math.sqrt(shape[0] * shape[1] * shape[2] / max_voxels))))
    sl = (slice(None, None, step), slice(None, None, step), slice(None))
    first = layout.frame(0)[sl]
    sel = (first >= hu_range[0]) & (first <= hu_range[1])
    if not sel.any():
        sel = np.ones_like(sel)
    return np.array([float(layout.frame(t)[sl][sel].mean(dtype=np.float64)) for t in range(layout.n_frames)])


def brain_mask(baseline: np.ndarray, settings: PerfusionSettings = PerfusionSettings()) -> np.ndarray:
    """Brain mask (3D bool) from a baseline (unenhanced) CT image in HU; axis 2 is the slice axis.

    In-plane Gaussian smoothing (1 voxel; HU clipped to 100 HU around the range first) -> ``brain_hu``
    range -> minus bone (> ``bone_hu``) and its in-plane neighbours -> in-plane erosion by
    ``brain_erosion_vox`` -> largest 6-connected component -> grown back by the same amount inside the
    range -> holes filled (3D, then per slice).
    """
    import cc3d

    lo, hi = settings.brain_hu
    # Clip before smoothing so that bone (~1000 HU) does not spill into the brain voxels next to it.
    clipped = np.clip(np.asarray(baseline, dtype=np.float32), lo - 100.0, hi + 100.0)
    base = ndimage.gaussian_filter(clipped, (1.0, 1.0, 0.0), mode="nearest", truncate=3.0)
    del clipped
    cand = (base >= lo) & (base <= hi)
    inplane = ndimage.generate_binary_structure(3, 1)
    inplane[:, :, 0] = inplane[:, :, 2] = False
    bone = ndimage.binary_dilation(np.asarray(baseline) > settings.bone_hu, inplane)
    cand &= ~bone
    r = int(settings.brain_erosion_vox)
    core = ndimage.binary_erosion(cand, inplane, iterations=r) if r > 0 else cand
    if not core.any():
        return np.zeros(cand.shape, bool)
    labels = cc3d.connected_components(core.view(np.uint8), connectivity=6)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    mask = labels == int(np.argmax(counts))
    del labels
    if r > 0:
        mask = ndimage.binary_dilation(mask, inplane, iterations=r, mask=cand)
    mask = ndimage.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def _curve_features(curves: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """Peak (HU), time to peak (s), width at half maximum (s, frames counted), tail/peak of curves (m, N)."""
    sm = ndimage.gaussian_filter1d(np.asarray(curves, np.float32), 1.0, axis=1, mode="nearest")
    peak = sm.max(axis=1)
    ttp = sm.argmax(axis=1) * dt
    fwhm = (sm >= 0.5 * peak[:, None]).sum(axis=1) * dt
    tail = sm[:, -3:].mean(axis=1) / np.maximum(peak, 1e-6)
    return {"peak": peak, "ttp": ttp, "fwhm": fwhm, "tail": np.clip(tail, 0.0, 1.0)}


def select_aif(
    curves: np.ndarray, dt: float, n_voxels: int = 5, early_fraction: float = 0.25, min_ttp_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pick arterial curves among candidate enhancement curves (m, N) in HU above baseline.

    Keeps the candidates that peak early (time to peak within the earliest ``early_fraction`` of them and
    after ``min_ttp_s``, the end of the baseline) and have a width of at least two frames; scores them by
    ``peak / FWHM * (1 - tail/peak)`` (high, narrow, back to baseline) and returns (indices of the best
    ``n_voxels`` into ``curves``, their mean curve).
    """
    f = _curve_features(curves, dt)
    ok = (f["peak"] > 0) & (f["fwhm"] >= 2 * dt) & (f["ttp"] >= min_ttp_s)
    if not ok.any():
        ok = f["peak"] > 0
    if not ok.any():
        return np.zeros(0, np.int64), np.zeros(curves.shape[1], np.float32)
    cut = np.quantile(f["ttp"][ok], early_fraction)
    early = ok & (f["ttp"] <= cut + 1e-6)
    score = np.where(early, f["peak"] / np.maximum(f["fwhm"], dt) * (1.0 - f["tail"]), -np.inf)
    best = np.argsort(-score, kind="stable")[: min(n_voxels, int(early.sum()))]
    return best, curves[best].mean(axis=0)


def select_vof(curves: np.ndarray, dt: float, aif_ttp_s: float, n_voxels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Venous output function: of candidate curves (m, N), those peaking after the AIF (by more than one
    frame) with the largest area. Returns (indices, mean curve); empty indices if none is late."""
    f = _curve_features(curves, dt)
    area = trapezoid_area(curves, dt)
    late = (f["ttp"] > aif_ttp_s + dt) & (area > 0)
    if not late.any():
        return np.zeros(0, np.int64), np.zeros(curves.shape[1], np.float32)
    score = np.where(late, area, -np.inf)
    best = np.argsort(-score, kind="stable")[: min(n_voxels, int(late.sum()))]
    return best, curves[best].mean(axis=0)


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values (unordered)."""
    k = min(k, values.size)
    if k == values.size:
        return np.arange(values.size)
    return np.argpartition(-values, k - 1)[:k]


# In-plane Gaussians wider than this many voxels (SD) are computed on tiles (see _InPlaneGaussian).
TILED_GAUSSIAN_MIN_VOXELS = 6.0


def _tile_factor(sigma_vox: float) -> int:
    """Tile edge (voxels) for a Gaussian of SD ``sigma_vox``: 1 (exact, voxel grid) below
    :data:`TILED_GAUSSIAN_MIN_VOXELS`, else ``floor(sigma / 3)``, which leaves an SD of about 3 tiles to
    smooth on the tile grid (bilinear read-out is then accurate to ~1 %)."""
    return 1 if sigma_vox < TILED_GAUSSIAN_MIN_VOXELS else int(sigma_vox // 3)


class _InPlaneGaussian:
    """In-plane Gaussian smoothing of a slab (Z, Y, X), read out at the voxels of ``mask`` (Z, Y, X): set up
    once per slab, applied frame by frame. Values outside the region of interest are zero, which is what
    ``mode="constant"`` assumes beyond the slab's edges, so the slab needs no margin for the filter.

    A Gaussian of SD s voxels costs ~3 s multiply-adds per value along each axis (95 taps per axis for 7 mm
    on 0.45 mm voxels). Wide ones are computed on f x f tiles instead (:func:`_tile_factor`): the tile
    means, a Gaussian of SD ``sqrt(s^2 - (f^2 - 1) / 12 - v) / f`` on the tile grid, and a bilinear read-out
    at the voxels. The variances of the three steps add up to ``s^2`` (the tile mean adds ``(f^2 - 1) / 12``,
    the read-out ``v``, the mean of ``a (1 - a) f^2`` over the voxels' fractional offsets ``a``), with f^2
    times fewer values to filter and 4 multiply-adds per voxel read. With f = 1 the read-out is exact (the
    weights are 1 and 0), and the smoothing is the plain Gaussian."""

    def __init__(self, mask: np.ndarray, sigma_yx: tuple[float, float]):
        z_n, y_n, x_n = mask.shape
        self.f = (_tile_factor(sigma_yx[0]), _tile_factor(sigma_yx[1]))
        self.tiles = (-(-y_n // self.f[0]), -(-x_n // self.f[1]))
        self.padded_shape = (z_n, self.tiles[0] * self.f[0], self.tiles[1] * self.f[1])
        sigma_tiles = []
        for sd, fa in zip(sigma_yx, self.f):
            offsets = ((np.arange(fa) + 0.5) / fa - 0.5) % 1.0
            var = sd * sd - (fa * fa - 1) / 12.0 - float(np.mean(offsets * (1.0 - offsets))) * fa * fa
            sigma_tiles.append(math.sqrt(max(var, 0.0)) / fa)
        self.sigma_tiles = (0.0, *sigma_tiles)
        # Read-out on the tile grid with one tile of zeros either side (every voxel lies between two tile
        # centres): flat index of the lower neighbour, and (offset, weight) of the 1, 2 or 4 neighbours.
        row = self.tiles[1] + 2
        plane = (self.tiles[0] + 2) * row
        zz, yy, xx = np.nonzero(mask)
        self.index = zz.astype(np.int64) * plane
        self.terms: list[tuple[int, np.ndarray]] = [(0, np.ones(zz.size, np.float32))]
        for coord, fa, stride in ((yy, self.f[0], row), (xx, self.f[1], 1)):
            u = (coord + 0.5) / fa + 0.5  # position on the padded tile grid; tile j's centre is at j
            j = np.floor(u).astype(np.int64)
            self.index += j * stride
            if fa == 1:
                continue  # on a tile centre
            w = (u - j).astype(np.float32)
            self.terms = [(o, t * (1 - w)) for o, t in self.terms] + [(o + stride, t * w) for o, t in self.terms]

    def buffer(self) -> np.ndarray:
        """A zeroed float32 slab of :attr:`padded_shape` (Y and X whole numbers of tiles)."""
        return np.zeros(self.padded_shape, np.float32)

    def __call__(self, slab: np.ndarray) -> np.ndarray:
        """``slab`` from :meth:`buffer` (zero beyond the mask's Y, X extent) -> smoothed values at the mask's
        voxels (m,), in ``np.nonzero(mask)`` order."""
        z_n = slab.shape[0]
        (ty, tx), (fy, fx) = self.tiles, self.f
        coarse = slab if self.f == (1, 1) else slab.reshape(z_n, ty, fy, tx, fx).mean(axis=(2, 4), dtype=np.float32)
        coarse = ndimage.gaussian_filter(coarse, self.sigma_tiles, mode="constant", truncate=3.0)
        flat = np.pad(coarse, ((0, 0), (1, 1), (1, 1))).ravel()
        off, w = self.terms[0]
        out = flat[self.index + off] * w
        for off, w in self.terms[1:]:
            out += flat[self.index + off] * w
        return out


def _maps_smoothed(
    layout: _Layout,
    baseline: np.ndarray,
    brain: np.ndarray,
    analyser: CurveAnalyser,
    maps: dict[str, np.ndarray],
    settings: PerfusionSettings,
    spacing,
    source: str,
) -> None:
    """Maps with in-plane smoothing of the enhancement inside the brain, slab by slab of slices:
    ``smooth(dHU * w) / smooth(w)`` (:class:`_InPlaneGaussian`) over the brain's in-plane bounding box, with
    ``w`` the brain mask less the vessels (peak enhancement > ``vessel_hu``), which keep their own curves.

    Slabs are handled transposed, (Z, Y, X), and frame by frame: a frame of a NIfTI series (Fortran order)
    is then read in memory order, and no 4D copy of the slab is made."""
    n = layout.n_frames
    sigma_yx = (settings.spatial_sigma_mm / float(spacing[1]), settings.spatial_sigma_mm / float(spacing[0]))
    xs, ys = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    box = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1))
    per_slice = (xs[-1] + 1 - xs[0]) * (ys[-1] + 1 - ys[0]) * n
    nz = max(1, min(layout.shape[2], (16 * 1024 * 1024) // max(per_slice, 1)))  # ~64 MB of float32 per slab
    step = int(settings.chunk_voxels)
    for z0 in range(0, layout.shape[2], nz):
        sl = (*box, slice(z0, min(z0 + nz, layout.shape[2])))
        mask = np.ascontiguousarray(brain[sl].T)  # (Z, Y, X)
        if not mask.any():
            continue
        raw = np.empty((n, int(mask.sum())), np.float32)  # unsmoothed enhancement, frame by frame
        for t in range(n):
            raw[t] = layout.series[(*sl, t)].T[mask]
        raw -= baseline[sl].T[mask]
        if not np.isfinite(raw).all():
            raise DataError(source, "contains NaN or Inf values", "re-export the series")
        vessel = raw.max(axis=0) > settings.vessel_hu
        weight = (~vessel).astype(np.float32)
        smooth = _InPlaneGaussian(mask, sigma_yx)
        slab = smooth.buffer()
        inside = slab[:, : mask.shape[1], : mask.shape[2]]  # a view
        inside[mask] = weight
        norm = smooth(slab)
        curves = np.empty((n, raw.shape[1]), np.float32)
        for t in range(n):
            inside[mask] = raw[t] * weight
            curves[t] = smooth(slab)
        curves /= np.maximum(norm, 1e-6)
        keep_raw = vessel | (norm < 1e-3)  # vessels, and voxels with no tissue neighbour
        curves[:, keep_raw] = raw[:, keep_raw]
        del raw
        curves = np.ascontiguousarray(curves.T)  # (m, N)
        values = {name: np.empty(curves.shape[0], np.float32) for name in MAP_NAMES}
        for s in range(0, curves.shape[0], step):
            part = analyser(curves[s : s + step])
            for name in MAP_NAMES:
                values[name][s : s + step] = part[name]
        for name in MAP_NAMES:
            maps[name][sl].T[mask] = values[name]


def compute_maps(
    series: np.ndarray,
    dt: float,
    settings: PerfusionSettings = PerfusionSettings(),
    aif_mask: np.ndarray | None = None,
    aif_curve: np.ndarray | None = None,
    brain: np.ndarray | None = None,
    spacing: tuple[float, float, float] | None = None,
    source: str = "CTP series",
    aif_source: str = "AIF mask",
) -> PerfusionResult:
    """Perfusion maps of a 4D CTP series.

    Args:
        series: (X, Y, Z, N) CT numbers in HU, time last (any real dtype; int16 keeps memory low; a
            Fortran-ordered array, as nibabel returns, is processed without copies). Axis 2 is the slice axis.
        dt: frame interval, s.
        settings: :class:`PerfusionSettings`.
        aif_mask: optional (X, Y, Z) mask (> 0.5) of arterial voxels whose mean curve is the AIF.
        aif_curve: optional AIF per frame (HU or HU above baseline: its mean over the baseline frames is
            subtracted). Overrides ``aif_mask`` and automatic selection.
        brain: optional (X, Y, Z) brain mask (> 0.5) instead of the automatic one.
        spacing: voxel size in mm (needed only for ``spatial_sigma_mm``).
        source, aif_source: names of the series and of the AIF mask in error messages (the files).

    Returns a :class:`PerfusionResult`. Raises ``DataError`` for unusable input (no brain, no enhancement).
    """
    import time

    clock = {"start": time.perf_counter()}

    def lap(name: str) -> None:
        now = time.perf_counter()
        clock[name] = now - clock.pop("_last", clock["start"])
        clock["_last"] = now

    series = np.asarray(series)
    if series.ndim != 4:
        raise DataError(
            source, f"is {series.ndim}D with shape {series.shape}, expected a 4D series (time last)", "give the 4D CTP"
        )
    n = series.shape[3]
    if n < MIN_FRAMES:
        raise DataError(source, f"has {n} frames", f"give a CTP series with at least {MIN_FRAMES} frames")
    if not (np.isfinite(dt) and dt > 0):
        raise DataError(source, f"frame interval is {dt}", "give the positive frame interval in s (--dt)")
    if not np.issubdtype(series.dtype, np.number) or np.issubdtype(series.dtype, np.complexfloating):
        raise DataError(source, f"has data type {series.dtype}", "give real-valued CT numbers (HU)")
    layout = _Layout(series)
    shape = layout.shape
    if settings.spatial_sigma_mm > 0 and (spacing is None or len(spacing) < 2 or min(spacing[:2]) <= 0):
        raise ConfigError("perfusion.spatial_sigma_mm", f"needs the voxel spacing in mm, got {spacing}", "pass spacing=zooms[:3]")
    for name, m in ((aif_source, aif_mask), ("brain mask", brain)):
        if m is not None and tuple(np.shape(m)) != shape:
            raise DataError(name, f"has shape {tuple(np.shape(m))}, the series {shape}", "give a mask on the CTP grid")

    # 1. Baseline from the global curve.
    n_base = baseline_frame_count(global_curve(layout), settings.bolus_rise_fraction)
    baseline = layout.frame_mean(n_base)
    if np.issubdtype(series.dtype, np.floating) and not np.isfinite(baseline).all():
        raise DataError(source, "contains NaN or Inf values", "re-export the series")
    lap("baseline")

    # 2. Brain mask.
    brain_m = brain_mask(baseline, settings) if brain is None else np.asarray(brain) > 0.5
    if not brain_m.any():
        raise DataError(
            source,
            f"no brain found (no connected region of {settings.brain_hu[0]:g}-{settings.brain_hu[1]:g} HU"
            " in the pre-bolus frames)",
            "check that the series is a head CTP in HU (rescale slope/intercept applied) or give a brain mask",
        )
    idx = layout.indices(brain_m)
    lap("brain_mask")

    # 3. AIF.
    aif_idx = np.zeros(0, np.int64)
    vof = None
    peak = None
    if aif_curve is not None:
        raw_aif = np.asarray(aif_curve, dtype=np.float64).ravel()
        if raw_aif.size != n:
            raise DataError("AIF curve", f"has {raw_aif.size} samples, the series {n} frames", "give one value per frame")
        if not np.isfinite(raw_aif).all():
            raise DataError("AIF curve", "contains NaN or Inf", "give finite values")
    else:
        if aif_mask is not None:
            aif_idx = layout.indices(np.asarray(aif_mask) > 0.5)
            if aif_idx.size == 0:
                raise DataError(aif_source, "contains no voxel > 0.5", "mark the arterial voxels with 1")
        else:
            peak = layout.time_max().astype(np.float32)
            if np.issubdtype(series.dtype, np.floating) and not np.isfinite(peak).all():
                raise DataError(source, "contains NaN or Inf values", "re-export the series")
            peak -= baseline
            m = max(settings.aif_voxels, min(settings.aif_candidates, int(math.ceil(settings.aif_candidate_fraction * idx.size))))
            cand = idx[_top_k(peak.ravel(order=layout.order)[idx], m)]
            curves = layout.gather(cand) - baseline.ravel(order=layout.order)[cand][:, None]
            best, _ = select_aif(curves, dt, settings.aif_voxels, settings.aif_early_fraction, min_ttp_s=n_base * dt)
            if best.size == 0:
                raise DataError(source, "no enhancing voxel found for the AIF", "check the series or give --aif-mask")
            aif_idx = cand[best]
        raw_aif = layout.gather(aif_idx).mean(axis=0).astype(np.float64)
    # The baseline ends before the AIF's own arrival too (arteries enhance before the global curve).
    n_aif = baseline_frame_count(raw_aif, settings.bolus_rise_fraction)
    if n_aif < n_base:
        n_base = n_aif
        baseline = layout.frame_mean(n_base)
    aif = raw_aif - raw_aif[:n_base].mean()
    if not aif.max() > 0:
        raise DataError(
            aif_source if aif_mask is not None else source, "the AIF does not enhance", "choose voxels inside a feeding artery"
        )
    lap("aif")

    # 4. Optional VOF scaling.
    scale = 1.0
    base_flat = baseline.ravel(order=layout.order)
    if settings.vof_scaling:
        area = layout.time_sum()
        area -= n * baseline
        m = max(settings.vof_voxels, min(settings.aif_candidates, int(math.ceil(settings.aif_candidate_fraction * idx.size))))
        cand = idx[_top_k(area.ravel(order=layout.order)[idx], m)]
        del area
        curves = layout.gather(cand) - base_flat[cand][:, None]
        aif_ttp = float(np.argmax(ndimage.gaussian_filter1d(aif, 1.0, mode="nearest")) * dt)
        best, vof_curve = select_vof(curves, dt, aif_ttp, settings.vof_voxels)
        if best.size == 0:
            log.warning("%s: no venous output function found (no late-peaking curve); AIF not scaled", source)
        else:
            vof = vof_curve.astype(np.float64)
            scale = float(trapezoid_area(vof, dt) / trapezoid_area(aif, dt))
            aif = aif * scale
        lap("vof")

    # 5-6. Maps, chunk by chunk (or slab by slab with spatial smoothing).
    analyser = CurveAnalyser(aif, dt, settings)
    order = layout.order
    check_finite = bool(np.issubdtype(series.dtype, np.floating))
    maps = {name: np.zeros(shape, np.float32, order=order) for name in MAP_NAMES}
    if settings.spatial_sigma_mm > 0:
        _maps_smoothed(layout, baseline, brain_m, analyser, maps, settings, spacing, source)
    else:
        flat_out = {name: v.reshape(-1, order=order) for name, v in maps.items()}  # views
        step = int(settings.chunk_voxels)
        for s in range(0, idx.size, step):
            part = idx[s : s + step]
            curves = layout.gather(part)
            if check_finite and not np.isfinite(curves).all():
                raise DataError(source, "contains NaN or Inf values", "re-export the series")
            curves -= base_flat[part][:, None]
            values = analyser(curves)
            for name in MAP_NAMES:
                flat_out[name][part] = values[name]
    lap("maps")
    clock.pop("_last", None)
    clock.pop("start")
    return PerfusionResult(
        maps=maps,
        brain=brain_m,
        aif=np.asarray(aif, np.float64),
        aif_voxels=layout.unravel(aif_idx),
        vof=vof,
        aif_scale=scale,
        baseline_frames=n_base,
        dt=float(dt),
        times=np.arange(n) * float(dt),
        settings=settings,
        timings=clock,
    )


# ==================================================================================================
# Files
# ==================================================================================================
_TIME_UNIT_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def load_ctp(path: str | Path, dt: float | None = None) -> tuple[np.ndarray, nib.Nifti1Image, float]:
    """Read a 4D CTP NIfTI (time last) fully, keeping an unscaled integer type (int16 stays int16).

    Returns (series, image, dt in s). ``dt`` given here overrides the header's ``zooms[3]`` (converted
    from ms/us by the header's time unit; an unknown unit is taken as s). Raises ``DataError`` naming the
    file for: missing, unreadable or truncated, not 4D, fewer than 8 frames, no frame interval, and every
    hostile header :func:`strokelab.io.read_image` refuses (before a voxel is read).
    """
    import zlib

    from strokelab.io import path_problem, read_image

    path = Path(path)
    if not path.exists() and path_problem(path) is None:
        raise DataError(path, "file is missing", "check the path")
    img, shape = read_image(path, 4)  # the header checks of every reader: 4D, real voxels, size, spacing, affine, scaling
    try:
        proxy = img.dataobj
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        unscaled = (slope in (None, 1.0) or np.isnan(slope)) and (inter in (None, 0.0) or np.isnan(inter))
        if unscaled and hasattr(proxy, "get_unscaled") and np.issubdtype(img.get_data_dtype(), np.number):
            series = np.asarray(proxy.get_unscaled())
        else:
            series = np.asarray(proxy, dtype=np.float32)
        series = series.reshape(shape)  # (x, y, z, t, 1) -> (x, y, z, t)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(path, f"unreadable or truncated image ({type(exc).__name__})", "re-export or re-download it") from None
    if series.ndim != 4:
        raise DataError(
            path, f"is {series.ndim}D with shape {series.shape}, expected a 4D CTP series (time last)", "give the 4D series"
        )
    if series.shape[3] < MIN_FRAMES:
        raise DataError(path, f"has {series.shape[3]} frames", f"give a CTP series with at least {MIN_FRAMES} frames")
    if dt is None:
        zooms = img.header.get_zooms()
        raw = float(zooms[3]) if len(zooms) > 3 else 0.0
        unit = img.header.get_xyzt_units()[1]
        dt = raw * _TIME_UNIT_S.get(unit, 1.0)
        if not (np.isfinite(dt) and dt > 0):
            raise DataError(path, f"has no frame interval in its header (zooms[3] = {raw:g})", "give it with --dt SECONDS")
    elif not (np.isfinite(dt) and dt > 0):
        raise DataError(path, f"frame interval --dt {dt:g} is not positive", "give the frame interval in s")
    return series, img, float(dt)


def load_mask(path: str | Path, shape: tuple[int, int, int], what: str = "AIF mask") -> np.ndarray:
    """Read a 3D mask (> 0.5) on the CTP grid; ``DataError`` naming the file if missing, unreadable,
    of another shape, or empty."""
    from strokelab.io import load_nifti

    if not Path(path).exists():
        raise DataError(path, f"{what} file is missing", "check the path")
    data, _ = load_nifti(path, expect_3d=True)
    if data.shape != tuple(shape):
        raise DataError(path, f"{what} has shape {data.shape}, the CTP {tuple(shape)}", "give a mask on the CTP's voxel grid")
    if not np.isfinite(data).all():
        raise DataError(path, f"{what} contains NaN or Inf", "re-export it")
    mask = data > 0.5
    if not mask.any():
        raise DataError(path, f"{what} is empty (no voxel > 0.5)", "mark the arterial voxels with 1")
    return mask


def map_image(data: np.ndarray, source: nib.Nifti1Image) -> nib.Nifti1Image:
    """A 3D float32 NIfTI with exactly the source's affine (sform and qform with their codes) and spacing."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), source.affine)
    sform, scode = source.get_sform(coded=True)
    qform, qcode = source.get_qform(coded=True)
    img.set_sform(source.affine if sform is None else sform, code=int(scode) if sform is not None else 2)
    if qform is not None:
        img.set_qform(qform, code=int(qcode))
    img.header.set_zooms(tuple(source.header.get_zooms()[:3]))
    img.header.set_xyzt_units(*source.header.get_xyzt_units())
    return img


def output_stem(path: str | Path) -> str:
    """``dir/CTP.nii.gz`` -> ``CTP``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def write_outputs(result: PerfusionResult, source: nib.Nifti1Image, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>_{cbf,cbv,mtt,tmax,ttp}.nii.gz``, ``<stem>_aif.csv`` and ``<stem>_aif.json`` into
    ``out_dir``. All files are written to temporary names first and renamed only once all are written,
    so an error leaves none of them half-written."""
    import json
    from contextlib import ExitStack

    from strokelab.io import atomic_path

    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}_{name}.nii.gz" for name in MAP_NAMES]
    csv_path, json_path = out_dir / f"{stem}_aif.csv", out_dir / f"{stem}_aif.json"
    with ExitStack() as stack:
        for name, path in zip(MAP_NAMES, paths):
            tmp = stack.enter_context(atomic_path(path))
            nib.save(map_image(result.maps[name], source), tmp)
        stack.enter_context(atomic_path(csv_path)).write_text(result.aif_table())
        stack.enter_context(atomic_path(json_path)).write_text(json.dumps(result.aif_info(), indent=1) + "\n")
    return [*paths, csv_path, json_path]

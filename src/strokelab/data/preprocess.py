"""Preprocessing, done once per (case, preprocessing config) and cached.

Steps: check the case (see ``check``), resample every modality to the experiment's spacing (linear; the
label is resampled linearly too and read as ``> 0.5`` so small lesions survive downsampling), crop to
the head's bounding box plus a margin, clip (fixed windows, e.g. CT in HU, and/or percentiles) and
z-score each modality over the head (or the whole volume, as in the TUM project), background set to 0.

A 4D series (the CTP) is an input with time as channels: missing frames zero-filled (see ``check``), then
resampled uniformly in time to ``frames`` frames, skull-stripped (``skull_strip``: the Stanford report's
intensity threshold at 10 % of the range, or a CT brain mask from the HU values) and scaled to [0, 1] inside
the brain (``normalize: minmax``) or z-scored. A regression target (e.g. ``tmax``) keeps its units (s),
clipped to ``target_range``; it is resampled and cropped like the inputs.

Wang et al. 2020's temporal features (section 3.1) are inputs derived from the raw CTP (``DERIVED_INPUTS``),
computed on the native grid before anything is resampled: ``ctp_mip``, the temporal MIP F_l (Eq. 1, HU; a CT
image: z-scored over its head) and ``ctp_window``, the CTP cropped to its perfusion window [Ts, Te] (Eq. 2-3
on q(t) summed over the whole volume, K = ``window_k``) and resampled to ``window_frames`` frames (channels,
one mean/std over all of them inside the head; the window found is in the entry's ``stats``). The CTP file is
read for them (``Serve.modalities``) but served as the raw series only when ``ctp`` itself is an input.

A synthesis target in ``UNIT_SCALED_TARGETS`` (``dwi``, the pseudo-DWI chain's target) is scaled to [0, 1]
on the native grid by :func:`scale_to_unit` (section 4.1: by its minimum and 99th percentile), then resampled;
``target_range`` does not apply to it. As an input, a DWI is z-scored like any MR image.

The cache file of a case holds the preprocessed tensors, the affine of the preprocessed grid and the
case's native grid, so a prediction can be mapped back exactly. A cache entry is keyed by a hash of the
preprocessing config and what is served (its folder), and is redone when the content of a source file
changes (sha256 of its bytes). Entries hold plain types only and are read weights-only (opening a cache
can run no code), carry a checksum (a damaged entry is rebuilt with a warning), and are filled under a
per-entry file lock (a case is computed once however many processes fill the cache); see
:mod:`strokelab.data.cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio

from strokelab.data.cache import (
    CacheWriteError,
    CorruptEntry,
    entry_lock,
    file_digest,
    plain,
    read_entry,
    write_entry,
    write_error,
)
from strokelab.data.check import LoadedCase, load_case
from strokelab.data.layouts import DERIVED_INPUTS, TIME_SERIES, Case, source_modalities
from strokelab.errors import ConfigError, DataError, DataSetError, StrokelabError
from strokelab.io import atomic_path
from strokelab.perfusion.temporal import (
    WANG_CE,
    WANG_K,
    PerfusionWindow,
    accumulated_intensity,
    crop_and_resample,
    perfusion_window,
    temporal_mip,
)

log = logging.getLogger(__name__)

# 5: plain types read weights-only, a checksum per entry, sources keyed by content (sha256); 4: derived CTP
# inputs (ctp_mip, ctp_window), unit-scaled dwi target; 3: named images
CACHE_VERSION = 5
# Head/brain foreground per modality: CT images by an HU threshold (air is about -1000 HU); perfusion
# maps and MR images are 0 outside the brain in ISLES'24, so anything non-zero is foreground. The CTP's
# temporal MIP and perfusion-window series are in HU too.
CT_MODALITIES = frozenset({"ncct", "cta", "ctp", "ctp_mip", "ctp_window"})
# Synthesis targets scaled to [0, 1] by :func:`scale_to_unit` (Wang et al. 2020, section 4.1).
UNIT_SCALED_TARGETS = frozenset({"dwi"})
UNIT_SCALE_PERCENTILE = 99.0
CT_HEAD_HU = -300.0
NORMALIZATIONS = ("zscore", "minmax", "none")
SKULL_STRIPS = ("none", "threshold", "ct")


@dataclass(frozen=True)
class Preprocessing:
    """What varies between experiments' preprocessing (``data.preprocess`` in the config)."""

    spacing: tuple[float | None, float | None, float | None] = (2.0, 2.0, 5.0)  # mm; None: keep the case's own
    crop_to_head: bool = True
    crop_margin_mm: float = 10.0
    normalize: str = "zscore"  # zscore | none
    zscore_region: str = "foreground"  # foreground | all (TUM: mean/std of the entire volume)
    clip: dict[str, tuple[float, float]] = field(default_factory=dict)  # modality -> (low, high), raw units
    clip_percentiles: tuple[float, float] | None = None  # e.g. (0.5, 99.5) over the foreground
    nan_policy: str = "error"  # error | replace (by 0, with a warning)
    affine_tol_mm: float = 1e-3
    # 4D series (time as channels) and regression targets:
    frames: int | None = None  # frames after uniform resampling in time (required for a 4D input)
    max_missing_frames: float = 0.05  # fraction of a series' frames that may be zero-filled
    skull_strip: str = "none"  # none | threshold (Stanford: fraction of the intensity range) | ct (HU brain mask)
    skull_threshold: float = 0.1  # for skull_strip=threshold
    series_smooth_mm: float = 0.0  # in-plane Gaussian SD (mm) for 4D series inside the brain mask; 0: none
    target_range: tuple[float, float] | None = None  # clip a regression target to this range (its units)
    # Wang et al.'s perfusion-window input ctp_window (see the module docstring):
    window_frames: int = WANG_CE  # Ce: frames of the window after uniform resampling
    window_k: int = WANG_K  # K: consecutive derivative signs that open / close the window (Eq. 2-3)

    @classmethod
    def from_config(cls, cfg: Any) -> Preprocessing:
        raw = dict(cfg or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError("data.preprocess", f"unknown key(s) {sorted(unknown)}", f"use {sorted(cls.__dataclass_fields__)}")
        if "spacing" in raw:
            raw["spacing"] = tuple(None if s is None else float(s) for s in raw["spacing"])
            if len(raw["spacing"]) != 3 or any(s is not None and s <= 0 for s in raw["spacing"]):
                raise ConfigError(
                    "data.preprocess.spacing",
                    f"{raw['spacing']} is not 3 positive numbers (mm) or null (keep the case's spacing on that axis)",
                    "e.g. [2, 2, 5] or [1.8, 1.8, null]",
                )
        if raw.get("clip") is not None:
            raw["clip"] = {str(k): (float(v[0]), float(v[1])) for k, v in dict(raw["clip"]).items()}
        else:
            raw["clip"] = {}
        if raw.get("clip_percentiles") is not None:
            raw["clip_percentiles"] = tuple(float(v) for v in raw["clip_percentiles"])
        if raw.get("normalize", "zscore") not in NORMALIZATIONS:
            raise ConfigError("data.preprocess.normalize", f"'{raw['normalize']}' is not one of {NORMALIZATIONS}", "pick one")
        if raw.get("skull_strip", "none") not in SKULL_STRIPS:
            raise ConfigError("data.preprocess.skull_strip", f"'{raw['skull_strip']}' is not one of {SKULL_STRIPS}", "pick one")
        if raw.get("frames") is not None and int(raw["frames"]) < 1:
            raise ConfigError("data.preprocess.frames", f"is {raw['frames']}", "use a positive number of frames, e.g. 32")
        if not 0 <= float(raw.get("max_missing_frames", 0.05)) < 1:
            raise ConfigError(
                "data.preprocess.max_missing_frames", f"is {raw['max_missing_frames']}", "use a fraction, e.g. 0.05"
            )
        if not 0 < float(raw.get("skull_threshold", 0.1)) < 1:
            raise ConfigError("data.preprocess.skull_threshold", f"is {raw['skull_threshold']}", "use a fraction, e.g. 0.1")
        if float(raw.get("series_smooth_mm", 0.0)) < 0:
            raise ConfigError("data.preprocess.series_smooth_mm", f"is {raw['series_smooth_mm']}", "use 0 (none) or a SD in mm")
        if raw.get("target_range") is not None:
            raw["target_range"] = tuple(float(v) for v in raw["target_range"])
            if len(raw["target_range"]) != 2 or raw["target_range"][0] >= raw["target_range"][1]:
                raise ConfigError("data.preprocess.target_range", f"is {raw['target_range']}", "give [low, high], e.g. [0, 20]")
        for name, default, example in (("window_frames", WANG_CE, "6 (Wang et al.)"), ("window_k", WANG_K, "5 (Wang et al.)")):
            value = raw.get(name, default)
            if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
                raise ConfigError(f"data.preprocess.{name}", f"is {value}", f"use a positive whole number, e.g. {example}")
            raw[name] = int(value)
        if raw.get("zscore_region", "foreground") not in {"foreground", "all"}:
            raise ConfigError("data.preprocess.zscore_region", f"'{raw['zscore_region']}' is not foreground or all", "pick one")
        return cls(**raw)

    def key(self, serve: Serve) -> str:
        blob = json.dumps({"v": CACHE_VERSION, "prep": asdict(self), "serve": asdict(serve)}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def scale_to_unit(volume: np.ndarray) -> np.ndarray:
    """A volume scaled to [0, 1] by its minimum and 99th percentile, values above clipped to 1 (Wang et al.
    2020, section 4.1: the DWI target "scaled to (0, 1) based on the minimal value and the 99-th percentile").

    Both are taken over the non-zero voxels only, so that the amount of air (0) around the head does not move
    the percentile; zero voxels stay 0. float32; a constant (or empty) volume gives zeros. Apply it to a
    native file to put it on the scale a ``dwi`` target is served on (preprocessing applies it before
    resampling).
    """
    data = np.asarray(volume, dtype=np.float32)
    out = np.zeros(data.shape, np.float32)
    inside = (data != 0) & np.isfinite(data)
    if not inside.any():
        return out
    values = data[inside]
    low, high = float(values.min()), float(np.percentile(values, UNIT_SCALE_PERCENTILE))
    if not high > low:
        return out
    out[inside] = np.clip((values - low) / (high - low), 0.0, 1.0)
    return out


def window_channels(series: np.ndarray, frames: int = WANG_CE, k: int = WANG_K) -> tuple[np.ndarray, PerfusionWindow]:
    """Wang et al.'s I* of a (X, Y, Z, T) series as (frames, X, Y, Z), with the window it covers: the
    perfusion window [Ts, Te] from q(t) summed over the whole volume (Eq. 2-3, ``k``), its frames resampled
    uniformly to ``frames`` (see :mod:`strokelab.perfusion.temporal`)."""
    window = perfusion_window(accumulated_intensity(series), k)
    cropped = crop_and_resample(series, window.start, window.end, frames)
    return np.ascontiguousarray(np.moveaxis(cropped, -1, 0)), window


def foreground(modality: str, data: np.ndarray) -> np.ndarray:
    if modality in CT_MODALITIES:
        return data > CT_HEAD_HU
    return data != 0


def grid_of(shape: tuple[int, ...], affine: np.ndarray) -> tio.ScalarImage:
    return tio.ScalarImage(tensor=torch.zeros((1, *shape[:3]), dtype=torch.float32), affine=affine)


def spacing_grid(shape, affine: np.ndarray, spacing) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid with ``spacing`` mm that covers the same field of view (same outer corner, same axes)."""
    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    spacing = np.asarray(spacing, dtype=np.float64)
    new_shape = np.maximum(np.round(np.asarray(shape[:3]) * zooms / spacing), 1).astype(int)
    new = np.eye(4)
    new[:3, :3] = affine[:3, :3] / zooms * spacing
    corner = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3]
    new[:3, 3] = corner - new[:3, :3] @ np.full(3, -0.5)
    return tuple(int(s) for s in new_shape), new


def resample_to_spacing(images: dict[str, np.ndarray], affine: np.ndarray, spacing) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Resample arrays on one grid, 3D (X, Y, Z) or channels-first (C, X, Y, Z), to ``spacing`` mm (linear,
    TorchIO/SimpleITK); an axis whose spacing is None keeps the grid's own (thick slabs in 2D slice mode).
    Returns the arrays (same layouts) and the new affine."""
    shape = next(iter(images.values())).shape[-3:]
    zooms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    spacing = np.array([z if s is None else float(s) for s, z in zip(spacing, zooms)], dtype=np.float64)
    if np.allclose(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0), spacing, rtol=1e-4):
        return images, np.asarray(affine)
    new_shape, new_affine = spacing_grid(shape, affine, spacing)

    def tensor(a: np.ndarray) -> torch.Tensor:
        # Keep nibabel's (Fortran) memory order: SimpleITK takes the transposed array without another copy.
        # Made C-contiguous, four ISLES-sized maps cost 1-20 s more here (load-dependent), for the same output.
        a = np.asarray(a, dtype=np.float32)
        t = torch.from_numpy(a if all(s >= 0 for s in a.strides) else np.ascontiguousarray(a))
        return t if a.ndim == 4 else t[None]

    subject = tio.Subject({name: tio.ScalarImage(tensor=tensor(a), affine=affine) for name, a in images.items()})
    out = tio.Resample((new_shape, new_affine), image_interpolation="linear")(subject)
    return {name: out[name].data.numpy() if a.ndim == 4 else out[name].data[0].numpy() for name, a in images.items()}, new_affine


def to_native(volume: np.ndarray, affine: np.ndarray, native_shape, native_affine: np.ndarray) -> np.ndarray:
    """Resample a 3D float volume from its grid onto a case's native grid (linear, 0 outside)."""
    image = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None], affine=affine)
    target = (tuple(int(s) for s in native_shape[:3]), np.asarray(native_affine, dtype=np.float64))
    out = tio.Resample(target, image_interpolation="linear")(image)  # SimpleITK pads with 0
    return out.data[0].numpy()


def _bbox(mask: np.ndarray, margin: tuple[int, int, int]) -> tuple[slice, ...]:
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    idx = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    return tuple(slice(max(int(i[0]) - m, 0), min(int(i[-1]) + 1 + m, s)) for i, m, s in zip(idx, margin, mask.shape))


def _normalise(data: np.ndarray, fg: np.ndarray, modality: str, prep: Preprocessing) -> tuple[np.ndarray, dict]:
    """Clip and normalise one input, 3D or channels-first (C, X, Y, Z); ``fg`` is its 3D region."""
    stats: dict[str, float] = {}
    if modality in prep.clip:
        low, high = prep.clip[modality]
        data = np.clip(data, low, high)
    region = fg if prep.zscore_region == "foreground" and fg.any() else np.ones_like(fg)
    region = np.broadcast_to(region, data.shape)
    if prep.clip_percentiles is not None:
        low, high = np.percentile(data[region], prep.clip_percentiles)
        data = np.clip(data, low, high)
    if prep.normalize == "zscore":
        mean, std = float(data[region].mean()), float(data[region].std())
        data = (data - mean) / max(std, 1e-6)
        stats = {"mean": mean, "std": std}
    elif prep.normalize == "minmax":  # Stanford report: [0, 1] over the (skull-stripped) brain
        low, high = float(data[region].min()), float(data[region].max())
        data = (data - low) / max(high - low, 1e-6)
        stats = {"min": low, "max": high}
    if prep.normalize != "none" and prep.zscore_region == "foreground":
        data = np.where(region, data, 0.0)
    return data.astype(np.float32), stats


def series_channels(series: np.ndarray, frames: int) -> np.ndarray:
    """A (X, Y, Z, T) series as (frames, X, Y, Z): resampled uniformly in time over the whole acquisition."""
    resampled = crop_and_resample(series, 0, series.shape[-1] - 1, frames)
    return np.ascontiguousarray(np.moveaxis(resampled, -1, 0))


def skull_strip(data: np.ndarray, modality: str, prep: Preprocessing) -> np.ndarray:
    """Brain mask (3D bool) of an input, 3D or channels-first series, by ``prep.skull_strip``.

    ``threshold`` (Stanford report, IV.A): the temporal mean above ``skull_threshold`` of its intensity range
    (1st to 99.9th percentile), holes filled slice by slice, largest connected component. ``ct``: the HU brain
    mask of :func:`strokelab.perfusion.maps.brain_mask` on the first (unenhanced) frame.
    """
    import cc3d
    from scipy import ndimage

    if prep.skull_strip == "ct":
        from strokelab.perfusion.maps import brain_mask

        if modality not in CT_MODALITIES:
            raise ConfigError("data.preprocess.skull_strip", f"'ct' needs a CT input in HU, not '{modality}'", "use threshold")
        return brain_mask(data[0] if data.ndim == 4 else data)
    image = data.mean(axis=0) if data.ndim == 4 else data
    low, high = np.percentile(image, (1.0, 99.9))
    mask = image > low + prep.skull_threshold * (high - low)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    if not mask.any():
        return mask
    labels = cc3d.connected_components(mask.view(np.uint8), connectivity=6)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def smooth_in_plane(series: np.ndarray, region: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    """In-plane Gaussian smoothing of every frame of a (C, X, Y, Z) series inside ``region`` (normalised
    convolution: nothing bleeds in from outside, e.g. from bone), 0 outside. Raw CTP voxels carry 10-20 HU of
    noise against a few HU of tissue enhancement; perfusion software smooths them too."""
    from scipy import ndimage

    sigma = (sigma_mm / float(spacing[0]), sigma_mm / float(spacing[1]), 0.0)
    weight = region.astype(np.float32)
    norm = ndimage.gaussian_filter(weight, sigma)
    inside = region & (norm > 1e-3)
    out = np.zeros_like(series, dtype=np.float32)
    for c in range(series.shape[0]):
        out[c][inside] = ndimage.gaussian_filter(series[c] * weight, sigma)[inside] / norm[inside]
    return out


@dataclass(frozen=True)
class Serve:
    """What the data side serves a model, by name (the model declares it; see ``strokelab.models``).

    ``inputs``: modalities read from the case's files and normalised (a 4D series becomes ``frames`` channels),
    or inputs derived from one (``DERIVED_INPUTS``: ``ctp_mip``, ``ctp_window``; see the module docstring).
    ``targets``: what the losses and metrics compare with: a modality (e.g. ``tmax``, kept in its units and
    clipped to ``target_range``; ``dwi`` scaled to [0, 1] instead, see ``UNIT_SCALED_TARGETS``), ``label`` (the
    follow-up lesion mask), ``weight_map`` (Wang et al.'s Eq. 9 map, from the label of the whole preprocessed
    volume) or ``brain`` (the skull-strip mask).
    ``weight_map``: its parameters ``w`` (lesion weight), ``D`` (decay) and ``unit`` (``voxel``: distances in
    voxels of the preprocessed grid, as the paper on its 2D training slices; ``mm``). With ``per_slice`` the
    distances are taken within each axial slice (2D slice mode, as the paper), else in 3D.
    """

    inputs: tuple[str, ...]
    targets: tuple[str, ...] = ("label",)
    weight_map: tuple[tuple[str, Any], ...] = ()
    per_slice: bool = False

    @classmethod
    def make(cls, inputs, targets=("label",), weight_map: dict | None = None, per_slice: bool = False) -> Serve:
        inputs, targets = tuple(str(m) for m in inputs), tuple(str(t) for t in targets)
        if not inputs:
            raise ConfigError("model.inputs", "is empty", "list the input modalities, e.g. [cbf, cbv, mtt, tmax]")
        both = sorted(set(inputs) & set(targets))
        if both:
            raise ConfigError("model.targets", f"{both} are also inputs", "a target cannot be an input too")
        derived = [t for t in targets if t in DERIVED_INPUTS]
        if derived:
            raise ConfigError("model.targets", f"{derived} are inputs derived from the CTP", "serve them as inputs")
        settings = {**DEFAULT_WEIGHT_MAP, **dict(weight_map or {})}
        unknown = set(settings) - set(DEFAULT_WEIGHT_MAP)
        if unknown:
            raise ConfigError("data.weight_map", f"unknown key(s) {sorted(unknown)}", f"use {sorted(DEFAULT_WEIGHT_MAP)}")
        if settings["unit"] not in ("voxel", "mm"):
            raise ConfigError("data.weight_map.unit", f"is {settings['unit']!r}", "use voxel or mm")
        return cls(inputs, targets, tuple(sorted(settings.items())), bool(per_slice))

    @property
    def modalities(self) -> list[str]:
        """Files to read: the inputs' sources (``ctp`` for ``ctp_mip``; see ``source_modalities``) and the modality
        targets (label and derived maps are not modalities)."""
        return source_modalities([*self.inputs, *(t for t in self.targets if t not in DERIVED_TARGETS)])

    @property
    def needs_label(self) -> bool:
        return "label" in self.targets or "weight_map" in self.targets


# Targets the data side derives instead of reading a modality file of that name.
DERIVED_TARGETS = frozenset({"label", "weight_map", "brain"})
DEFAULT_WEIGHT_MAP = {"w": 1.5, "D": 50.0, "unit": "voxel"}  # Wang et al. 2020, section 4.1


def lesion_weight_map(label: np.ndarray, spacing, serve: Serve) -> np.ndarray:
    """Wang et al.'s Eq. 9 weight map of a whole preprocessed label volume (see :class:`Serve`)."""
    from strokelab.losses.weight_map import weight_map

    settings = dict(serve.weight_map)
    sampling = None if settings["unit"] == "voxel" else tuple(float(s) for s in spacing)
    if not serve.per_slice:
        return weight_map(label, w=settings["w"], D=settings["D"], spacing=sampling)
    out = np.empty(label.shape, np.float32)
    for z in range(label.shape[2]):
        out[:, :, z] = weight_map(
            label[:, :, z], w=settings["w"], D=settings["D"], spacing=None if sampling is None else sampling[:2]
        )
    return out


def preprocess_loaded(loaded: LoadedCase, prep: Preprocessing, serve: Serve | None = None) -> dict[str, Any]:
    """The preprocessed tensors of a checked case (no caching here), named as ``serve`` says.

    Returns ``{"case", "inputs", "channels", "images": {name: (C, X, Y, Z) tensor}, "affine", "native_shape",
    "native_affine", "stats"}``; ``images`` holds every input, every target, and ``brain`` when skull-stripped.
    ``stats[input]`` holds its normalisation (``mean``/``std`` or ``min``/``max``), for ``ctp_window`` also the
    ``window`` found (``start``, ``end``: frames of the raw series, 0-based, inclusive; ``found_start``,
    ``found_end``: whether Eq. 2 / Eq. 3 held; ``k``; ``source_frames``).
    Without ``serve`` every loaded image is an input and the label (if loaded) the target.
    """
    if serve is None:
        serve = Serve.make(list(loaded.images), ("label",) if loaded.label is not None else ())
    map_targets = [t for t in serve.targets if t not in DERIVED_TARGETS]
    arrays: dict[str, np.ndarray] = {}
    stats: dict[str, dict[str, Any]] = {}
    for m in serve.inputs:  # derived inputs, from the native source before anything else happens to it
        if m not in DERIVED_INPUTS:
            continue
        source = DERIVED_INPUTS[m]
        if source not in loaded.images:
            raise DataError(
                f"case {loaded.case.id}",
                f"input '{m}' is computed from '{source}', which was not read",
                f"read the case with its '{source}' file (Serve.modalities lists the files to read)",
            )
        if m == "ctp_mip":
            arrays[m] = temporal_mip(loaded.images[source]).astype(np.float32)
        else:
            arrays[m], window = window_channels(loaded.images[source], prep.window_frames, prep.window_k)
            stats[m] = {
                "window": {
                    "start": window.start,
                    "end": window.end,
                    "found_start": window.found_start,
                    "found_end": window.found_end,
                    "k": prep.window_k,
                    "source_frames": int(loaded.images[source].shape[-1]),
                }
            }
    for m, a in loaded.images.items():
        if m in TIME_SERIES and m not in serve.inputs and m not in map_targets:
            continue  # read only as the source of derived inputs
        if m in TIME_SERIES:
            if m in map_targets:
                raise ConfigError("model.targets", f"'{m}' is a 4D series", "give a 3D map as the regression target")
            if prep.frames is None:
                raise ConfigError("data.preprocess.frames", f"is not set but '{m}' is a 4D series", "set e.g. frames: 32")
            arrays[m] = series_channels(a, prep.frames)
        elif m in map_targets and m in UNIT_SCALED_TARGETS:
            arrays[m] = scale_to_unit(a)  # on the native grid, as evaluation scales the native file
        else:
            arrays[m] = a
    if serve.needs_label:
        if loaded.label is None:
            raise ConfigError("model.targets", "need the lesion mask but the case was read without it", "read the label")
        arrays["__label__"] = loaded.label.astype(np.float32)
    arrays, affine = resample_to_spacing(arrays, loaded.reference.affine, prep.spacing)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # the grid's, in mm
    label = arrays.pop("__label__", None)
    target_data = {t: arrays.pop(t) for t in map_targets}
    inputs = [m for m in serve.inputs if m in arrays]
    if not inputs:
        raise ConfigError("model.inputs", "has no input besides the targets", "list the input modalities")
    fg = {m: foreground(m, a.mean(axis=0) if a.ndim == 4 else a) for m, a in arrays.items()}
    head = np.logical_or.reduce(list(fg.values()))
    brain = skull_strip(arrays[inputs[0]], inputs[0], prep) if prep.skull_strip != "none" else None
    if brain is not None:
        fg = {m: f & brain for m, f in fg.items()}
    if prep.series_smooth_mm > 0:
        for m, a in arrays.items():
            if a.ndim == 4:
                arrays[m] = smooth_in_plane(a, fg[m], prep.series_smooth_mm, spacing)
    if prep.crop_to_head:
        margin = tuple(int(np.ceil(prep.crop_margin_mm / s)) for s in spacing)
        box = _bbox(head, margin)
        arrays = {m: a[(slice(None), *box)] if a.ndim == 4 else a[box] for m, a in arrays.items()}
        fg = {m: f[box] for m, f in fg.items()}
        label = None if label is None else label[box]
        target_data = {t: a[box] for t, a in target_data.items()}
        brain = None if brain is None else brain[box]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([b.start for b in box], dtype=float) + affine[:3, 3]
    images: dict[str, torch.Tensor] = {}
    for m in inputs:
        normalised, norm_stats = _normalise(arrays[m], fg[m], m, prep)
        stats[m] = {**norm_stats, **stats.get(m, {})}
        images[m] = torch.from_numpy(normalised if normalised.ndim == 4 else normalised[None])
    for t, a in target_data.items():
        if prep.target_range is not None and t not in UNIT_SCALED_TARGETS:
            a = np.clip(a, *prep.target_range)
        images[t] = torch.from_numpy(a[None].astype(np.float32))
    lesion = None if label is None else label > 0.5
    if "label" in serve.targets:
        images["label"] = torch.from_numpy(lesion[None].astype(np.uint8))
    if "weight_map" in serve.targets:
        images["weight_map"] = torch.from_numpy(lesion_weight_map(lesion, spacing, serve)[None])
    if brain is not None:
        images["brain"] = torch.from_numpy(brain[None].astype(np.uint8))
    elif "brain" in serve.targets:
        raise ConfigError("model.targets", "'brain' needs a skull strip", "set data.preprocess.skull_strip")
    return {
        "case": loaded.case.id,
        "inputs": inputs,
        "channels": {m: int(images[m].shape[0]) for m in inputs},
        "images": images,
        "affine": affine,
        "native_shape": tuple(int(s) for s in loaded.reference.shape[:3]),
        "native_affine": np.asarray(loaded.reference.affine),
        "stats": stats,
    }


def stack_inputs(entry: dict[str, Any]) -> torch.Tensor:
    """The inputs of a preprocessed entry as one (C, X, Y, Z) tensor, channels in input order."""
    return torch.cat([entry["images"][m] for m in entry["inputs"]], dim=0).float()


def _sources(case: Case) -> dict[str, str] | None:
    """The content digest of every file the case's entry is made from (images and label), by path; None when
    one cannot be read (preprocessing then says which, in one line)."""
    paths = list(case.images.values()) + ([case.label] if case.label is not None else [])
    try:
        return {str(p): file_digest(p) for p in paths}
    except OSError:
        return None


def cache_path(cache_dir: Path, prep: Preprocessing, case: Case, serve: Serve) -> Path:
    return Path(cache_dir) / prep.key(serve) / f"{case.id}.pt"


# Arrays of an entry stored as float64 tensors (weights-only files hold no numpy) and served as numpy again.
_ARRAYS = ("affine", "native_affine")


def _stored(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry in plain types, as written to the cache."""
    return plain(entry)


def _served(stored: dict[str, Any]) -> dict[str, Any]:
    """An entry as callers use it: the affines as numpy arrays (see ``preprocess_loaded``)."""
    entry = dict(stored)
    for key in _ARRAYS:
        entry[key] = entry[key].numpy()
    return entry


def _read_cached(path: Path, sources: dict[str, str], warn: bool) -> dict[str, Any] | None:
    """The cached entry at ``path`` when it is intact and made from ``sources``, else None (a damaged one is
    reported in one warning line when ``warn``)."""
    try:
        stored = read_entry(path)
    except FileNotFoundError:
        return None
    except (CorruptEntry, OSError) as exc:
        if warn:
            log.warning("%s: bad preprocessing cache entry (%s), rebuilding it", path, exc)
        return None
    if not isinstance(stored, dict) or stored.get("sources") != sources or not all(k in stored for k in _ARRAYS):
        return None  # made from other files or by another layout: stale, not damaged
    return _served(stored)


def load_or_preprocess(
    case: Case, prep: Preprocessing, cache_dir: str | Path | None, serve: Serve | None = None
) -> dict[str, Any]:
    """Cached preprocessed case; computes (after the checks) and stores it when missing, stale (a source's
    content changed) or damaged. The entry is made under a per-entry lock: of several processes asking at once,
    one computes and the others read its entry. Raises DataError (one line) when the cache cannot be written."""
    if serve is None:
        serve = Serve.make(list(case.images), ("label",) if case.label is not None else ())

    def compute() -> dict[str, Any]:
        return preprocess_loaded(load_case(case, prep.nan_policy, prep.affine_tol_mm, prep.max_missing_frames), prep, serve)

    sources = None if cache_dir is None else _sources(case)
    if sources is None:  # no cache, or a source is unreadable: the checks say which
        return compute()
    path = cache_path(Path(cache_dir), prep, case, serve)
    entry = _read_cached(path, sources, warn=False)  # entries are replaced atomically: reading needs no lock
    if entry is not None:
        return entry
    with entry_lock(path):
        entry = _read_cached(path, sources, warn=True)  # another process may have made it while we waited
        if entry is not None:
            return entry
        stored = _stored({**compute(), "sources": sources})
        write_entry(path, stored)
        info = path.parent / "preprocessing.json"
        if not info.exists():
            try:
                with atomic_path(info) as tmp:
                    tmp.write_text(json.dumps({"serve": asdict(serve), **asdict(prep)}, indent=1, default=str))
            except OSError as exc:
                raise write_error(info, exc) from None
    return _served(stored)


def _job(args) -> tuple[dict[str, Any] | None, StrokelabError | None]:
    case, prep, cache_dir, serve = args
    try:
        return load_or_preprocess(case, prep, cache_dir, serve), None
    except StrokelabError as err:
        return None, err


def _portable(err: StrokelabError) -> tuple:
    """An error as a tuple that survives the trip back from a worker process (a StrokelabError itself does
    not: it pickles its one-line message but its constructor takes where, problem and fix)."""
    if isinstance(err, DataSetError):
        return (DataSetError, [_portable(e) for e in err.errors])
    return (type(err), err.where, err.problem, err.fix)


def _restored(portable: tuple) -> StrokelabError:
    if portable[0] is DataSetError:
        return DataSetError([_restored(e) for e in portable[1]])
    cls, where, problem, fix = portable
    return cls(where, problem, fix)


def _cache_job(args) -> tuple | None:
    """Worker side of :func:`cache_cases`: the entry stays in the cache, only a problem comes back (see
    :func:`_portable`)."""
    err = _job(args)[1]
    return None if err is None else _portable(err)


def _raise_collected(errors: list[StrokelabError]) -> None:
    config_errors = [e for e in errors if isinstance(e, (ConfigError, CacheWriteError))]
    if config_errors:  # the same for every case: say it once
        raise config_errors[0]
    if errors:
        raise errors[0] if len(errors) == 1 else DataSetError(errors)


def cache_cases(cases: list[Case], prep: Preprocessing, cache_dir, workers: int = 1, serve: Serve | None = None) -> None:
    """Check and preprocess every case that has no cache entry yet, into the cache; all problems are
    collected and raised together. With ``workers`` > 1 the cases are spread over fresh processes
    ("spawn", as the phantom does): a forked copy of a process that runs threads (a logger's, a data
    loader's) can inherit a lock held by one of them and wait on it forever, as the second run of a
    multirun did. Nothing but the problems comes back from the workers. Processes that fill the same cache at
    once (a multirun, DDP ranks) compute each entry once (see :func:`load_or_preprocess`)."""
    if cache_dir is None:
        return
    if serve is None and cases:
        serve = Serve.make(list(cases[0].images), ("label",) if cases[0].label is not None else ())
    jobs = [(c, prep, cache_dir, serve) for c in cases if not cache_path(Path(cache_dir), prep, c, serve).exists()]
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            problems = list(pool.map(_cache_job, jobs))
    else:
        problems = []
        for job in jobs:
            problems.append(_cache_job(job))
            if problems[-1] is not None and issubclass(problems[-1][0], CacheWriteError):
                break  # a full disk stays full: no point computing the other cases
    _raise_collected([_restored(p) for p in problems if p is not None])


def prepare_cases(
    cases: list[Case], prep: Preprocessing, cache_dir, workers: int = 1, serve: Serve | None = None
) -> list[dict[str, Any]]:
    """The preprocessed entries of ``cases``, in order: missing cache entries are made first
    (:func:`cache_cases`, in ``workers`` processes), then every entry is read here (a stale one is redone).
    All problems are collected and raised together."""
    if serve is None and cases:
        serve = Serve.make(list(cases[0].images), ("label",) if cases[0].label is not None else ())
    cache_cases(cases, prep, cache_dir, workers, serve)
    results = [_job((c, prep, cache_dir, serve)) for c in cases]
    _raise_collected([e for _, e in results if e is not None])
    return [entry for entry, _ in results]

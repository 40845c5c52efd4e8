"""Preprocessing, done once per (case, preprocessing config) and cached.

Steps: check the case (see ``check``), resample every modality to the experiment's spacing (linear; the
label is resampled linearly too and read as ``> 0.5`` so small lesions survive downsampling), crop to
the head's bounding box plus a margin, clip (fixed windows, e.g. CT in HU, and/or percentiles) and
z-score each modality over the head (or the whole volume, as in the TUM project), background set to 0.

The cache file of a case holds the preprocessed tensors, the affine of the preprocessed grid and the
case's native grid, so a prediction can be mapped back exactly. A cache entry is keyed by a hash of the
preprocessing config and the modality list, and is redone when a source file's size or mtime changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio

from strokelab.data.check import LoadedCase, load_case
from strokelab.data.layouts import TIME_SERIES, Case
from strokelab.errors import ConfigError, DataSetError, StrokelabError
from strokelab.io import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Head/brain foreground per modality: CT images by an HU threshold (air is about -1000 HU); perfusion
# maps and MR images are 0 outside the brain in ISLES'24, so anything non-zero is foreground.
CT_MODALITIES = frozenset({"ncct", "cta", "ctp"})
CT_HEAD_HU = -300.0


@dataclass(frozen=True)
class Preprocessing:
    """What varies between experiments' preprocessing (``data.preprocess`` in the config)."""

    spacing: tuple[float, float, float] = (2.0, 2.0, 5.0)
    crop_to_head: bool = True
    crop_margin_mm: float = 10.0
    normalize: str = "zscore"  # zscore | none
    zscore_region: str = "foreground"  # foreground | all (TUM: mean/std of the entire volume)
    clip: dict[str, tuple[float, float]] = field(default_factory=dict)  # modality -> (low, high), raw units
    clip_percentiles: tuple[float, float] | None = None  # e.g. (0.5, 99.5) over the foreground
    nan_policy: str = "error"  # error | replace (by 0, with a warning)
    affine_tol_mm: float = 1e-3

    @classmethod
    def from_config(cls, cfg: Any) -> Preprocessing:
        raw = dict(cfg or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError("data.preprocess", f"unknown key(s) {sorted(unknown)}", f"use {sorted(cls.__dataclass_fields__)}")
        if "spacing" in raw:
            raw["spacing"] = tuple(float(s) for s in raw["spacing"])
            if len(raw["spacing"]) != 3 or min(raw["spacing"]) <= 0:
                raise ConfigError("data.preprocess.spacing", f"{raw['spacing']} is not 3 positive numbers (mm)", "e.g. [2, 2, 5]")
        if raw.get("clip") is not None:
            raw["clip"] = {str(k): (float(v[0]), float(v[1])) for k, v in dict(raw["clip"]).items()}
        else:
            raw["clip"] = {}
        if raw.get("clip_percentiles") is not None:
            raw["clip_percentiles"] = tuple(float(v) for v in raw["clip_percentiles"])
        if raw.get("normalize", "zscore") not in {"zscore", "none"}:
            raise ConfigError("data.preprocess.normalize", f"'{raw['normalize']}' is not zscore or none", "pick one")
        if raw.get("zscore_region", "foreground") not in {"foreground", "all"}:
            raise ConfigError("data.preprocess.zscore_region", f"'{raw['zscore_region']}' is not foreground or all", "pick one")
        return cls(**raw)

    def key(self, modalities: list[str]) -> str:
        blob = json.dumps({"v": CACHE_VERSION, "prep": asdict(self), "modalities": list(modalities)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


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
    """Resample 3D arrays (one grid) to ``spacing`` mm (linear, TorchIO/SimpleITK); returns arrays and new affine."""
    shape = next(iter(images.values())).shape
    if np.allclose(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0), spacing, rtol=1e-4):
        return images, np.asarray(affine)
    new_shape, new_affine = spacing_grid(shape, affine, spacing)
    subject = tio.Subject(
        {
            name: tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(a))[None], affine=affine)
            for name, a in images.items()
        }
    )
    out = tio.Resample((new_shape, new_affine), image_interpolation="linear")(subject)
    return {name: out[name].data[0].numpy() for name in images}, new_affine


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
    stats: dict[str, float] = {}
    if modality in prep.clip:
        low, high = prep.clip[modality]
        data = np.clip(data, low, high)
    region = fg if prep.zscore_region == "foreground" and fg.any() else np.ones_like(fg)
    if prep.clip_percentiles is not None:
        low, high = np.percentile(data[region], prep.clip_percentiles)
        data = np.clip(data, low, high)
    if prep.normalize == "zscore":
        mean, std = float(data[region].mean()), float(data[region].std())
        data = (data - mean) / max(std, 1e-6)
        if prep.zscore_region == "foreground":
            data = np.where(fg, data, 0.0)
        stats = {"mean": mean, "std": std}
    return data.astype(np.float32), stats


def preprocess_loaded(loaded: LoadedCase, prep: Preprocessing) -> dict[str, Any]:
    """The preprocessed tensors of a checked case (no caching here)."""
    for m in loaded.images:
        if m in TIME_SERIES:
            raise ConfigError("data.modalities", f"'{m}' is a 4D series; the segmentation inputs are 3D maps", "drop it")
    arrays = dict(loaded.images)
    if loaded.label is not None:
        arrays["__label__"] = loaded.label.astype(np.float32)
    arrays, affine = resample_to_spacing(arrays, loaded.reference.affine, np.asarray(prep.spacing))
    label = arrays.pop("__label__", None)
    fg = {m: foreground(m, a) for m, a in arrays.items()}
    head = np.logical_or.reduce(list(fg.values()))
    if prep.crop_to_head:
        margin = tuple(int(np.ceil(prep.crop_margin_mm / s)) for s in prep.spacing)
        box = _bbox(head, margin)
        arrays = {m: a[box] for m, a in arrays.items()}
        fg = {m: f[box] for m, f in fg.items()}
        label = None if label is None else label[box]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([b.start for b in box], dtype=float) + affine[:3, 3]
    channels, stats = [], {}
    for m, a in arrays.items():
        normalised, stats[m] = _normalise(a, fg[m], m, prep)
        channels.append(normalised)
    return {
        "case": loaded.case.id,
        "modalities": list(arrays),
        "image": torch.from_numpy(np.stack(channels)),
        "label": None if label is None else torch.from_numpy((label > 0.5)[None].astype(np.uint8)),
        "affine": affine,
        "native_shape": tuple(int(s) for s in loaded.reference.shape[:3]),
        "native_affine": np.asarray(loaded.reference.affine),
        "stats": stats,
    }


def _sources(case: Case) -> dict[str, list[int]]:
    paths = list(case.images.values()) + ([case.label] if case.label is not None else [])
    out = {}
    for p in paths:
        st = Path(p).stat()
        out[str(p)] = [st.st_size, st.st_mtime_ns]
    return out


def cache_path(cache_dir: Path, prep: Preprocessing, case: Case) -> Path:
    return Path(cache_dir) / prep.key(list(case.images)) / f"{case.id}.pt"


def load_or_preprocess(case: Case, prep: Preprocessing, cache_dir: str | Path | None) -> dict[str, Any]:
    """Cached preprocessed case; computes (after the checks) and stores it when missing or stale."""
    path = None if cache_dir is None else cache_path(Path(cache_dir), prep, case)
    if path is not None and path.exists():
        try:
            entry = torch.load(path, weights_only=False)
            if entry.get("sources") == _sources(case):
                return entry
        except (OSError, RuntimeError, EOFError, KeyError, AttributeError):
            log.warning("%s: unreadable cache entry, recomputing", path)
    entry = preprocess_loaded(load_case(case, prep.nan_policy, prep.affine_tol_mm), prep)
    if path is not None:
        entry["sources"] = _sources(case)
        with atomic_path(path) as tmp:
            torch.save(entry, tmp)
        info = path.parent / "preprocessing.json"
        if not info.exists():
            with atomic_path(info) as tmp:
                tmp.write_text(json.dumps({"modalities": list(case.images), **asdict(prep)}, indent=1))
    return entry


def _job(args):
    case, prep, cache_dir = args
    try:
        return load_or_preprocess(case, prep, cache_dir), None
    except StrokelabError as err:
        return None, err


def prepare_cases(cases: list[Case], prep: Preprocessing, cache_dir, workers: int = 1) -> list[dict[str, Any]]:
    """Preprocess (or load from cache) every case; all problems are collected and raised together."""
    jobs = [(c, prep, cache_dir) for c in cases]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_job, jobs))
    else:
        results = [_job(j) for j in jobs]
    errors = [e for _, e in results if e is not None]
    if errors:
        raise errors[0] if len(errors) == 1 else DataSetError(errors)
    return [entry for entry, _ in results]

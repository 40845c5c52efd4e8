"""What defines a phantom data set: :class:`PhantomConfig`, the generator version and the layouts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from strokelab.errors import ConfigError

GENERATOR_VERSION = "2.0.0"  # 2.0: maps deconvolved from the simulated CTP by default
DATASET_NAME = "strokelab phantom"
MAP_SOURCES = ("deconvolved", "vendor")
LAYOUTS = ("isles24", "isles18")

# Acquisition defaults per layout, for the fields left unset (None). ISLES'24: 2x2x5 mm over the whole head,
# 32 frames 1.5 s apart. ISLES'18: thick slabs (128x128 voxels of 1.8 mm, a CPU-friendly stand-in for the
# release's 256x256), per case 4-8 slices 8-10 mm apart and 43-64 frames 1 s apart.
LAYOUT_DEFAULTS: dict[str, dict[str, Any]] = {
    "isles24": {"shape": (96, 112, 28), "spacing": (2.0, 2.0, 5.0), "n_frames": 32, "frame_interval_s": 1.5},
    "isles18": {
        "shape": (128, 128, 8),
        "spacing": (1.8, 1.8, 9.0),
        "n_frames": 64,
        "frame_interval_s": 1.0,
        "n_slices_range": (4, 8),
        "slice_spacing_range_mm": (8.0, 10.0),
        "n_frames_range": (43, 64),
    },
}


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that defines a phantom data set. Same config, same bytes (whatever the worker count).

    Ranges ``(lo, hi)`` are drawn per case, uniformly unless stated. Sizes are in mm, times in s.
    ``shape``, ``spacing``, ``n_frames`` and ``frame_interval_s`` left unset (None) take the layout's
    defaults (``LAYOUT_DEFAULTS``); for ISLES'18 so do the three per-case ranges, unless ``shape`` is given.
    """

    n_cases: int = 40
    seed: int = 0
    # Layout written: "isles24" (BIDS, the default) or "isles18" (TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<id>/).
    layout: str = "isles24"
    n_testing: int = 0  # ISLES'18 only: extra cases under TESTING/ (no DWI, no lesion mask), numbered on
    shape: tuple[int, int, int] | None = None  # default (96, 112, 28); ISLES'18 (128, 128, 8)
    spacing: tuple[float, float, float] | None = None  # mm; default (2, 2, 5); ISLES'18 (1.8, 1.8, 9)
    # Per-case grid and frame count (None: the fixed values above). A case draws them from its own stream,
    # so everything else about it is what the fixed grid would give on that grid.
    n_slices_range: tuple[int, int] | None = None  # replaces shape[2]
    slice_spacing_range_mm: tuple[float, float] | None = None  # replaces spacing[2]
    n_frames_range: tuple[int, int] | None = None  # replaces n_frames
    tilt_deg: float = 15.0  # gantry tilt: rotation about the left-right axis
    tilt_jitter_deg: float = 3.0  # per case the tilt varies by up to +-this
    n_frames: int | None = None  # default 32; ISLES'18 64 (the top of n_frames_range)
    frame_interval_s: float | None = None  # default 1.5; ISLES'18 1.0
    # Normal perfusion (population means; per voxel there is a smooth texture of ~10 %).
    gm_cbf: float = 55.0  # ml/100g/min
    wm_cbf: float = 25.0
    gm_cbv: float = 4.0  # ml/100g  (MTT = 60*CBV/CBF ~ 4.4 s in GM, 4.8 s in WM)
    wm_cbv: float = 2.0
    # Arterial input function: enhancement peak above the 40 HU blood baseline, and bolus arrival.
    aif_peak_hu: tuple[float, float] = (200.0, 500.0)
    aif_onset_s: tuple[float, float] = (3.0, 10.0)
    # Image quality: per-frame CTP noise and NCCT noise (SD in HU; the centre picks where in the range).
    ctp_noise_hu: tuple[float, float] = (8.0, 15.0)
    ncct_noise_hu: tuple[float, float] = (3.0, 5.0)
    # Perfusion-map degradation: in-plane Gaussian blur SD (voxels), multiplicative noise SD.
    map_blur_vox: tuple[float, float] = (1.0, 1.5)
    map_noise: float = 0.08
    # Stroke: probability of an ACA / MCA / PCA occlusion; extra delay in the occluded territory.
    territory_weights: tuple[float, float, float] = (0.12, 0.70, 0.18)
    delay_max_s: tuple[float, float] = (6.0, 12.0)
    mild_fraction: float = 0.08  # distal / mild occlusions: tiny or no final lesion is likely
    emboli_fraction: float = 0.15  # cases with 1-3 small embolic lesions elsewhere
    # Perfusion maps: "deconvolved" from the simulated CTP (strokelab.perfusion, as on real data) or
    # "vendor": the true maps blurred (map_blur_vox) and with noise (map_noise). Everything else is the same.
    maps: str = "deconvolved"

    def __post_init__(self) -> None:
        def bad(name: str, problem: str, fix: str) -> None:
            raise ConfigError(f"phantom.{name}", problem, fix)

        if self.layout not in LAYOUTS:
            bad("layout", f"is {self.layout!r}", "use 'isles24' (BIDS) or 'isles18' (TRAINING/case_N/SMIR.Brain...)")
        defaults = LAYOUT_DEFAULTS[self.layout]
        if self.shape is None:  # the layout's grid, and for ISLES'18 its per-case ranges
            for name in ("n_slices_range", "slice_spacing_range_mm", "n_frames_range"):
                if getattr(self, name) is None and name in defaults:
                    object.__setattr__(self, name, defaults[name])
        for name in ("shape", "spacing", "n_frames", "frame_interval_s"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        # Accept lists (YAML / hydra) and normalise to tuples so the config stays hashable.
        ranges = ("n_slices_range", "slice_spacing_range_mm", "n_frames_range")
        for name in (
            "shape",
            "spacing",
            "aif_peak_hu",
            "aif_onset_s",
            "ctp_noise_hu",
            "ncct_noise_hu",
            "map_blur_vox",
            "territory_weights",
            "delay_max_s",
            *ranges,
        ):
            value = getattr(self, name)
            if value is None and name in ranges:
                continue
            try:
                object.__setattr__(self, name, tuple(value))
            except TypeError:
                raise ConfigError(f"phantom.{name}", f"must be a list of numbers, not {value!r}") from None
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        for name, kind in (("n_slices_range", int), ("slice_spacing_range_mm", float), ("n_frames_range", int)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))

        if not 1 <= int(self.n_cases) <= 9999:
            bad("n_cases", f"is {self.n_cases}", "use 1..9999 cases")
        if not 0 <= int(self.n_testing) <= 9999 - int(self.n_cases):
            bad("n_testing", f"is {self.n_testing}", "use 0 or more TESTING cases (at most 9999 cases in all)")
        if self.n_testing and self.layout != "isles18":
            bad("n_testing", f"is {self.n_testing} for the {self.layout} layout", "TESTING cases exist in layout=isles18 only")
        if len(self.shape) != 3 or min(self.shape[:2]) < 8 or self.shape[2] < 2:
            bad("shape", f"is {self.shape}", "give three voxel counts: at least 8 in-plane and 2 slices")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            bad("spacing", f"is {self.spacing}", "give three positive voxel sizes in mm")
        for name, lowest in (("n_slices_range", 2), ("slice_spacing_range_mm", 1e-9), ("n_frames_range", 8)):
            lo_hi = getattr(self, name)
            if lo_hi is not None and (len(lo_hi) != 2 or not lowest <= lo_hi[0] <= lo_hi[1]):
                bad(name, f"is {lo_hi}", f"give a range [lo, hi] with {lowest:g} <= lo <= hi, or null for a fixed value")
        frames = [int(self.n_frames)] if self.n_frames_range is None else list(self.n_frames_range)
        if min(frames) < 8:
            bad("n_frames", f"is {min(frames)}", "use at least 8 CTP frames")
        if self.frame_interval_s <= 0:
            bad("frame_interval_s", f"is {self.frame_interval_s}", "use a positive frame interval in s")
        if (min(frames) - 1) * self.frame_interval_s < 20:
            bad(
                "n_frames",
                f"covers only {(min(frames) - 1) * self.frame_interval_s:g} s",
                "cover at least 20 s (40-60 s is typical) with n_frames * frame_interval_s",
            )
        for name in (
            "aif_peak_hu",
            "aif_onset_s",
            "ctp_noise_hu",
            "ncct_noise_hu",
            "map_blur_vox",
            "delay_max_s",
        ):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
                bad(name, f"is {lo_hi}", "give a range [lo, hi] with 0 <= lo <= hi")
        if len(self.territory_weights) != 3 or min(self.territory_weights) < 0 or sum(self.territory_weights) <= 0:
            bad(
                "territory_weights",
                f"is {self.territory_weights}",
                "give three non-negative weights (ACA, MCA, PCA)",
            )
        for name in ("mild_fraction", "emboli_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, f"is {getattr(self, name)}", "use a fraction in [0, 1]")
        for name in ("gm_cbf", "wm_cbf", "gm_cbv", "wm_cbv"):
            if getattr(self, name) <= 0:
                bad(name, f"is {getattr(self, name)}", "use a positive value")
        if self.map_noise < 0:
            bad("map_noise", f"is {self.map_noise}", "use a non-negative noise level")
        if self.maps not in MAP_SOURCES:
            bad("maps", f"is {self.maps!r}", "use 'deconvolved' (computed from the CTP) or 'vendor' (truth blurred, with noise)")

    @property
    def n_total(self) -> int:
        """All cases: ``n_cases`` (ISLES'24, or ISLES'18 TRAINING) plus ``n_testing`` (ISLES'18 TESTING)."""
        return int(self.n_cases) + int(self.n_testing)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def case_config(case_index: int, config: PhantomConfig) -> PhantomConfig:
    """The config of one case with its grid and frame count fixed: the per-case ranges, when set, are
    drawn from the case's own random stream (child 1 of its seed), apart from the simulation's."""
    if config.n_slices_range is None and config.slice_spacing_range_mm is None and config.n_frames_range is None:
        return config
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(case_index, 1)))
    shape, spacing, n_frames = list(config.shape), list(config.spacing), config.n_frames
    if config.n_slices_range is not None:
        shape[2] = int(rng.integers(config.n_slices_range[0], config.n_slices_range[1] + 1))
    if config.slice_spacing_range_mm is not None:
        spacing[2] = round(float(rng.uniform(*config.slice_spacing_range_mm)), 2)
    if config.n_frames_range is not None:
        n_frames = int(rng.integers(config.n_frames_range[0], config.n_frames_range[1] + 1))
    return dataclasses.replace(
        config,
        shape=tuple(shape),
        spacing=tuple(spacing),
        n_frames=n_frames,
        n_slices_range=None,
        slice_spacing_range_mm=None,
        n_frames_range=None,
    )

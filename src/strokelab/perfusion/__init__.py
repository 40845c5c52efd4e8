"""Tracer-kinetic CT perfusion analysis: deconvolution, perfusion maps and temporal features.

    from strokelab.perfusion import compute_maps, PerfusionSettings
    result = compute_maps(series_hu, dt=1.5)              # bcSVD; result.maps["cbf"] in ml/100g/min
    fill_missing_maps(cases, out_dir)                      # a case's missing ISLES maps from its raw CTP

Command line: ``python -m strokelab.perfusion CTP.nii.gz --out DIR [--method bcsvd|ssvd|osvd|tikhonov]``;
validation table: ``python -m strokelab.perfusion.kudo``.
"""

from strokelab.perfusion.deconvolution import (
    METHODS,
    DeconvolutionSettings,
    Deconvolver,
    circulant_matrix,
    convolution_matrix,
    deconvolve,
    oscillation_index,
)
from strokelab.perfusion.derive import DERIVED_MAP_SETTINGS, derive_maps, fill_missing_maps
from strokelab.perfusion.maps import (
    MAP_NAMES,
    MAP_UNITS,
    CurveAnalyser,
    PerfusionResult,
    PerfusionSettings,
    brain_mask,
    compute_maps,
    load_ctp,
    write_outputs,
)
from strokelab.perfusion.temporal import (
    PerfusionWindow,
    accumulated_intensity,
    crop_and_resample,
    perfusion_window,
    temporal_features,
    temporal_mip,
)

__all__ = [
    "DERIVED_MAP_SETTINGS",
    "METHODS",
    "MAP_NAMES",
    "MAP_UNITS",
    "CurveAnalyser",
    "DeconvolutionSettings",
    "Deconvolver",
    "PerfusionResult",
    "PerfusionSettings",
    "PerfusionWindow",
    "accumulated_intensity",
    "brain_mask",
    "circulant_matrix",
    "compute_maps",
    "convolution_matrix",
    "crop_and_resample",
    "deconvolve",
    "derive_maps",
    "fill_missing_maps",
    "load_ctp",
    "oscillation_index",
    "perfusion_window",
    "temporal_features",
    "temporal_mip",
    "write_outputs",
]

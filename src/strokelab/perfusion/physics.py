"""Physical constants of the indicator-dilution model and the gamma variate: one definition for the project.

The perfusion maps (:mod:`strokelab.perfusion.maps`), the Kudo-type phantom (:mod:`strokelab.perfusion.kudo`)
and the digital stroke phantom (:mod:`strokelab.data.phantom`) all read them from here, so that the phantom's
forward model and the deconvolution that inverts it use the same numbers (and perfusion never imports the
phantom). Units: g/ml for the density, fractions for the haematocrits, seconds for time.
"""

from __future__ import annotations

import numpy as np

RHO_TISSUE = 1.04  # brain tissue density, g/ml
HCT_LARGE_VESSEL = 0.45  # haematocrit in large vessels (where the AIF is measured)
HCT_SMALL_VESSEL = 0.25  # haematocrit in capillaries
K_H = (1.0 - HCT_LARGE_VESSEL) / (1.0 - HCT_SMALL_VESSEL)  # haematocrit correction factor, ~0.733


def gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """Gamma variate with peak value 1 at ``t0 + alpha*beta`` (0 before ``t0``)."""
    x = np.clip((t - t0) / (alpha * beta), 0.0, None)
    return x**alpha * np.exp(alpha * (1.0 - x))

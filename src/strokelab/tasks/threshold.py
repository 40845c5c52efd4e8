"""The classic perfusion threshold baseline as a model of its own (``model=threshold``; no training).

Hypoperfused tissue is Tmax > 6 s; the ischaemic core is relative CBF < 30 %, where rCBF is CBF over
the mean CBF of normally perfused brain (Tmax < 4 s), as RAPID-style software reports it. ``rule``
picks which region is predicted as the final infarct: ``tmax``, ``rcbf``, their ``union`` (all
hypoperfused tissue infarcts: no reperfusion) or their ``intersection``. It works voxel-wise in the
case's native grid and is evaluated by the same code as the learned models.
"""

from __future__ import annotations

import numpy as np

from strokelab.data.check import load_case
from strokelab.data.layouts import Case
from strokelab.errors import ConfigError

RULES = ("tmax", "rcbf", "union", "intersection")


def is_threshold(model_cfg) -> bool:
    """Whether a model config (``cfg.model``, may be None) is this baseline."""
    return model_cfg is not None and model_cfg.get("_target_") == f"{__name__}.{ThresholdBaseline.__name__}"


class ThresholdBaseline:
    modalities = ("cbf", "tmax")
    threshold = 0.5  # its mask is 0/1

    def __init__(
        self,
        rule: str = "union",
        tmax_s: float = 6.0,
        rcbf: float = 0.3,
        normal_tmax_s: float = 4.0,
        nan_policy: str = "error",
        affine_tol_mm: float = 1e-3,
    ):
        if rule not in RULES:
            raise ConfigError("model.rule", f"'{rule}' is not one of {', '.join(RULES)}", "pick a threshold rule")
        self.rule, self.tmax_s, self.rcbf, self.normal_tmax_s = rule, float(tmax_s), float(rcbf), float(normal_tmax_s)
        self.nan_policy, self.affine_tol_mm = nan_policy, affine_tol_mm

    def name(self) -> str:
        return f"threshold ({self.rule}: Tmax>{self.tmax_s:g}s, rCBF<{self.rcbf:.0%})"

    def mask(self, cbf: np.ndarray, tmax: np.ndarray) -> np.ndarray:
        brain = (cbf > 0) | (tmax > 0)
        normal = brain & (tmax < self.normal_tmax_s)
        reference = cbf[normal].mean() if normal.any() else (np.median(cbf[brain]) if brain.any() else 1.0)
        hypo = brain & (tmax > self.tmax_s)
        core = brain & (cbf < self.rcbf * max(float(reference), 1e-6))
        return {"tmax": hypo, "rcbf": core, "union": hypo | core, "intersection": hypo & core}[self.rule]

    def predict_case(self, case: Case):
        """The mask (as a 0/1 probability) in the case's native grid: an ``inference.Prediction``."""
        from strokelab.inference import Prediction, case_image_path
        from strokelab.models.base import OutputSpec

        images = {m: case_image_path(case, m) for m in self.modalities}
        loaded = load_case(Case(case.id, case.root, images, None), self.nan_policy, self.affine_tol_mm)
        mask = self.mask(loaded.images["cbf"], loaded.images["tmax"]).astype(np.float32)
        return Prediction({"mask": mask}, {"mask": OutputSpec("mask")}, loaded.reference, loaded.images)

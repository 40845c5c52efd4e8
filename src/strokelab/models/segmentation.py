"""Single-network models: lesion segmentation (``SegmentationModel``) and map regression (``RegressionModel``).

Both read their inputs as channels of one tensor, in the order of ``inputs`` (a 4D series contributes its
frames), and run one network injected by Hydra (``net``): the 3D U-Net, SLNet, FCN, ResUNet, R2UNet, the
voxel-wise Tmax regressors, in 2D or 3D.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from strokelab.models.base import Model


class SegmentationModel(Model):
    """``net`` maps the stacked inputs to lesion logits: output ``logits`` (kind ``mask``), target ``label``.

    A network with deep supervision returns a list in training mode; ``logits`` is then that list (highest
    resolution first) for the loss terms, which must accept it (``strokelab.losses.DeepSupervisionLoss``).
    """

    def __init__(
        self,
        net: nn.Module,
        inputs: Sequence[str],
        targets: Sequence[str] = ("label",),
        outputs: Mapping[str, Any] | None = None,
        losses: Mapping[str, Any] | None = None,
        **settings: Any,
    ):
        super().__init__(inputs, targets, outputs or {"logits": {"kind": "mask"}}, losses, **settings)
        self.net = net

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor | list[Tensor]]:
        x = torch.cat([inputs[m].float() for m in self.inputs], dim=1)
        return {"logits": self.net(x)}


class RegressionModel(Model):
    """``net`` maps the stacked inputs to a map in its units (e.g. Tmax in s from the CTP, the Stanford report):
    output and target both named ``target`` (kind ``map``, clipped to ``value_range``, 0 outside the input's
    brain at prediction). With ``loss_in_brain`` every loss term counts the reference brain only (the target's
    non-zero voxels: ISLES maps are 0 outside the brain)."""

    def __init__(
        self,
        net: nn.Module,
        inputs: Sequence[str],
        target: str,
        value_range: Sequence[float] | None = None,
        losses: Mapping[str, Any] | None = None,
        loss_in_brain: bool = True,
        **settings: Any,
    ):
        value_range = None if value_range is None else [float(v) for v in value_range]
        outputs = {target: {"kind": "map", "value_range": value_range, "reference": target}}
        losses = {
            name: {
                "pred": target,
                "target": target,
                **dict(term),
                **({"voxel_weight": "reference_brain"} if loss_in_brain else {}),
            }
            for name, term in dict(losses or {}).items()
        }
        self.target = str(target)
        self.value_range = None if value_range is None else (value_range[0], value_range[1])
        super().__init__(inputs, [target, *(["reference_brain"] if loss_in_brain else [])], outputs, losses, **settings)
        self.net = net

    derived_targets = ("reference_brain",)

    def extra_targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"reference_brain": (batch[self.target] != 0).float()}

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        x = torch.cat([inputs[m].float() for m in self.inputs], dim=1)
        return {self.target: self.net(x)}

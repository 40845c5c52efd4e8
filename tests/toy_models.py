"""A two-network model family for the tests of the model interface (not part of the package): an extractor
turns the inputs into a one-channel feature image, a segmenter reads inputs + feature and gives lesion logits.
It declares two outputs (the mask and the feature image) and two loss terms, as the pseudo-DWI chain does."""

from __future__ import annotations

import torch
from torch import nn

from strokelab.models.base import Model
from strokelab.nn.blocks import conv_type


class ToyChain(Model):
    def __init__(self, inputs, width: int = 4, **settings):
        outputs = {"logits": {"kind": "mask"}, "feature": {"kind": "image"}}
        super().__init__(inputs, settings.pop("targets", ["label"]), outputs, settings.pop("losses", None), **settings)
        conv = conv_type(self.spatial_dims)
        n = len(self.inputs)
        self.extractor = nn.Sequential(conv(n, width, 3, padding=1), nn.ReLU(), conv(width, 1, 3, padding=1))
        self.segmenter = nn.Sequential(conv(n + 1, width, 3, padding=1), nn.ReLU(), conv(width, 1, 3, padding=1))

    def forward(self, inputs):
        x = torch.cat([inputs[m].float() for m in self.inputs], dim=1)
        feature = self.extractor(x)
        return {"logits": self.segmenter(torch.cat([x, feature], dim=1)), "feature": feature}

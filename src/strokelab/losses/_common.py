"""Shape checks shared by the segmentation and regression losses."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_pair(logits: Tensor, target: Tensor, who: str) -> Tensor:
    """Return ``target`` as float, with a channel axis added if it was missing; check shapes match."""
    if target.dim() == logits.dim() - 1 and logits.dim() >= 2 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(f"{who}: target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}")
    return target.to(dtype=torch.float32)


def _check_weight(logits: Tensor, weight: Tensor, who: str) -> Tensor:
    """Return the per-voxel ``weight`` as float32 of the logits' shape (a missing channel axis is added)."""
    if weight.dim() == logits.dim() - 1 and logits.dim() >= 2 and logits.shape[1] == 1:
        weight = weight.unsqueeze(1)
    if weight.shape != logits.shape:
        raise ValueError(f"{who}: weight shape {tuple(weight.shape)} does not match logits shape {tuple(logits.shape)}")
    return weight.to(dtype=torch.float32)

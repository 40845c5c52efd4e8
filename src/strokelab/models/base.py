"""The shared model interface: what every trainable model family plugs into (nnU-Net's trainer-name idea, in
Hydra form).

A :class:`Model` is a plain ``nn.Module`` (no Lightning) that holds one or more networks and declares, by name:

* ``inputs``: the images the data side must serve and the model reads (modalities such as ``cbf`` or ``ctp``);
* ``targets``: what its losses and metrics compare with (``label``, a map such as ``tmax``, ``weight_map``,
  ``dwi``, ...);
* ``outputs``: what it produces, each with a kind that says how it is written and scored: ``mask`` (lesion
  logits: sigmoid, threshold, written as ``<case>.nii.gz`` uint8, scored against ``label``), ``map`` (a map in
  its units, e.g. Tmax in s: 0 outside the brain, clipped to ``value_range``, written as
  ``<case>_<name>.nii.gz`` float32) or ``image`` (e.g. a pseudo-DWI, written like a map); a map or image with a
  ``reference`` (a target, e.g. ``tmax`` or ``dwi``) is scored against it in validation and against the case's
  file of that modality at test time;
* ``losses``: named, weighted terms, each ``{fn, weight, pred, target, voxel_weight}``: ``fn(outputs[pred],
  batch[target], weight=batch[voxel_weight])``; the task logs every term as ``train/<name>`` and their
  weighted sum as ``train/loss``. A loss function that needs a per-voxel weight says which by its own
  ``voxel_weight`` attribute (``WCELoss``: ``weight_map``), which the model then adds to its targets, so that
  ``loss=wce_hgd`` alone switches a model to Wang's weighted loss.

Hydra builds a model from ``conf/model/<name>.yaml``; the checkpoint stores that whole resolved config, so
``predict.py`` rebuilds any model from the checkpoint alone (``strokelab.inference``). A new model family is a
subclass with its own ``forward`` plus configs: nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from strokelab.errors import ConfigError
from strokelab.nn.sliding_window import infer

OUTPUT_KINDS = ("mask", "map", "image")
DEFAULT_INFERENCE = {"patch_size": (64, 64, 16), "overlap": 0.5, "batch_size": 4, "mirror_axes": ()}


@dataclass
class LossTerm:
    """One named term of a model's loss: ``weight * fn(outputs[pred], batch[target], weight=batch[voxel_weight])``."""

    fn: Callable[..., Tensor]
    weight: float = 1.0
    pred: str = "logits"
    target: str = "label"
    voxel_weight: str | None = None


@dataclass(frozen=True)
class OutputSpec:
    """How an output is written and scored (see the module docstring)."""

    kind: str = "mask"
    value_range: tuple[float, float] | None = None  # map/image: clip to this range (the output's units)
    channels: int = 1
    reference: str | None = None  # map/image: the target (and case modality) it is scored against; None: not scored


class Model(nn.Module):
    """Networks plus named inputs, targets, outputs and loss terms (see the module docstring).

    Subclasses build their networks in ``__init__`` (as ``nn.Module`` attributes) and implement
    :meth:`forward`, a mapping of named input tensors ``(B, C, *spatial)`` to named output tensors. In training
    mode an output may be a list (deep supervision, highest resolution first) when its loss terms accept one.
    """

    def __init__(
        self,
        inputs: Sequence[str],
        targets: Sequence[str],
        outputs: Mapping[str, Any],
        losses: Mapping[str, Any] | None = None,
        spatial_dims: int = 3,
        inference: Mapping[str, Any] | None = None,
        threshold: float = 0.5,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ):
        super().__init__()
        self.inputs = [str(m) for m in inputs]
        self.targets = [str(t) for t in targets]
        if not self.inputs:
            raise ConfigError("model.inputs", "is empty", "list the images the model reads, e.g. [cbf, cbv, mtt, tmax]")
        self.spatial_dims = int(spatial_dims)
        if self.spatial_dims not in (2, 3):
            raise ConfigError("model.spatial_dims", f"is {spatial_dims}", "use 2 (axial slices) or 3")
        self.outputs: dict[str, OutputSpec] = {}
        for name, spec in dict(outputs).items():
            spec = dict(spec or {})
            if spec.get("value_range") is not None:
                spec["value_range"] = tuple(float(v) for v in spec["value_range"])
            try:
                self.outputs[str(name)] = OutputSpec(**spec)
            except TypeError as exc:
                raise ConfigError(f"model.outputs.{name}", str(exc), "keys: kind, value_range, channels, reference") from None
            if self.outputs[name].kind not in OUTPUT_KINDS:
                raise ConfigError(f"model.outputs.{name}.kind", f"is {spec.get('kind')!r}", f"use one of {OUTPUT_KINDS}")
        if not self.outputs:
            raise ConfigError("model.outputs", "is empty", "declare what the model writes, e.g. {logits: {kind: mask}}")
        if sum(s.kind == "mask" for s in self.outputs.values()) > 1:
            raise ConfigError("model.outputs", "declares more than one mask", "a model writes one lesion mask")
        self.loss_terms: dict[str, LossTerm] = {}
        for name, term in dict(losses or {}).items():
            if term is None:
                continue
            term = dict(term)
            if "fn" not in term:
                raise ConfigError(f"model.losses.{name}", "has no fn", "give fn: {_target_: strokelab.losses....}")
            # A loss that needs a per-voxel weight names it (WCE: Wang's weight_map); the model then serves it.
            needed = getattr(term["fn"], "voxel_weight", None)
            if term.get("voxel_weight") is None and needed is not None:
                term["voxel_weight"] = needed
                if needed not in self.targets:
                    self.targets.append(needed)
            self.loss_terms[str(name)] = LossTerm(**term)
            where = self.loss_terms[name]
            if where.target not in self.targets:
                raise ConfigError(
                    f"model.losses.{name}.target", f"'{where.target}' is not among targets {self.targets}", "add it"
                )
            if where.voxel_weight is not None and where.voxel_weight not in self.targets:
                raise ConfigError(
                    f"model.losses.{name}.voxel_weight", f"'{where.voxel_weight}' is not among targets {self.targets}", "add it"
                )
        # Loss functions with parameters or buffers move with the model.
        self.loss_modules = nn.ModuleDict({k: t.fn for k, t in self.loss_terms.items() if isinstance(t.fn, nn.Module)})
        self.inference = {**DEFAULT_INFERENCE, **dict(inference or {}), "spatial_dims": self.spatial_dims}
        if self.spatial_dims == 2 and len(self.inference["patch_size"]) == 3:  # the in-plane part of a 3D patch size
            self.inference["patch_size"] = tuple(self.inference["patch_size"][:2])
        self.threshold = float(threshold)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    derived_targets: tuple[str, ...] = ()  # targets the model computes itself (extra_targets), not served by the data

    # -- what subclasses add: forward(inputs) -> outputs, and optionally -----------------------------
    def extra_targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Targets a model derives from the served ones (e.g. the regression's reference brain); none by default."""
        return {}

    # -- shared machinery ------------------------------------------------------------------------
    @property
    def served_targets(self) -> list[str]:
        """What the data side must serve besides the inputs."""
        return [t for t in self.targets if t not in self.derived_targets]

    @property
    def mask_output(self) -> str | None:
        return next((n for n, s in self.outputs.items() if s.kind == "mask"), None)

    active_losses: list[str] | None = None  # a training stage's terms (None: all); see models.chain

    def set_epoch(self, epoch: int, max_epochs: int) -> None:
        """Called by the task before every training epoch; a model trained in stages switches here."""

    def losses(self, outputs: dict[str, Any], batch: dict[str, Tensor], partial: bool = False) -> dict[str, Tensor]:
        """Every named loss term (unweighted) and ``loss``, their weighted sum (the active stage's terms only).
        ``partial``: skip terms whose prediction is not in ``outputs`` (validation on whole volumes has no
        training-only outputs such as a discriminator's scores)."""
        batch = {**batch, **self.extra_targets(batch)}
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None
        names = self.loss_terms if self.active_losses is None else self.active_losses
        for name in names:
            term = self.loss_terms[name]
            if partial and (term.pred not in outputs or term.target not in batch):
                continue
            kwargs = {} if term.voxel_weight is None else {"weight": batch[term.voxel_weight]}
            value = term.fn(outputs[term.pred], batch[term.target].float(), **kwargs)
            terms[name] = value
            total = term.weight * value if total is None else total + term.weight * value
        if total is None:
            if partial:  # e.g. validating a stage whose terms are all training-only: no validation loss
                return terms
            raise ConfigError("model.losses", "is empty", "declare at least one loss term to train the model")
        terms["loss"] = total
        return terms

    @torch.no_grad()
    def predict_volume(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every declared output for whole volumes ``(B, C, X, Y, Z)`` by Gaussian sliding windows (slice by slice
        in 2D), in the model's current mode (the caller sets eval). Maps are clipped to their value range and set
        to 0 outside ``images["brain"]`` when it is given."""
        channels = {m: int(images[m].shape[1]) for m in self.inputs}
        names = list(self.outputs)
        x = torch.cat([images[m].float() for m in self.inputs], dim=1)

        def window(patch: Tensor) -> Tensor:
            named, start = {}, 0
            for m in self.inputs:
                named[m] = patch[:, start : start + channels[m]]
                start += channels[m]
            out = self(named)
            return torch.cat([out[n] for n in names], dim=1)

        stacked = infer(window, x, self.inference)
        result, start = {}, 0
        for n in names:
            k = self.outputs[n].channels
            result[n] = stacked[:, start : start + k]
            start += k
        brain = images.get("brain")
        for n, spec in self.outputs.items():
            if spec.kind == "mask":
                continue
            if brain is not None:
                result[n] = result[n] * (brain > 0)
            if spec.value_range is not None:
                result[n] = result[n].clamp(*spec.value_range)
        return result

    def generator_parameters(self) -> list[nn.Parameter]:
        """What the main optimiser updates (a model with an adversary leaves out the discriminator's)."""
        return list(self.parameters())

    # A model with an adversary has a ``discriminator`` module, trained by the task's second optimiser on
    # discriminator_loss while discriminator_active (not a class attribute: nn.Module registers submodules).
    discriminator_active: bool = False

    def discriminator_loss(self, outputs: dict[str, Any], batch: dict[str, Tensor]) -> Tensor:
        raise ConfigError("model.discriminator", "is not set", "only a model with an adversary has a discriminator loss")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

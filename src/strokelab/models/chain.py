"""Wang et al. 2020's pseudo-DWI chain (``shared/seeds/002``, sections 3.1-3.4): feature extractor Φ_e,
pseudo-DWI generator Φ_g and segmentation network Φ_s, trained end to end or stage by stage.

::

    I* (ctp_window, Ce frames) --Φ_e--> F_h                                         (Eq. 4)
    [F_o (cbf, cbv, mtt, tmax), F_l (ctp_mip), F_h] --Φ_g--> I_g (pseudo-DWI)       (Eq. 5)
    I_g (optionally with F_o) --Φ_s--> lesion logits                                (Eq. 10)

    L = L_s(P, Y) + α L_g(I_g, I_d) + β L_e(F_h, I_d)                               (Eq. 15)
    L_g = ℓ_l + γ ℓ_h,  ℓ_l = ||A·(I_g - I_d)||,  ℓ_h = ||Φ_c(I_g) - Φ_c(I_d)||     (Eq. 6-8)
    L_e(F_h, I_d) = L_g(F_h, I_d)

The loss terms have fixed names, so that Eq. 15's weights are applied here (``alpha``, ``beta``, ``gamma``)
and every term is logged by name (``train/synth_pixel`` ...):

* ``seg``: L_s on ``logits`` against ``label`` (Wang's WCE + HGD, or any segmentation loss);
* ``synth_pixel`` (×α) and ``synth_context`` (×αγ): ℓ_l and ℓ_h of the pseudo-DWI against the DWI;
* ``extract_pixel`` (×β) and ``extract_context`` (×βγ): the same for F_h (Eq. 15's L_e); leaving them out
  gives Table 2's F_h* (the extractor trained only through the generator);
* ``adversarial``: the LSGAN generator loss on the discriminator's scores of I_g (Table 1's GAN rows); the
  discriminator is then trained by the task's second optimiser on :meth:`discriminator_loss`.

**The context encoder Φ_c is frozen at its random (Xavier) initialisation.** Minimising ℓ_h over Φ_c's own
weights would drive it to a constant (ℓ_h = 0 for any pair of images); the paper does not say how it avoids
that. A frozen random convolutional encoder is a fixed non-linear projection that still separates images
(random-feature perceptual losses; measured in ``tests/test_synthesis.py``: ℓ_h is 0 only for identical
images and grows with the difference), costs no pre-training and is stored in the checkpoint, so a run is
reproducible from its seed.

Sequential training (Table 5's DWI^{o,l,h}(s), Table 1's U-Net on each row's pseudo-DWI) is ``stages``: a
list of ``{epochs, train, losses}`` (share of ``trainer.max_epochs``, the networks updated, the loss terms
used); the networks not trained in a stage are frozen and kept in eval mode. Without ``stages`` everything
is trained together (end to end).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from strokelab.errors import ConfigError
from strokelab.losses.synthesis import lsgan_discriminator_loss
from strokelab.models.base import Model

NETWORKS = ("extractor", "generator", "segmenter")
LOSS_TERMS = ("seg", "synth_pixel", "synth_context", "extract_pixel", "extract_context", "adversarial")
PSEUDO = "pseudo_dwi"
# term -> (prediction it reads, the Eq. 15 factor that multiplies its configured weight)
_TERM_PRED = {
    "seg": "logits",
    "synth_pixel": PSEUDO,
    "synth_context": f"{PSEUDO}_context",
    "extract_pixel": "features",
    "extract_context": "features_context",
    "adversarial": f"{PSEUDO}_score",
}


def _build(net: Any, in_channels: int) -> nn.Module | None:
    """A network given as a Hydra partial gets its input channels here (the chain knows them); a built
    module is used as is."""
    if net is None or isinstance(net, nn.Module):
        return net
    return net(in_channels=in_channels)


def staged_decay(
    optimizer: torch.optim.Optimizer,
    stages: Sequence[Mapping[str, Any]] | None,
    max_epochs: int,
    fraction: float = 0.6,
    gamma: float = 0.2,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Wang et al.'s schedule (lr x``gamma`` after ``fraction`` of the epochs) restarted at every training
    stage, so that each network of a sequential run gets the schedule the paper gives one run; without stages
    it is ``MultiStepLR`` with its milestone at ``round(fraction * max_epochs)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _StageDecay(stage_bounds(stages, max_epochs), fraction, gamma))


def stage_bounds(stages: Sequence[Mapping[str, Any]] | None, max_epochs: int) -> list[int]:
    """First epoch of every stage and ``max_epochs`` (``[0, max_epochs]`` without stages)."""
    bounds, total = [0], 0.0
    for stage in stages or []:
        total += float(dict(stage).get("epochs", 0))
        bounds.append(round(total * max_epochs))
    if len(bounds) == 1:
        bounds.append(int(max_epochs))
    bounds[-1] = int(max_epochs)
    return bounds


class _StageDecay:
    """Picklable lr factor of :func:`staged_decay`."""

    def __init__(self, bounds: list[int], fraction: float, gamma: float):
        self.bounds, self.fraction, self.gamma = list(bounds), float(fraction), float(gamma)

    def __call__(self, epoch: int) -> float:
        start, end = self.bounds[0], self.bounds[-1]
        for a, b in zip(self.bounds[:-1], self.bounds[1:]):
            if a <= epoch < b:
                start, end = a, b
                break
        drop = start + max(1, round(self.fraction * (end - start)))
        return self.gamma if epoch >= drop else 1.0


class PseudoDWIChain(Model):
    """Φ_e (optional) → Φ_g → Φ_s (optional); see the module docstring.

    ``maps``: the perfusion maps F_o (inputs, one channel each); ``mip``: the temporal MIP input F_l or None;
    ``window``: the cropped and resampled CTP I* (``window_channels`` frames, read by ``extractor``) or None;
    ``segment_from``: what Φ_s reads, ``pseudo_dwi`` and/or input names (Table 5's F_o + DWI^{o,l,h});
    ``target``: the DWI. ``discriminator_optimizer``: a partial optimiser for the discriminator (Table 1's
    GAN rows; default: the model's). ``extractor``, ``generator`` and ``segmenter`` may be Hydra partials without
    ``in_channels`` (the chain gives them theirs); ``segmenter`` None gives a synthesis-only model.
    """

    derived_targets = ("dwi_context",)

    def __init__(
        self,
        generator: nn.Module,
        maps: Sequence[str] = ("cbf", "cbv", "mtt", "tmax"),
        mip: str | None = "ctp_mip",
        window: str | None = "ctp_window",
        extractor: nn.Module | None = None,
        segmenter: nn.Module | None = None,
        segment_from: Sequence[str] = (PSEUDO,),
        context_encoder: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        discriminator_optimizer: Any = None,
        losses: Mapping[str, Any] | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.2,
        stages: Sequence[Mapping[str, Any]] | None = None,
        target: str = "dwi",
        window_channels: int = 6,
        **settings: Any,
    ):
        self.maps = [str(m) for m in maps]
        self.mip = None if not mip else str(mip)
        self.window = None if not window else str(window)
        if (self.window is None) != (extractor is None):
            raise ConfigError(
                "model.extractor",
                "and model.window go together",
                "set both (F_h from I*) or neither (window: null, extractor: null)",
            )
        inputs = [*self.maps, *([self.mip] if self.mip else []), *([self.window] if self.window else [])]
        self.segment_from = [str(s) for s in segment_from]
        for s in self.segment_from:
            if s != PSEUDO and s not in inputs:
                raise ConfigError("model.segment_from", f"'{s}' is neither pseudo_dwi nor an input {inputs}", "fix the name")
            if s == self.window:
                raise ConfigError(
                    "model.segment_from", f"cannot hold the {window_channels}-frame '{s}'", "use pseudo_dwi and maps"
                )
        extractor = _build(extractor, int(window_channels))
        generator = _build(generator, len(self.maps) + bool(self.mip) + (extractor is not None))
        segmenter = _build(segmenter, len(self.segment_from))
        self.target = str(target)
        terms = {k: v for k, v in dict(losses or {}).items() if v is not None}
        unknown = sorted(set(terms) - set(LOSS_TERMS))
        if unknown:
            raise ConfigError("model.losses", f"unknown term(s) {unknown}", f"the chain's terms are {list(LOSS_TERMS)}")
        needs = {
            "seg": segmenter,
            "extract_pixel": extractor,
            "extract_context": extractor,
            "synth_context": context_encoder,
            "adversarial": discriminator,
        }
        for name in terms:
            if name in needs and needs[name] is None:
                raise ConfigError(f"model.losses.{name}", "needs a network the model does not have", "add it or drop the term")
        if "extract_context" in terms and context_encoder is None:
            raise ConfigError("model.losses.extract_context", "needs model.context_encoder", "add it or drop the term")
        factor = {
            "seg": 1.0,
            "synth_pixel": alpha,
            "synth_context": alpha * gamma,
            "extract_pixel": beta,
            "extract_context": beta * gamma,
            "adversarial": 1.0,
        }
        built = {}
        for name, term in terms.items():
            term = dict(term)
            term.setdefault("pred", _TERM_PRED[name])
            term.setdefault("target", "label" if name == "seg" else ("dwi_context" if name.endswith("context") else self.target))
            term["weight"] = float(term.get("weight", 1.0)) * float(factor[name])
            built[name] = term
        targets = [self.target, "label"]  # the label: L_s, and the region of the local SSIM/PSNR
        if context_encoder is not None:
            targets.append("dwi_context")
        outputs: dict[str, Any] = {PSEUDO: {"kind": "image", "value_range": (0.0, 1.0), "reference": self.target}}
        if segmenter is not None:
            outputs["logits"] = {"kind": "mask"}
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        super().__init__(inputs, targets, outputs, built, **settings)
        self.extractor, self.generator, self.segmenter = extractor, generator, segmenter
        self.context_encoder, self.discriminator = context_encoder, discriminator
        self.discriminator_optimizer_factory = discriminator_optimizer  # None: the model's optimiser settings
        if context_encoder is not None:
            context_encoder.requires_grad_(False)  # frozen random projection: see the module docstring
        self.stages = self._parse_stages(stages)
        self.active_losses: list[str] | None = None
        self.trained_networks: tuple[str, ...] = tuple(n for n in NETWORKS if getattr(self, n) is not None)

    # -- configuration -----------------------------------------------------------------------------
    def _parse_stages(self, stages) -> list[dict[str, Any]]:
        out, total = [], 0.0
        for i, stage in enumerate(stages or []):
            stage = dict(stage)
            unknown = set(stage) - {"epochs", "train", "losses"}
            if unknown:
                raise ConfigError(f"model.stages[{i}]", f"unknown key(s) {sorted(unknown)}", "use epochs, train, losses")
            train = [str(n) for n in stage.get("train", [])]
            bad = [n for n in train if n not in NETWORKS or getattr(self, n, None) is None]
            if not train or bad:
                raise ConfigError(
                    f"model.stages[{i}].train", f"is {train}", f"name networks the model has: {list(self.trained_networks_all())}"
                )
            named = [str(n) for n in stage.get("losses", [])]
            unknown = [n for n in named if n not in LOSS_TERMS]
            losses = [n for n in named if n in self.loss_terms]  # a known term the model leaves out is skipped
            if unknown or not losses:
                raise ConfigError(
                    f"model.stages[{i}].losses", f"is {named}", f"name loss terms the model has: {list(self.loss_terms)}"
                )
            share = float(stage.get("epochs", 0))
            if share <= 0:
                raise ConfigError(
                    f"model.stages[{i}].epochs", f"is {share}", "give the stage's share of trainer.max_epochs, e.g. 0.5"
                )
            total += share
            out.append({"epochs": share, "train": train, "losses": losses, "until": total})
        if out and abs(total - 1.0) > 1e-3:
            raise ConfigError("model.stages", f"epoch shares sum to {total:g}", "make them sum to 1")
        return out

    def trained_networks_all(self) -> tuple[str, ...]:
        return tuple(n for n in NETWORKS if getattr(self, n, None) is not None)

    # -- training schedule -------------------------------------------------------------------------
    def stage_of(self, epoch: int, max_epochs: int) -> int | None:
        """Index of the stage that trains ``epoch`` (None without stages)."""
        if not self.stages:
            return None
        for i, stage in enumerate(self.stages):
            if epoch < round(stage["until"] * max_epochs):
                return i
        return len(self.stages) - 1

    def set_epoch(self, epoch: int, max_epochs: int) -> None:
        """Select the stage of ``epoch``: its loss terms, its trainable networks (the others frozen, in eval mode)."""
        i = self.stage_of(epoch, max_epochs)
        if i is None:
            self.active_losses, self.trained_networks = None, self.trained_networks_all()
        else:
            self.active_losses = list(self.stages[i]["losses"])
            self.trained_networks = tuple(self.stages[i]["train"])
        for name in self.trained_networks_all():
            getattr(self, name).requires_grad_(name in self.trained_networks)
        if self.discriminator is not None:
            self.discriminator.requires_grad_(self.discriminator_active)
        self.train(self.training)

    @property
    def discriminator_active(self) -> bool:
        return (
            self.discriminator is not None
            and "generator" in self.trained_networks
            and (self.active_losses is None or "adversarial" in self.active_losses)
        )

    def train(self, mode: bool = True) -> PseudoDWIChain:
        super().train(mode)
        for name in self.trained_networks_all():
            if name not in getattr(self, "trained_networks", NETWORKS):
                getattr(self, name).eval()
        if self.context_encoder is not None:
            self.context_encoder.eval()
        return self

    def generator_parameters(self) -> list[nn.Parameter]:
        """Everything the main optimiser updates: all but the discriminator and the frozen context encoder."""
        skip = {id(p) for m in (self.discriminator, self.context_encoder) if m is not None for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    # -- forward and losses --------------------------------------------------------------------------
    def _needed(self) -> set[str]:
        names = self.loss_terms if self.active_losses is None else self.active_losses
        return {self.loss_terms[n].pred for n in names}

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        parts = [inputs[m].float() for m in self.maps]
        if self.mip:
            parts.append(inputs[self.mip].float())
        if self.extractor is not None:
            out["features"] = self.extractor(inputs[self.window].float())
            parts.append(out["features"])
        pseudo = self.generator(torch.cat(parts, dim=1))
        out[PSEUDO] = pseudo
        if self.segmenter is not None:
            stacked = torch.cat([pseudo if s == PSEUDO else inputs[s].float() for s in self.segment_from], dim=1)
            out["logits"] = self.segmenter(stacked)
        if self.training:
            needed = self._needed()
            if f"{PSEUDO}_context" in needed:
                out[f"{PSEUDO}_context"] = self.context_encoder(pseudo)
            if "features_context" in needed:
                out["features_context"] = self.context_encoder(out["features"])
            if f"{PSEUDO}_score" in needed:
                out[f"{PSEUDO}_score"] = self.discriminator(pseudo)
        return out

    def extra_targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        image = batch.get(self.target)
        if self.context_encoder is None or image is None or image.dim() != self.spatial_dims + 2:
            return {}  # whole 3D volumes in 2D validation: the context terms are training-only
        with torch.no_grad():
            return {"dwi_context": self.context_encoder(batch[self.target].float())}

    def discriminator_loss(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """LSGAN loss of the discriminator: real DWI against the (detached) pseudo-DWI."""
        real = self.discriminator(batch[self.target].float())
        fake = self.discriminator(outputs[PSEUDO].detach())
        return lsgan_discriminator_loss(real, fake)

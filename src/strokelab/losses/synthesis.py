"""Losses for pseudo-DWI synthesis (Wang et al. 2020, Sec. 3.2, Eqs. 6-8, and Table 1's compared losses).

Wang's generator loss (Eq. 6) is ``L_g(I_g, I_d) = l_l(I_g, I_d) + gamma * l_h(I_g, I_d)`` with

* ``l_l = || A . (I_g - I_d) ||_2`` (Eq. 7): :class:`PixelLoss` (``norm="l2", weighted=True``), ``A`` the weight
  map of Eq. 9 (:func:`strokelab.losses.weight_map`);
* ``l_h = || Phi_c(I_g) - Phi_c(I_d) ||_1`` (Eq. 8): :class:`ContextLoss` on the outputs of the context encoder
  :class:`strokelab.nn.context.ContextEncoder`.

Table 1's rows map onto these as: ``L1`` = ``PixelLoss("l1")``, ``L2`` = ``PixelLoss("l2")``, ``w-L2`` =
``PixelLoss("l2", weighted=True)``, ``w-L2 + l_h1`` = that + ``gamma * ContextLoss("l1")`` (the proposed loss),
``w-L2 + l_h2`` = that + ``gamma * ContextLoss("l2")``, ``GAN`` = :class:`LSGANGeneratorLoss` (with
:func:`lsgan_discriminator_loss` for the discriminator :class:`strokelab.nn.discriminator.PatchDiscriminator`,
LSGAN of Mao et al. 2017) and ``L2 + GAN`` = ``PixelLoss("l2")`` + ``LSGANGeneratorLoss``.

Same call convention as every loss of :mod:`strokelab.losses`: ``loss(pred, target, weight=None) -> scalar``,
computed in float32. Norms are taken as means over the elements (not sums), so values do not depend on the image
size; the L2 "norm" is the mean squared difference (see :class:`PixelLoss`).
"""

from __future__ import annotations

from torch import Tensor, nn

from strokelab.errors import ConfigError

from ._common import _check_pair, _check_weight

#: Norms accepted by :class:`PixelLoss` and :class:`ContextLoss`.
SYNTHESIS_NORMS: tuple[str, ...] = ("l1", "l2")


def _check_norm(norm: str, who: str) -> str:
    value = str(norm).lower()
    if value not in SYNTHESIS_NORMS:
        raise ConfigError(who, f"norm is {norm!r}", "use 'l2' (mean squared difference) or 'l1' (mean absolute difference)")
    return value


def _reduce(d: Tensor, norm: str) -> Tensor:
    return d.square().mean() if norm == "l2" else d.abs().mean()


def _refuse(weight: Tensor | None, who: str) -> None:
    if weight is not None:
        raise ValueError(f"{who} takes no per-voxel weight (got one): do not set voxel_weight for this loss term")


class PixelLoss(nn.Module):
    """Wang et al.'s pixel-wise synthesis loss ``l_l`` (Eq. 7) and Table 1's L1 / L2 / w-L2 variants.

    ``d = pred - target``; with a ``weight`` map ``A``, ``d = A * d`` (``A`` multiplies the difference inside the
    norm, as in Eq. 7, so a voxel's squared error counts ``A_i ** 2`` times); then

    * ``norm="l2"``: ``mean(d ** 2)``, the squared L2 norm per voxel. Without a weight this is the MSE, and
      ``PSNR = 10 log10(MAX^2 / MSE)``, so minimising it maximises the PSNR (the paper's reason for L2 here).
      The square (rather than the norm itself) has the same minimiser and a gradient that does not blow up at 0.
    * ``norm="l1"``: ``mean(|d|)``.

    Args:
        norm: ``"l2"`` (default, Eq. 7) or ``"l1"``; anything else raises :class:`~strokelab.errors.ConfigError`.
        weighted: ``True`` for Eq. 7 with Eq. 9's map (Table 1's w-L2): the instance then has
            ``voxel_weight = "weight_map"``, so a model serves ``A`` and passes it as ``weight``; calling it without
            a weight raises ``ValueError``. ``False`` (``A_i = 1``, Table 1's L1 and L2): ``voxel_weight = None``; a
            weight passed explicitly (e.g. a configured brain mask) is still applied as above.

    ``pred`` and ``target`` are ``(B, 1, *spatial)`` (a missing channel axis on ``target`` or ``weight`` is added);
    ``target`` may have any dtype (it is cast to float32).
    """

    def __init__(self, norm: str = "l2", weighted: bool = False):
        super().__init__()
        self.norm = _check_norm(norm, "PixelLoss")
        self.weighted = bool(weighted)
        self.voxel_weight: str | None = "weight_map" if self.weighted else None

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        who = type(self).__name__
        if self.weighted and weight is None:
            raise ValueError(
                f"{who}(weighted=True) needs the weight map A: call loss(pred, target, weight=A) "
                "(A from strokelab.losses.weight_map), or use weighted=False for A = 1"
            )
        target = _check_pair(pred, target, who)
        d = pred.float() - target
        if weight is not None:
            d = _check_weight(pred, weight, who) * d
        return _reduce(d, self.norm)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, weighted={self.weighted}"


class ContextLoss(nn.Module):
    """Wang et al.'s high-level contextual loss ``l_h`` (Eq. 8) between two encodings ``(B, F)``.

    ``pred = Phi_c(I_g)`` and ``target = Phi_c(I_d)`` (:class:`strokelab.nn.context.ContextEncoder`);
    ``norm="l1"`` (default, the paper's ``l_h1``): ``mean(|pred - target|)``; ``norm="l2"`` (Table 1's
    ``l_h2``): ``mean((pred - target) ** 2)``. Takes no ``weight`` (``ValueError``); ``voxel_weight = None``.
    """

    voxel_weight = None

    def __init__(self, norm: str = "l1"):
        super().__init__()
        self.norm = _check_norm(norm, "ContextLoss")

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        _refuse(weight, "ContextLoss")
        if pred.shape != target.shape:
            raise ValueError(f"ContextLoss: encodings of different shapes {tuple(pred.shape)} and {tuple(target.shape)}")
        return _reduce(pred.float() - target.float(), self.norm)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"


class LSGANGeneratorLoss(nn.Module):
    """LSGAN generator loss (Mao et al. 2017, ``c = 1``): ``0.5 * mean((D(G(x)) - 1) ** 2)``.

    ``fake_scores`` is the discriminator's score map on generated images; ``target`` is accepted (a model passes
    its configured target) and ignored; ``weight`` must be None. ``voxel_weight = None``. 0 when every score is 1.
    """

    voxel_weight = None

    def forward(self, fake_scores: Tensor, target: Tensor | None = None, weight: Tensor | None = None) -> Tensor:
        _refuse(weight, "LSGANGeneratorLoss")
        return 0.5 * (fake_scores.float() - 1.0).square().mean()


def lsgan_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """LSGAN discriminator loss (Mao et al. 2017, ``a = 0``, ``b = 1``):
    ``0.5 * (mean((D(real) - 1) ** 2) + mean(D(fake) ** 2))``, in float32; 0 when real scores are 1 and fake 0.

    Detach the generated images before scoring them here so that this loss does not update the generator.
    """
    real = (real_scores.float() - 1.0).square().mean()
    fake = fake_scores.float().square().mean()
    return 0.5 * (real + fake)


__all__ = ["SYNTHESIS_NORMS", "ContextLoss", "LSGANGeneratorLoss", "PixelLoss", "lsgan_discriminator_loss"]

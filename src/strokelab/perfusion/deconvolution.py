"""Deconvolution of tissue enhancement curves by an arterial input function (AIF).

The indicator-dilution model (the convention of ``strokelab.data.phantom``) says that the enhancement of
a tissue voxel is the AIF convolved with a flow-scaled residue function::

    C(t) = (rho / kH) * F * integral_0^t  AIF(tau) R(t - tau) dtau  =  integral_0^t AIF(tau) k(t - tau) dtau

with ``C`` and ``AIF`` in the same unit (HU above baseline), ``F`` the flow in ml/g/s, ``R(0) = 1`` and
``k(t) = (rho/kH) * F * R(t)`` the *scaled residue* in 1/s. Sampled at ``t_i = i * dt`` (``dt`` in s) the
convolution becomes a matrix product ``c = A k`` and each method below estimates ``k`` from ``c``:

``ssvd``
    Truncated SVD of the lower-triangular Toeplitz matrix ``A[i, j] = dt * aif[i - j]`` (j <= i),
    singular values below ``ssvd_threshold`` (default 0.2) times the largest are discarded
    (Ostergaard et al. 1996). Sensitive to delay: a tissue curve that arrives after the AIF makes CBF
    come out too low.
``bcsvd``
    Block-circulant SVD (Wu et al. 2003): the AIF is zero-padded to ``L = 2N`` samples and weighted as
    ``w[m] = (p[m-1] + 4 p[m] + p[m+1]) / 6`` (the linear-interpolation "Simpson" weights of Wu et al.,
    indices taken modulo L), and the circulant matrix ``D[i, j] = dt * w[(i - j) mod L]`` is inverted
    by truncated SVD (``bcsvd_threshold``, default 0.1). Circular shifts commute with ``D``, so a delayed
    tissue curve gives a shifted, otherwise identical residue: CBF does not depend on delay. Residue
    samples ``j >= N`` stand for negative times ``(j - L) * dt`` (tissue earlier than the AIF).
``osvd``
    Oscillation-index SVD (Wu et al. 2003): per voxel, the smallest truncation threshold from
    ``osvd_thresholds`` (ascending) whose block-circulant residue has an oscillation index (see
    :func:`oscillation_index`) below ``osvd_oi`` (default 0.035); the last threshold is used where none
    qualifies.
``tikhonov``
    Tikhonov-regularised inverse of the block-circulant matrix (or of ``A`` if ``tikhonov_circulant`` is
    false): filter factors ``s / (s^2 + lambda^2)`` with ``lambda = tikhonov_lambda * s_max``.

All methods are vectorised: a pseudo-inverse is computed once per truncation level, and a block of
voxels is deconvolved with one matrix product ``curves @ W`` (oSVD: one per level tried, only on the
voxels that have not yet reached the oscillation limit). There is no Python loop over voxels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from strokelab.errors import ConfigError, DataError

METHODS = ("bcsvd", "ssvd", "osvd", "tikhonov")
CIRCULANT_METHODS = ("bcsvd", "osvd")

_OSVD_BLOCK = 2048
_OSVD_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95 as in Wu et al.


@dataclass(frozen=True)
class DeconvolutionSettings:
    """How tissue curves are deconvolved. Thresholds are fractions of the largest singular value.

    method: one of ``bcsvd`` (default), ``ssvd``, ``osvd``, ``tikhonov``.
    ssvd_threshold: sSVD truncation (0.2 as in Ostergaard et al. 1996).
    bcsvd_threshold: block-circulant SVD truncation (0.1 as in Wu et al. 2003).
    osvd_oi: oscillation-index limit of oSVD (0.035 as in Wu et al. 2003).
    osvd_thresholds: truncation levels oSVD tries, ascending (least truncation first).
    tikhonov_lambda: Tikhonov parameter relative to the largest singular value.
    tikhonov_circulant: Tikhonov on the block-circulant matrix (delay-insensitive) or on the plain one.
    """

    method: str = "bcsvd"
    ssvd_threshold: float = 0.2
    bcsvd_threshold: float = 0.1
    osvd_oi: float = 0.035
    osvd_thresholds: tuple[float, ...] = _OSVD_THRESHOLDS
    tikhonov_lambda: float = 0.1
    tikhonov_circulant: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", str(self.method).lower())
        try:
            object.__setattr__(self, "osvd_thresholds", tuple(float(v) for v in self.osvd_thresholds))
        except (TypeError, ValueError):
            raise ConfigError(
                "perfusion.deconvolution.osvd_thresholds", f"is {self.osvd_thresholds!r}", "give a list of numbers"
            ) from None
        if self.method not in METHODS:
            raise ConfigError("perfusion.deconvolution.method", f"is {self.method!r}", f"use one of {', '.join(METHODS)}")
        for name in ("ssvd_threshold", "bcsvd_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"perfusion.deconvolution.{name}", f"is {getattr(self, name)}", "use a fraction in [0, 1)")
        if self.osvd_oi <= 0:
            raise ConfigError(
                "perfusion.deconvolution.osvd_oi", f"is {self.osvd_oi}", "use a positive oscillation index, e.g. 0.035"
            )
        levels = self.osvd_thresholds
        if not levels or any(not 0.0 <= v < 1.0 for v in levels) or list(levels) != sorted(levels):
            raise ConfigError(
                "perfusion.deconvolution.osvd_thresholds",
                f"is {levels}",
                "give ascending fractions in [0, 1), e.g. 0.05 ... 0.95",
            )
        if self.tikhonov_lambda < 0:
            raise ConfigError("perfusion.deconvolution.tikhonov_lambda", f"is {self.tikhonov_lambda}", "use a non-negative value")

    def replace(self, **changes) -> DeconvolutionSettings:
        return dataclasses.replace(self, **changes)

    @property
    def threshold(self) -> float:
        """The method's own regularisation parameter (truncation, OI limit or Tikhonov lambda)."""
        return {
            "ssvd": self.ssvd_threshold,
            "bcsvd": self.bcsvd_threshold,
            "osvd": self.osvd_oi,
            "tikhonov": self.tikhonov_lambda,
        }[self.method]

    def with_threshold(self, value: float) -> DeconvolutionSettings:
        """A copy with the method's own regularisation parameter set to ``value``."""
        name = {"ssvd": "ssvd_threshold", "bcsvd": "bcsvd_threshold", "osvd": "osvd_oi", "tikhonov": "tikhonov_lambda"}
        return self.replace(**{name[self.method]: value})


# ==================================================================================================
# Matrices
# ==================================================================================================
def convolution_matrix(aif: np.ndarray, dt: float) -> np.ndarray:
    """Lower-triangular Toeplitz matrix ``A[i, j] = dt * aif[i - j]`` (j <= i), shape (N, N), in s*HU.

    ``(A @ k)[i] = dt * sum_j aif[i - j] k[j]`` is the rectangle-rule convolution at ``t_i = i * dt``.
    """
    a = np.asarray(aif, dtype=np.float64)
    n = a.size
    i, j = np.indices((n, n))
    return np.where(j <= i, dt * a[np.clip(i - j, 0, n - 1)], 0.0)


def simpson_weights(aif: np.ndarray, length: int) -> np.ndarray:
    """The AIF zero-padded to ``length`` samples and weighted ``(p[m-1] + 4 p[m] + p[m+1]) / 6`` (indices mod
    ``length``): the discretisation of Wu et al. 2003 (after Ostergaard et al. 1996), which assumes AIF and
    residue vary linearly between samples. The weights sum to the AIF's sum."""
    p = np.zeros(length, dtype=np.float64)
    a = np.asarray(aif, dtype=np.float64)
    p[: a.size] = a
    return (np.roll(p, 1) + 4.0 * p + np.roll(p, -1)) / 6.0


def circulant_matrix(aif: np.ndarray, dt: float, length: int | None = None) -> np.ndarray:
    """Block-circulant matrix ``D[i, j] = dt * w[(i - j) mod L]`` of Wu et al. 2003, shape (L, L).

    ``w`` are the Simpson weights of the AIF zero-padded to ``L = length`` (default ``2N``) samples.
    """
    a = np.asarray(aif, dtype=np.float64)
    length = 2 * a.size if length is None else int(length)
    if length < 2 * a.size:
        raise ConfigError(
            "perfusion.deconvolution", f"circulant length {length} < 2N = {2 * a.size}", "use at least twice the frames"
        )
    w = simpson_weights(a, length)
    i, j = np.indices((length, length))
    return dt * w[(i - j) % length]


def oscillation_index(residue: np.ndarray, axis: int = -1) -> np.ndarray:
    """Oscillation index of Wu et al. 2003: ``OI = sum_m |k[m] - 2 k[m-1] + k[m-2]| / (L * max(k))``.

    ``L`` is the number of samples along ``axis``. Dimensionless; ``inf`` where ``max(k) <= 0``.
    """
    k = np.moveaxis(np.asarray(residue, dtype=np.float32), axis, -1)
    second = np.abs(k[..., 2:] - 2.0 * k[..., 1:-1] + k[..., :-2]).sum(axis=-1)
    peak = k.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        oi = second / (k.shape[-1] * peak)
    return np.where(peak > 0, oi, np.inf).astype(np.float32)


def _truncated_pinv(u: np.ndarray, s: np.ndarray, vt: np.ndarray, threshold: float) -> np.ndarray:
    keep = s >= threshold * s[0]
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    return (vt.T * inv) @ u.T


# ==================================================================================================
# Deconvolver
# ==================================================================================================
class Deconvolver:
    """Deconvolution by one AIF: the pseudo-inverses are built once, then applied to blocks of curves.

    Args:
        aif: arterial enhancement (HU above baseline), one value per frame, shape (N,).
        dt: frame interval in s.
        settings: method and regularisation (:class:`DeconvolutionSettings`).

    ``residue(curves)`` returns the scaled residue ``k = (rho/kH) * F * R`` in 1/s for curves of shape
    (n, N) in the AIF's unit; its sample ``j`` belongs to time ``times[j]`` (s).
    """

    def __init__(self, aif: np.ndarray, dt: float, settings: DeconvolutionSettings = DeconvolutionSettings()):
        aif = np.asarray(aif, dtype=np.float64).ravel()
        if aif.size < 3:
            raise DataError("AIF", f"has {aif.size} samples", "give at least 3 frames")
        if not np.all(np.isfinite(aif)):
            raise DataError("AIF", "contains NaN or Inf", "check the AIF curve or mask")
        if not aif.max() > 0:
            raise DataError("AIF", "has no positive enhancement", "choose voxels inside an artery that enhance with the bolus")
        if not dt > 0:
            raise ConfigError("perfusion.dt", f"is {dt}", "use the positive frame interval in s")
        self.aif = aif
        self.dt = float(dt)
        self.settings = settings
        self.method = settings.method
        n = aif.size
        self.n_frames = n
        circulant = self.method in CIRCULANT_METHODS or (self.method == "tikhonov" and settings.tikhonov_circulant)
        self.circulant = circulant
        if self.method == "ssvd":
            self.levels: tuple[float, ...] = (settings.ssvd_threshold,)
        elif self.method == "bcsvd":
            self.levels = (settings.bcsvd_threshold,)
        elif self.method == "osvd":
            self.levels = settings.osvd_thresholds
        else:
            self.levels = (settings.tikhonov_lambda,)
        pinvs = self._circulant_inverses(aif, dt) if circulant else self._toeplitz_inverses(aif, dt)
        self.length = pinvs[0].shape[0]
        # Each weight matrix maps curves (n, N) to residues (n, L): W = pinv[:, :N].T (the zero padding of the
        # curve multiplies the dropped columns).
        self.weights = [np.ascontiguousarray(p[:, :n].T, dtype=np.float32) for p in pinvs]
        # oSVD: a level whose inverse equals the previous one's (same singular values kept) need not be tried.
        self._same_as_prev = [False] + [bool(np.array_equal(a, b)) for a, b in zip(self.weights[:-1], self.weights[1:])]
        self._osvd_weights: list[np.ndarray] | None = None
        j = np.arange(self.length)
        self.times = np.where(j < n, j, j - self.length if circulant else j) * self.dt

    def _toeplitz_inverses(self, aif: np.ndarray, dt: float) -> list[np.ndarray]:
        """Regularised inverses of the plain convolution matrix A, by SVD (LAPACK gesvd: gesdd can take
        100x longer on the rank-deficient matrices of smooth AIFs)."""
        from scipy.linalg import svd

        u, s, vt = svd(convolution_matrix(aif, dt), lapack_driver="gesvd")
        self.singular_values = s
        if self.method == "tikhonov":
            lam = self.settings.tikhonov_lambda * s[0]
            return [(vt.T * (s / (s**2 + lam**2))) @ u.T]
        return [_truncated_pinv(u, s, vt, level) for level in self.levels]

    def _circulant_inverses(self, aif: np.ndarray, dt: float) -> list[np.ndarray]:
        """Regularised inverses of the block-circulant matrix D. A circulant matrix is diagonalised by the
        DFT, ``D = F^-1 diag(lam) F`` with ``lam = DFT(first column)``, so its singular values are ``|lam|``
        and its SVD-truncated pseudo-inverse is the circulant matrix with eigenvalues ``1/lam`` where
        ``|lam| >= threshold * max|lam|`` and 0 elsewhere (Tikhonov: ``conj(lam) / (|lam|^2 + lambda^2)``).
        This is exactly the truncated SVD of D (tests compare with numpy's SVD), without its cost."""
        length = 2 * aif.size
        lam = np.fft.fft(dt * simpson_weights(aif, length))
        mag = np.abs(lam)
        self.singular_values = np.sort(mag)[::-1]
        smax = mag.max()
        idx = (np.arange(length)[:, None] - np.arange(length)[None, :]) % length
        filters = []
        if self.method == "tikhonov":
            mu = self.settings.tikhonov_lambda * smax
            filters.append(np.conj(lam) / (mag**2 + mu**2))
        else:
            for level in self.levels:
                keep = mag >= level * smax
                filters.append(np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0))
        return [np.fft.ifft(f).real[idx] for f in filters]

    def residue(self, curves: np.ndarray, return_level: bool = False):
        """Scaled residues ``k`` (1/s), shape (n, L), for ``curves`` of shape (n, N) or (N,).

        With ``return_level`` also the truncation level used per curve (oSVD: the one chosen).
        """
        c = np.asarray(curves, dtype=np.float32)
        single = c.ndim == 1
        c2 = c.reshape(1, -1) if single else c
        if c2.ndim != 2 or c2.shape[1] != self.n_frames:
            raise DataError("tissue curves", f"have shape {c.shape}", f"give (n, {self.n_frames}) curves, one per voxel")
        if self.method != "osvd":
            k = c2 @ self.weights[0]
            level = np.full(c2.shape[0], self.levels[0])
        else:
            k = np.empty((c2.shape[0], self.length), np.float32)
            level = np.empty(c2.shape[0])
            for s in range(0, c2.shape[0], _OSVD_BLOCK):  # blocks small enough for the products to stay in cache
                k[s : s + _OSVD_BLOCK], level[s : s + _OSVD_BLOCK] = self._osvd(c2[s : s + _OSVD_BLOCK])
        if single:
            k, level = k[0], level[0]
        return (k, level) if return_level else k

    def _osvd(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per curve the first level (least truncation) whose residue has OI < ``osvd_oi``. One product per
        level tried, on the curves still open: ``c @ [W_l | W_l D2]`` gives the residue and its second
        differences at once; levels that keep the same singular values as the previous one are skipped."""
        if self._osvd_weights is None:
            length = self.length
            d2 = np.zeros((length, length - 2))  # k @ d2 = k[2:] - 2 k[1:-1] + k[:-2]
            i = np.arange(length - 2)
            d2[i, i], d2[i + 1, i], d2[i + 2, i] = 1.0, -2.0, 1.0
            self._osvd_weights = [np.ascontiguousarray(np.hstack([w, w @ d2.astype(np.float32)])) for w in self.weights]
        out = np.empty((c.shape[0], self.length), np.float32)
        level = np.empty(c.shape[0])
        todo = np.arange(c.shape[0])
        last = len(self.weights) - 1
        limit = np.float32(self.settings.osvd_oi * self.length)
        for i, w in enumerate(self._osvd_weights):
            if i < last and self._same_as_prev[i]:
                continue  # the identical residue was already rejected at the previous level
            both = (c if todo.size == c.shape[0] else c[todo]) @ w
            k = both[:, : self.length]
            if i == last:
                ok = np.ones(todo.size, bool)
            else:
                rough = np.abs(both[:, self.length :], out=both[:, self.length :]).sum(axis=1)
                peak = k.max(axis=1)
                ok = (peak > 0) & (rough < limit * peak)  # OI = rough / (L * peak) < osvd_oi
            out[todo[ok]] = k[ok]
            level[todo[ok]] = self.levels[i]
            todo = todo[~ok]
            if todo.size == 0:
                break
        return out, level


def deconvolve(
    curves: np.ndarray, aif: np.ndarray, dt: float, settings: DeconvolutionSettings | None = None, **changes
) -> np.ndarray:
    """Scaled residues ``k`` (1/s) of ``curves`` (n, N) by ``aif`` (N,), sampled every ``dt`` s.

    ``changes`` override fields of ``settings`` (e.g. ``method="ssvd"``). See :class:`Deconvolver`.
    """
    settings = (settings or DeconvolutionSettings()).replace(**changes) if changes else (settings or DeconvolutionSettings())
    return Deconvolver(aif, dt, settings).residue(curves)

"""A digital perfusion phantom of the Kudo kind, and the accuracy of the deconvolution methods on it.

Kudo et al. (Radiology 2013) validated CT perfusion software with a digital phantom: tissue curves
computed from a known AIF, known CBV/MTT (hence CBF), known delays and several residue shapes, with and
without noise. This module builds such a phantom (:func:`kudo_phantom`) and measures every method on it
(:func:`accuracy_table`, :func:`delay_table`); ``python -m strokelab.perfusion.kudo`` prints both tables.

The phantom (:class:`KudoConfig`, all defaults):

* AIF: gamma variate (enhancement in HU above baseline) ``peak * x^alpha * exp(alpha * (1 - x))``,
  ``x = (t - t0) / (alpha * beta)``, peak 300 HU at ``t0 + alpha * beta`` (t0 = 3 s, alpha = 3, beta = 1.5);
  no noise (it stands for an average of several arterial voxels).
* A grid CBV {1, 2, 3, 4, 5} ml/100g x MTT {2, 4, 6, 8, 10, 12} s x delay {0, 1, 2, 3, 4, 5} s x residue
  {exponential ``exp(-t/MTT)``, box ``1 (t < MTT)``, linear ``1 - t/(2 MTT) (t < 2 MTT)``}: 540 curves.
  All three residues have ``R(0) = 1`` and area MTT, so ``CBF = 60 * CBV / MTT`` (5-150 ml/100g/min) and
  the true Tmax is the delay (the residue peaks at t = 0).
* Tissue curves from the model of ``strokelab.data.phantom``:
  ``C(t) = (rho/kH) * CBF/6000 * (AIF (x) R)(t - delay)``, convolved on a 0.02 s grid and sampled every
  ``dt`` = 1 s for 90 frames (long enough for the curves to return to baseline, so that the area ratio gives
  CBV exactly). True TTP is the maximum of the fine-grid curve.
* Noise: Gaussian, SD ``noise_hu`` (0, 1, 3 HU) per frame on the tissue curves; ``repeats`` = 10
  realisations of each curve at each non-zero level. No spatial or temporal smoothing.
* Optional bolus dispersion ``dispersion_s`` = tau (default 0, the classic phantom): every residue is
  convolved with ``exp(-t/tau)/tau`` (area kept, so CBV and MTT are unchanged), as in
  ``strokelab.data.phantom``. The residue then rises smoothly to its peak at ``t_peak > 0`` and the true
  Tmax is ``delay + t_peak``; the true CBF stays ``60 * CBV / MTT`` (a deconvolution recovers only
  ``CBF * max(h (x) R)``, the known underestimation under dispersion).

Why Tmax needs dispersion to be exact: the classic residues jump from 0 to 1 at the delay. A jump cannot be
resolved by sampled, regularised deconvolution: the estimated residue rises over a frame or two (the
regularisation acts as a symmetric low-pass filter), so its peak comes 1-3 s after a jump (more with
stronger truncation and longer MTT; anywhere on the plateau for a box). With a residue that is smooth on
the scale of a frame (tau >= dt) bcSVD's Tmax is within one frame of ``delay + t_peak``
(:func:`tmax_table`). Either way bcSVD's Tmax follows the delay exactly: Tmax(delay d) - Tmax(0) = d.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from strokelab.perfusion.deconvolution import METHODS, oscillation_index
from strokelab.perfusion.maps import CurveAnalyser, PerfusionSettings
from strokelab.perfusion.physics import K_H, RHO_TISSUE
from strokelab.perfusion.physics import gamma_variate as phantom_gamma_variate

RESIDUES = ("exponential", "box", "linear")
KH = K_H  # the phantom's haematocrit factor (1 - 0.45) / (1 - 0.25)
TABLE_MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp")
_RELATIVE = ("cbf", "cbv", "mtt")  # bias as % of truth; Tmax and TTP in s


@dataclass(frozen=True)
class KudoConfig:
    """The phantom's grid and acquisition (units: ml/100g, s, HU)."""

    cbv: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
    mtt: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
    delay: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    residues: tuple[str, ...] = RESIDUES
    dt: float = 1.0
    n_frames: int = 90
    aif_peak_hu: float = 300.0
    aif_t0: float = 3.0
    aif_alpha: float = 3.0
    aif_beta: float = 1.5
    noise_hu: tuple[float, ...] = (0.0, 1.0, 3.0)
    repeats: int = 10
    seed: int = 0
    fine_dt: float = 0.02
    dispersion_s: float = 0.0


@dataclass
class KudoPhantom:
    """Noise-free tissue curves (M, N) in HU above baseline, the AIF (N,), and the truth per curve
    (``cbf`` ml/100g/min, ``cbv`` ml/100g, ``mtt`` s, ``delay`` s, ``tmax`` s, ``ttp`` s, ``residue`` name)."""

    aif: np.ndarray
    curves: np.ndarray
    truth: dict[str, np.ndarray]
    dt: float

    def noisy(self, noise_hu: float, repeats: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``repeats`` noisy copies of every curve (Gaussian, SD ``noise_hu``) and the truth repeated alike."""
        if noise_hu <= 0:
            return self.curves.copy(), dict(self.truth)
        curves = np.repeat(self.curves, repeats, axis=0)
        curves = curves + rng.normal(0.0, noise_hu, curves.shape).astype(np.float32)
        return curves, {k: np.repeat(v, repeats, axis=0) for k, v in self.truth.items()}


def gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float, peak: float = 1.0) -> np.ndarray:
    """Gamma variate with value ``peak`` at ``t0 + alpha * beta`` and 0 before ``t0`` (the phantom's form)."""
    return peak * phantom_gamma_variate(np.asarray(t, dtype=np.float64), t0, alpha, beta)


def gamma_variate_area(alpha: float, beta: float, peak: float = 1.0) -> float:
    """Exact area (s * unit) of :func:`gamma_variate`: ``peak * alpha*beta * e^alpha * Gamma(alpha+1) / alpha^(alpha+1)``."""
    return peak * alpha * beta * math.exp(alpha) * math.gamma(alpha + 1.0) / alpha ** (alpha + 1.0)


def residue_function(kind: str, t: np.ndarray, mtt: float) -> np.ndarray:
    """Residue ``R(t)`` with ``R(0) = 1`` and area ``mtt`` (s): exponential, box or linear; 0 for t < 0."""
    t = np.asarray(t, dtype=np.float64)
    if kind == "exponential":
        r = np.exp(-np.clip(t, 0, None) / mtt)
    elif kind == "box":
        r = (t < mtt).astype(np.float64)
    elif kind == "linear":
        r = np.clip(1.0 - t / (2.0 * mtt), 0.0, None)
    else:
        raise ValueError(f"unknown residue {kind!r}; use one of {RESIDUES}")
    return np.where(t >= 0, r, 0.0)


def kudo_phantom(config: KudoConfig = KudoConfig(), rho: float = RHO_TISSUE, kh: float = KH) -> KudoPhantom:
    """Build the noise-free phantom (see the module docstring)."""
    c = config
    n = int(c.n_frames)
    frames = np.arange(n) * c.dt
    step = int(round(c.dt / c.fine_dt))
    fdt = c.dt / step
    n_fine = n * step + int(math.ceil(max(c.delay) / fdt)) + 1
    t_fine = np.arange(n_fine) * fdt
    aif_fine = gamma_variate(t_fine, c.aif_t0, c.aif_alpha, c.aif_beta, c.aif_peak_hu)
    nfft = 1 << int(math.ceil(math.log2(2 * n_fine)))
    aif_f = np.fft.rfft(aif_fine, nfft)
    rows: list[np.ndarray] = []
    truth: dict[str, list] = {k: [] for k in ("cbf", "cbv", "mtt", "delay", "tmax", "ttp", "residue")}
    for kind in c.residues:
        for mtt in c.mtt:
            residue = residue_function(kind, t_fine, mtt)
            if c.dispersion_s > 0:
                kernel = np.exp(-t_fine / c.dispersion_s) / c.dispersion_s
                residue = np.fft.irfft(np.fft.rfft(kernel, nfft) * np.fft.rfft(residue, nfft), nfft)[:n_fine] * fdt
            t_peak = float(np.argmax(residue) * fdt)
            # (AIF (x) R)(t) on the fine grid, in HU*s; the tissue curve is (rho/kH) * F[1/s per ml/g] times it.
            conv = np.fft.irfft(aif_f * np.fft.rfft(residue, nfft), nfft)[:n_fine] * fdt
            for cbv in c.cbv:
                cbf = 60.0 * cbv / mtt
                base = (rho / kh) * cbf / 6000.0 * conv
                for delay in c.delay:
                    shift = int(round(delay / fdt))
                    delayed = np.concatenate([np.zeros(shift), base[: n_fine - shift]])
                    rows.append(delayed[np.arange(n) * step])
                    truth["cbf"].append(cbf)
                    truth["cbv"].append(cbv)
                    truth["mtt"].append(mtt)
                    truth["delay"].append(delay)
                    truth["tmax"].append(delay + t_peak)
                    truth["ttp"].append(float(np.argmax(delayed[: n * step]) * fdt))
                    truth["residue"].append(kind)
    aif = gamma_variate(frames, c.aif_t0, c.aif_alpha, c.aif_beta, c.aif_peak_hu).astype(np.float32)
    arrays = {k: np.asarray(v) if k == "residue" else np.asarray(v, np.float64) for k, v in truth.items()}
    return KudoPhantom(aif=aif, curves=np.asarray(rows, np.float32), truth=arrays, dt=c.dt)


def _stats(est: np.ndarray, true: np.ndarray, relative: bool) -> tuple[float, float]:
    """(bias, Pearson r): bias as mean % of truth if ``relative`` else mean difference."""
    diff = est - true
    bias = float(np.mean(diff / true) * 100.0) if relative else float(np.mean(diff))
    r = float(np.corrcoef(est, true)[0, 1]) if np.std(est) > 0 and np.std(true) > 0 else float("nan")
    return bias, r


def evaluate(
    phantom: KudoPhantom, method: str, noise_hu: float, repeats: int, seed: int, settings: PerfusionSettings | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Maps of the (noisy) phantom by ``method``: (estimates, truth, residues)."""
    settings = (settings or PerfusionSettings()).with_method(method)
    rng = np.random.default_rng([seed, int(round(noise_hu * 1000))])  # the same noise for every method
    curves, truth = phantom.noisy(noise_hu, repeats, rng)
    analyser = CurveAnalyser(phantom.aif, phantom.dt, settings)
    est = analyser(curves)
    return est, truth, analyser.deconvolver.residue(curves)


def accuracy_table(config: KudoConfig = KudoConfig(), methods: tuple[str, ...] = METHODS) -> list[dict]:
    """One row per method and noise level: bias and Pearson r of every map against the truth, and the mean
    oscillation index of the residues over the first N samples.

    Bias is the mean relative error in % for CBF, CBV and MTT, the mean difference in s for Tmax and TTP.
    """
    phantom = kudo_phantom(config)
    rows = []
    for method in methods:
        for noise in config.noise_hu:
            est, truth, residues = evaluate(phantom, method, noise, config.repeats, config.seed)
            row: dict = {"method": method, "noise_hu": noise, "n": int(est["cbf"].size)}
            for name in TABLE_MAPS:
                bias, r = _stats(est[name].astype(np.float64), truth[name], name in _RELATIVE)
                row[f"{name}_bias"], row[f"{name}_r"] = bias, r
            oi = oscillation_index(residues[:, : phantom.curves.shape[1]])
            finite = np.isfinite(oi)
            row["oi"] = float(oi[finite].mean()) if finite.any() else float("nan")
            rows.append(row)
    return rows


def delay_table(config: KudoConfig = KudoConfig(), methods: tuple[str, ...] = METHODS, noise_hu: float = 0.0) -> list[dict]:
    """Mean CBF estimate / truth per method and delay (noise-free by default): the delay sensitivity."""
    phantom = kudo_phantom(config)
    rows = []
    for method in methods:
        est, truth, _ = evaluate(phantom, method, noise_hu, config.repeats, config.seed)
        ratio = est["cbf"] / truth["cbf"]
        row: dict = {"method": method}
        for d in config.delay:
            row[d] = float(ratio[truth["delay"] == d].mean())
        rows.append(row)
    return rows


def tmax_table(
    config: KudoConfig = KudoConfig(), methods: tuple[str, ...] = METHODS, dispersions: tuple[float, ...] = (0.0, 1.0, 2.0)
) -> list[dict]:
    """Noise-free Tmax error (estimate - (delay + residue peak), s) per dispersion tau (s) and method: per
    residue shape the mean and the largest absolute error, and over all curves the largest spread of
    ``Tmax - delay`` across delays (0 = Tmax follows the delay exactly)."""
    rows = []
    for tau in dispersions:
        phantom = kudo_phantom(dataclasses.replace(config, dispersion_s=tau))
        for method in methods:
            est, truth, _ = evaluate(phantom, method, 0.0, 1, config.seed)
            err = est["tmax"].astype(np.float64) - truth["tmax"]
            offset = (est["tmax"] - truth["delay"]).reshape(-1, len(config.delay))  # delays vary fastest
            row: dict = {"dispersion_s": tau, "method": method, "delay_spread": float(np.ptp(offset, axis=1).max())}
            for kind in config.residues:
                sel = truth["residue"] == kind
                row[f"{kind}_mean"], row[f"{kind}_max_abs"] = float(err[sel].mean()), float(np.abs(err[sel]).max())
            rows.append(row)
    return rows


def format_tmax(rows: list[dict], residues: tuple[str, ...] = RESIDUES) -> str:
    """Markdown table of :func:`tmax_table`: per residue "mean / largest absolute" error in s."""
    head = "| dispersion tau (s) | method | " + " | ".join(f"{k} (s)" for k in residues) + " | spread of Tmax - delay (s) |"
    lines = [head, "|---|---|" + "---|" * len(residues) + "---|"]
    for r in rows:
        cells = [f"{r[f'{k}_mean']:+.2f} / {r[f'{k}_max_abs']:.2f}" for k in residues]
        lines.append(f"| {r['dispersion_s']:g} | {r['method']} | " + " | ".join(cells) + f" | {r['delay_spread']:.3f} |")
    return "\n".join(lines)


def format_accuracy(rows: list[dict]) -> str:
    """Markdown table of :func:`accuracy_table`."""
    head = (
        "| method | noise (HU) | CBF bias % | CBF r | CBV bias % | CBV r | MTT bias % | MTT r"
        " | Tmax bias s | Tmax r | TTP bias s | TTP r | OI |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        cells = [row["method"], f"{row['noise_hu']:g}"]
        for name in TABLE_MAPS:
            fmt = "{:+.1f}" if name in _RELATIVE else "{:+.2f}"
            cells += [fmt.format(row[f"{name}_bias"]), f"{row[f'{name}_r']:.3f}"]
        cells.append(f"{row['oi']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_delay(rows: list[dict], delays: tuple[float, ...]) -> str:
    """Markdown table of :func:`delay_table`."""
    head = "| method | " + " | ".join(f"delay {d:g} s" for d in delays) + " |"
    lines = [head, "|" + "---|" * (len(delays) + 1)]
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(f"{row[d]:.3f}" for d in delays) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strokelab.perfusion.kudo",
        description="Accuracy of the deconvolution methods on a digital perfusion phantom of the Kudo kind.",
    )
    parser.add_argument("--repeats", type=int, default=KudoConfig.repeats, help="noisy realisations per curve (default 10)")
    parser.add_argument("--seed", type=int, default=KudoConfig.seed)
    args = parser.parse_args(argv)
    config = KudoConfig(repeats=args.repeats, seed=args.seed)
    n_curves = len(config.cbv) * len(config.mtt) * len(config.delay) * len(config.residues)
    print(
        f"Kudo-type digital phantom: {n_curves} curves (CBV {list(config.cbv)} ml/100g x MTT {list(config.mtt)} s x "
        f"delay {list(config.delay)} s x residue {list(config.residues)}), gamma-variate AIF (peak {config.aif_peak_hu:g} HU), "
        f"{config.n_frames} frames every {config.dt:g} s; noise SD {list(config.noise_hu)} HU, {config.repeats} realisations "
        f"per noisy curve. Defaults: sSVD 0.2, bcSVD 0.1, oSVD OI 0.035, Tikhonov lambda 0.1 (x max singular value).\n"
    )
    print(
        "Accuracy (bias: mean % of truth for CBF/CBV/MTT, mean difference in s for Tmax/TTP; r: Pearson; "
        "OI: mean oscillation index of the residues)\n"
    )
    print(format_accuracy(accuracy_table(config)))
    print("\nDelay sensitivity: mean CBF estimate / truth by tracer delay (noise-free)\n")
    print(format_delay(delay_table(config), config.delay))
    short = dataclasses.replace(config, mtt=tuple(m for m in config.mtt if m <= 4.0))
    print(
        f"\nThe same for the short transit times only (MTT {list(short.mtt)} s, high flow), where sSVD's delay error is largest\n"
    )
    print(format_delay(delay_table(short), config.delay))
    print(
        "\nTmax (noise-free) against the true delay + residue peak, without and with bolus dispersion (residue "
        "convolved with exp(-t/tau)/tau): mean / largest absolute error in s per residue shape; spread: the largest "
        "change of Tmax - delay across the delays of one curve\n"
    )
    print(format_tmax(tmax_table(config)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: perfusion maps of a whole ISLES-sized CTP series (512 x 512 x 75 voxels x 45 frames, int16).

The series is synthesised (frame by frame, in the Fortran order nibabel returns, ~1.8 GB as int16): a head
with scalp, skull and a brain ellipsoid of ~4 M voxels whose tissue curves come from a few hundred
indicator-dilution prototypes (gamma-variate AIF convolved with exponential residues of varied CBF, MTT and
delay), a few arteries and a sinus, and 10 HU of noise.

Reference measured in the same run: the bare matrix products the deconvolution needs -- the brain voxels'
curves, already in float32 and in memory, times the precomputed (N x 2N) pseudo-inverse, chunk by chunk.
The ratio ``pipeline / bare products`` is the cost of everything else (reading int16 curves out of the 4D
array, baseline subtraction, brain mask, AIF search, peak search, integrals, writing into the maps).

Peak memory: ``ru_maxrss`` of the process (includes the 1.8 GB series) and the largest extra allocation
during ``compute_maps`` (tracemalloc, numpy arrays included).

The last run is what ``python -m strokelab.perfusion`` and ``predict.py`` do by default
(:data:`strokelab.perfusion.derive.DERIVED_MAP_SETTINGS`: bcSVD with in-plane smoothing of 7 mm SD, 15.6
voxels here, and 1.5 s temporal smoothing); ``--exact-gaussian`` also times it with the in-plane Gaussian
filtered voxel by voxel instead of on tiles (``maps._InPlaneGaussian``) and prints how far the maps differ.

Run:  .venv/bin/python benchmarks/perfusion_maps.py [--shape 512 512 75] [--frames 45] [--methods bcsvd ssvd osvd tikhonov]
          [--exact-gaussian]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import time
import tracemalloc

import numpy as np

from strokelab.perfusion import maps as maps_module
from strokelab.perfusion.deconvolution import DeconvolutionSettings, Deconvolver
from strokelab.perfusion.derive import DERIVED_MAP_SETTINGS
from strokelab.perfusion.kudo import gamma_variate
from strokelab.perfusion.maps import PerfusionSettings, compute_maps

SPACING = (0.45, 0.45, 2.0)  # mm, as an ISLES'24-like CTP
DT = 1.0  # s


def synthesise(shape: tuple[int, int, int], n_frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(series int16 (X, Y, Z, N) in Fortran order, true brain mask)."""
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(-1, 1, s, dtype=np.float32) for s in shape)
    r2 = (x[:, None, None] / 0.78) ** 2 + (y[None, :, None] / 0.9) ** 2 + (z[None, None, :] / 0.98) ** 2
    brain = r2 < 0.80
    skull = (r2 >= 0.86) & (r2 < 0.97)
    scalp = (r2 >= 0.97) & (r2 < 1.0)
    base = np.full(shape, -1000, np.int16)
    base[scalp | ((r2 >= 0.80) & (r2 < 0.86))] = 30
    base[skull] = 900
    base[brain] = 35
    # Vessels: two arteries (straight tubes through the brain, left and right) and a sinus near the vertex.
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    artery = np.zeros(shape[:2], bool)
    for cx in (0.35, 0.65):
        artery |= (xx - cx * shape[0]) ** 2 + (yy - 0.45 * shape[1]) ** 2 < 4.0**2
    sinus = (xx - 0.5 * shape[0]) ** 2 + (yy - 0.12 * shape[1]) ** 2 < 5.0**2
    artery3 = artery[:, :, None] & brain
    sinus3 = sinus[:, :, None] & brain
    t = np.arange(n_frames) * DT
    tf = np.arange(n_frames * 20) * (DT / 20)
    aif_f = gamma_variate(tf, 6.0, 3.0, 1.5, 350.0)
    aif = aif_f[::20]
    # Prototype tissue curves: CBF 10-70 ml/100g/min, MTT 3-12 s, delay 0-6 s.
    n_proto = 256
    cbf = rng.uniform(10, 70, n_proto)
    mtt = rng.uniform(3, 12, n_proto)
    delay = rng.uniform(0, 6, n_proto)
    protos = np.empty((n_proto, n_frames), np.float32)
    for i in range(n_proto):
        conv = np.convolve(aif_f, np.exp(-tf / mtt[i]))[: tf.size] * (DT / 20)
        shifted = np.interp(t - delay[i], tf, conv, left=0.0)
        protos[i] = 1.04 / 0.733 * cbf[i] / 6000.0 * shifted
    vof = 0.9 * np.interp(t - 5.0, tf, np.convolve(aif_f, np.exp(-tf / 3.0) / 3.0)[: tf.size] * (DT / 20), left=0.0)
    # A smooth label field picks a prototype per brain voxel.
    coarse = rng.integers(0, n_proto, (shape[0] // 32 + 2, shape[1] // 32 + 2, shape[2] // 8 + 2))
    label = coarse[np.arange(shape[0]) // 32][:, np.arange(shape[1]) // 32][:, :, np.arange(shape[2]) // 8]
    bidx = np.flatnonzero(brain.ravel(order="F"))
    blabel = label.ravel(order="F")[bidx]
    aidx = np.flatnonzero(artery3.ravel(order="F"))
    sidx = np.flatnonzero(sinus3.ravel(order="F"))
    noise_bank = rng.normal(0, 10.0, int(np.prod(shape)) + 4096).astype(np.float32)
    series = np.empty((*shape, n_frames), np.int16, order="F")
    for f in range(n_frames):
        frame = base.astype(np.float32).ravel(order="F")
        frame[bidx] += protos[blabel, f]
        frame[aidx] += aif[f]
        frame[sidx] += vof[f]
        off = int(rng.integers(0, 4096))
        head = frame > -900
        frame[head] += noise_bank[off : off + frame.size][head]
        series[..., f] = np.clip(np.rint(frame), -1024, 3071).astype(np.int16).reshape(shape, order="F")
    return series, brain


def bare_products(n_voxels: int, n_frames: int, chunk: int, repeats: int = 1) -> float:
    """Seconds for the (n_voxels x N) @ (N x 2N) float32 products, chunk by chunk, on curves already in memory."""
    aif = gamma_variate(np.arange(n_frames) * DT, 6.0, 3.0, 1.5, 350.0)
    w = Deconvolver(aif, DT, DeconvolutionSettings()).weights[0]
    block = np.random.default_rng(1).normal(0, 10, (chunk, n_frames)).astype(np.float32)
    out = np.empty((chunk, w.shape[1]), np.float32)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = 0
        while done < n_voxels:
            m = min(chunk, n_voxels - done)
            np.matmul(block[:m], w, out=out[:m])
            done += m
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 75])
    parser.add_argument("--frames", type=int, default=45)
    parser.add_argument("--methods", nargs="+", default=["bcsvd", "ssvd", "osvd", "tikhonov"])
    parser.add_argument(
        "--exact-gaussian", action="store_true", help="also time the default smoothing with the voxel-grid Gaussian"
    )
    args = parser.parse_args()
    shape = tuple(args.shape)
    t0 = time.perf_counter()
    series, true_brain = synthesise(shape, args.frames)
    t_syn = time.perf_counter() - t0
    gc.collect()
    print(
        f"series {shape} x {args.frames} frames int16 ({series.nbytes / 2**30:.2f} GiB, Fortran order), "
        f"synthesised in {t_syn:.1f} s; CPUs {os.cpu_count()}; numpy {np.__version__}"
    )

    default = f"default ({DERIVED_MAP_SETTINGS.spatial_sigma_mm:g} mm, {DERIVED_MAP_SETTINGS.smoothing_sigma_s:g} s)"
    runs = [(m, PerfusionSettings().with_method(m), False) for m in args.methods]
    runs.append((default, DERIVED_MAP_SETTINGS, False))
    if args.exact_gaussian:
        runs.append((default + " exact", DERIVED_MAP_SETTINGS, True))
    results = []
    smoothed = {}
    tiled_min = maps_module.TILED_GAUSSIAN_MIN_VOXELS
    for name, settings, exact in runs:
        gc.collect()
        maps_module.TILED_GAUSSIAN_MIN_VOXELS = math.inf if exact else tiled_min
        tracemalloc.start()
        t0 = time.perf_counter()
        res = compute_maps(series, DT, settings, spacing=SPACING)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        n_brain = int(res.brain.sum())
        dice = 2 * (res.brain & true_brain).sum() / (res.brain.sum() + true_brain.sum())
        results.append((name, elapsed, n_brain, peak, res.timings, dice))
        if settings is DERIVED_MAP_SETTINGS:
            smoothed[exact] = res
        del res
    maps_module.TILED_GAUSSIAN_MIN_VOXELS = tiled_min

    n_brain = results[0][2]
    chunk = PerfusionSettings().chunk_voxels
    bare = bare_products(n_brain, args.frames, chunk, repeats=3)
    print(
        f"brain voxels {n_brain:,} (mask Dice vs truth {results[0][5]:.3f}); chunk {chunk:,} voxels; "
        f"bare products (brain voxels x {args.frames}) @ ({args.frames} x {2 * args.frames}) float32: {bare:.2f} s"
    )
    header = (
        f"{'run':<30} {'total s':>8} {'Mvox/s':>7} {'x bare':>7} {'baseline':>9} {'mask':>6} {'aif':>6} {'maps':>6}"
        f" {'extra GiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, elapsed, nb, peak, tm, _ in results:
        print(
            f"{name:<30} {elapsed:>8.2f} {nb / elapsed / 1e6:>7.2f} {elapsed / bare:>7.1f} {tm.get('baseline', 0):>9.2f} "
            f"{tm.get('brain_mask', 0):>6.2f} {tm.get('aif', 0):>6.2f} {tm.get('maps', 0):>6.2f} {peak / 2**30:>10.2f}"
        )
    print(f"bare matrix products{'':<10} {bare:>8.2f} {n_brain / bare / 1e6:>7.2f} {1.0:>7.1f}")
    if len(smoothed) == 2:
        tiled, exact = smoothed[False], smoothed[True]
        brain = exact.brain
        print("tiled vs exact in-plane Gaussian, brain voxels:")
        for name in maps_module.MAP_NAMES:
            a, b = exact.maps[name][brain], tiled.maps[name][brain]
            scale = float(np.percentile(np.abs(a), 95)) or 1.0
            print(
                f"  {name:<5} Pearson r {np.corrcoef(a, b)[0, 1]:.5f}  median |diff| {np.median(np.abs(a - b)):.4f}"
                f"  |diff| > 5 % of p95 ({0.05 * scale:.2f}): {np.mean(np.abs(a - b) > 0.05 * scale):.4%} of voxels"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"peak RSS of the process {rss:.2f} GiB (series {series.nbytes / 2**30:.2f} GiB + synthesis temporaries + maps)")


if __name__ == "__main__":
    main()

"""Benchmark: sliding-window inference of a small UNet3D on a (1, 4, 128, 128, 40) volume.

References measured in the same run, on the same model and input:

* ``plain forward``: one forward pass over the whole volume (the lower bound on work: every voxel seen
  once; possible here because the volume is divisible by the network's required divisor),
* ``naive window loop``: a hand-written loop over the same windows, one window per forward pass, plain
  averaging, no batching.

The ``sliding_window_inference`` rows process ``windows x patch voxels`` (more than the volume, because
windows overlap), so a ratio to the plain forward of about ``voxels ratio`` means the blending and
bookkeeping cost is negligible.

A second table runs a 2D U-Net (same widths) over the same volume slice by slice with ``infer`` and
``spatial_dims: 2`` (whole 128x128 slices as patches, slices batched 8 per call), against a reference loop
that calls the network once per slice.

Run:  .venv/bin/python benchmarks/sliding_window.py [--repeats 3] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable

import torch
from timing import time_interleaved

from strokelab.nn.sliding_window import infer, sliding_window_inference, window_starts
from strokelab.nn.unet import UNet, UNet3D

SHAPE = (1, 4, 128, 128, 40)


def naive_window_loop(model: torch.nn.Module, image: torch.Tensor, patch: tuple[int, int, int], overlap: float):
    """Reference: same windows as sliding_window_inference, one forward per window, uniform average."""
    spatial = image.shape[2:]
    starts = [window_starts(s, p, overlap) for s, p in zip(spatial, patch)]
    out = None
    count = torch.zeros(spatial, device=image.device)
    for x0, y0, z0 in itertools.product(*starts):
        sl = (slice(x0, x0 + patch[0]), slice(y0, y0 + patch[1]), slice(z0, z0 + patch[2]))
        pred = model(image[(slice(None), slice(None)) + sl]).float()
        if out is None:
            out = torch.zeros((image.shape[0], pred.shape[1]) + tuple(spatial), device=image.device)
        out[(slice(None), slice(None)) + sl] += pred
        count[sl] += 1
    return out / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--mirror", action="store_true", help="also time mirror_axes=(0, 1) (4x the work)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = UNet3D(4, 1, channels=[8, 16, 32, 64], strides=[[2, 2, 1], [2, 2, 2], [2, 2, 2]]).to(device).eval()
    image = torch.randn(SHAPE, device=device)
    patch = tuple(args.patch)
    starts = [window_starts(s, p, args.overlap) for s, p in zip(SHAPE[2:], patch)]
    n_windows = math.prod(len(s) for s in starts)
    volume_voxels = math.prod(SHAPE[2:])
    window_voxels = n_windows * math.prod(patch)

    def swi(**kw):
        return lambda: sliding_window_inference(model, image, patch, overlap=args.overlap, **kw)

    rows: list[tuple[str, int, Callable[[], object]]] = [
        ("plain forward (whole volume)", volume_voxels, lambda: model(image)),
        (
            "naive window loop (batch 1)",
            window_voxels,
            lambda: naive_window_loop(model, image, patch, args.overlap),
        ),
        ("swi gaussian, batch_size=1", window_voxels, swi(batch_size=1)),
        ("swi gaussian, batch_size=4", window_voxels, swi(batch_size=4)),
        ("swi constant, batch_size=4", window_voxels, swi(batch_size=4, mode="constant")),
    ]
    if args.mirror:
        rows.append(("swi gaussian, bs=4, mirror (0,1)", 4 * window_voxels, swi(batch_size=4, mirror_axes=(0, 1))))

    # Sanity check of the output (values differ from the whole-volume forward near window borders,
    # where the receptive field sees zero padding instead of neighbouring voxels).
    with torch.no_grad():
        check = sliding_window_inference(model, image, patch, overlap=args.overlap)
    assert check.shape == (1, 1) + SHAPE[2:] and torch.isfinite(check).all()

    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(
        f"input {SHAPE}, patch {patch}, overlap {args.overlap}: {n_windows} windows "
        f"({' x '.join(str(len(s)) for s in starts)}), window voxels / volume voxels = "
        f"{window_voxels / volume_voxels:.2f}; model params = {sum(p.numel() for p in model.parameters()):,}; "
        f"median of {args.repeats}"
    )
    with torch.no_grad():
        medians = time_interleaved([fn for _, _, fn in rows], args.repeats, device)
    results = [(name, voxels, t) for (name, voxels, _), t in zip(rows, medians)]
    base = results[0][2]
    naive = results[1][2]
    header = f"{'method':<34} {'time s':>8} {'Mvox/s':>8} {'x plain fwd':>12} {'x naive loop':>13}"
    print(header)
    print("-" * len(header))
    for name, voxels, t in results:
        print(f"{name:<34} {t:>8.3f} {voxels / t / 1e6:>8.2f} {t / base:>12.2f} {t / naive:>13.2f}")
    best = results[3][2]
    print(
        f"ratio sliding_window_inference (gaussian, batch_size=4) / plain forward = {best / base:.2f} "
        f"(voxel ratio {window_voxels / volume_voxels:.2f}); / naive window loop = {best / naive:.2f}"
    )

    # 2D network over the volume, slice by slice.
    torch.manual_seed(0)
    net2d = UNet(4, 1, channels=[8, 16, 32, 64], spatial_dims=2).to(device).eval()
    settings = {"patch_size": list(SHAPE[2:4]), "overlap": args.overlap, "batch_size": 8, "spatial_dims": 2}

    def per_slice_loop():
        return torch.stack([net2d(image[..., z]) for z in range(SHAPE[4])], dim=-1)

    with torch.no_grad():
        torch.testing.assert_close(infer(net2d, image, settings), per_slice_loop(), atol=1e-4, rtol=1e-4)
        t_loop, t_infer = time_interleaved([per_slice_loop, lambda: infer(net2d, image, settings)], args.repeats, device)
    print()
    print(f"2D U-Net over {SHAPE[4]} slices of {SHAPE[2]}x{SHAPE[3]} (params {sum(p.numel() for p in net2d.parameters()):,})")
    header = f"{'method':<34} {'time s':>8} {'x slice loop':>13}"
    print(header)
    print("-" * len(header))
    print(f"{'slice loop (batch 1)':<34} {t_loop:>8.3f} {1.0:>13.2f}")
    print(f"{'infer spatial_dims=2, batch 8':<34} {t_infer:>8.3f} {t_infer / t_loop:>13.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: our Gaussian sliding window against MONAI's ``sliding_window_inference``, same network and volume.

Both run the default 3D U-Net (``conf/model/unet.yaml`` at its widths, eval mode) with the settings a model
trained with ``data=isles24`` stores: patch ``data.patch_size`` (96x96x32), ``model.inference.overlap`` (0.5),
``batch_size`` windows per call (4), Gaussian blending with sigma = 0.125 x patch per axis (MONAI
``mode="gaussian", sigma_scale=0.125``; zero padding, ``padding_mode="constant", cval=0``, which is ours too: a
volume smaller than the patch is padded symmetrically, the extra voxel after, and cropped back).

The volume is what the network sees of an ISLES'24-sized case: a phantom case written on ISLES'24 geometry
(512x586x74 voxels of 0.38x0.38x2 mm, ``benchmarks/predict_case.py``) read and preprocessed with the
``data=isles24`` preprocessing (1.5x1.5x2 mm, head crop, z-score): 4 x 94x122x67 voxels (``--shape X Y Z`` for a
smooth random volume of another size instead, which skips writing the case).

Rows (median of ``--repeats`` interleaved runs after one warm-up each, so machine load hits every row alike):

* ``network only``: the predictor calls both make on this volume (the windows batched ``batch_size`` at a time),
  without cutting or blending: the floor both share;
* ``ours``: ``strokelab.nn.sliding_window.sliding_window_inference``;
* ``MONAI``: ``monai.inferers.sliding_window_inference``.

The ratio ours / MONAI is the goal (<= 1); the last column (run time minus the network's) is the cost of
cutting, moving and blending the windows. On a CPU that cost is well under 1 % of the network's, below the
noise of a shared machine, so a second ratio times the machinery alone: both with a 1x1x1 convolution
(4 -> 1 channels) as the predictor on the same volume and windows, median of ``--machinery-repeats`` runs.

Agreement of the two outputs (logits: max, 99th percentile and mean |difference|; Dice of the masks,
probability >= the model's threshold), in three rows that split the difference by cause:

* against MONAI's own Gaussian: the comparison as a user meets it;
* against MONAI given our weight map (``roi_weight_map``): window placement alone. Ours spreads the windows
  evenly with the last flush to the border (nnU-Net); MONAI steps by ``int(patch x (1 - overlap))`` and moves
  the last window back to the border: along Z (67 voxels) ours start at 0, 12, 23, 35, MONAI's at 0, 16, 32, 35;
* on a control volume cropped, axis by axis, to the largest size at which both place the same windows (here
  Z to 64 slices: starts 0, 16, 32 in both) with our weight map: the same windows and weights, so only the
  arithmetic is left; it should agree to float rounding.

What the first two rows leave to the weights: MONAI floors its Gaussian at 1e-3, ours at 1e-6 of the peak
(nnU-Net keeps the smallest non-zero value). With sigma = patch / 8 a window's weight at its faces is
exp(-8) = 3e-4 per axis, so near the faces and edges of the windows MONAI's weights are flat at the floor and
it averages the overlapping windows there more evenly than ours. With a randomly initialised network (the
default: no training needed) neighbouring windows disagree more than a trained network's may; ``--ckpt``
measures a trained one.

Needs MONAI (a benchmark-only extra):  pip install -e '.[bench]'

``--ckpt PATH`` runs a trained U-Net instead (its inference settings and preprocessing, from the checkpoint).

Run:  .venv/bin/python benchmarks/sliding_window_monai.py [--repeats 3] [--threads N] [--device cpu|cuda] [--shape X Y Z]
                                                          [--ckpt logs/unet/runs/RUN/checkpoints/best.ckpt]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import time_interleaved

from strokelab.nn.sliding_window import window_starts

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MAPS = ("cbf", "cbv", "mtt", "tmax")


def require_monai():
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("error: MONAI is not installed (benchmark-only extra): pip install -e '.[bench]'", file=sys.stderr)
        sys.exit(2)
    return sliding_window_inference


def compose_config():
    from hydra import compose, initialize_config_dir

    from strokelab.entry import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["model=unet", "data=isles24"])


def isles_volume(prep) -> tuple[torch.Tensor, float]:
    """The 4 maps of an ISLES'24-sized phantom case after ``prep`` (a ``Preprocessing``), ``(1, 4, X, Y, Z)``, and the
    seconds writing and preprocessing took."""
    sys.path.insert(0, str(BENCH))
    from predict_case import write_isles_case

    from strokelab.data.check import load_case
    from strokelab.data.layouts import discover
    from strokelab.data.preprocess import Serve, preprocess_loaded

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_isles_case(Path(tmp))
        case = discover(Path(tmp), list(MAPS))[0]
        entry = preprocess_loaded(load_case(case), prep, Serve.make(list(MAPS), ()))
    volume = torch.cat([entry["images"][m] for m in MAPS], dim=0)[None].float().contiguous()
    return volume, time.perf_counter() - t0


def smooth_volume(shape: tuple[int, int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn((1, 4, *[max(2, s // 8) for s in shape]), generator=g)
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False).contiguous()


def monai_starts(size: int, patch: int, overlap: float) -> list[int]:
    """MONAI's window starts along one axis (``_get_scan_interval`` and ``dense_patch_slices``), for the printout."""
    size = max(size, patch)
    if size == patch:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    n = next(d for d in range(math.ceil(size / step)) if d * step + patch >= size) + 1
    return [min(i * step, size - patch) for i in range(n)]


def same_grid_size(size: int, patch: int, overlap: float) -> int:
    """The largest size <= ``size`` along one axis at which ours and MONAI place the same windows (sizes up to
    the patch always qualify: one window, padded)."""
    for s in range(size, patch, -1):
        if window_starts(s, patch, overlap) == monai_starts(s, patch, overlap):
            return s
    return min(size, patch)


def agreement(ours: torch.Tensor, theirs: torch.Tensor, threshold: float) -> dict[str, float]:
    diff = (ours - theirs).abs().flatten().float()
    p, q = torch.sigmoid(ours), torch.sigmoid(theirs)
    a, b = p >= threshold, q >= threshold
    inter, total = (a & b).sum().item(), a.sum().item() + b.sum().item()
    return {
        "max_abs_logit": diff.max().item(),
        "p99_abs_logit": diff.kthvalue(max(1, math.ceil(0.99 * diff.numel()))).values.item(),
        "mean_abs_logit": diff.mean().item(),
        "max_abs_prob": (p - q).abs().max().item(),
        "dice": 2 * inter / total if total else 1.0,
        "differing_voxels": (a != b).sum().item(),
        "fg_ours": a.float().mean().item(),
        "fg_monai": b.float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="a smooth random volume of this size instead")
    parser.add_argument("--machinery-repeats", type=int, default=15, help="runs of the 1x1x1-convolution timing")
    parser.add_argument("--ckpt", default=None, help="a trained single-network checkpoint: its network, settings, preprocessing")
    args = parser.parse_args()
    monai_swi = require_monai()
    import monai
    from hydra.utils import instantiate

    from strokelab.data.preprocess import Preprocessing
    from strokelab.inference import ModelPredictor
    from strokelab.nn.sliding_window import gaussian_importance_map, sliding_window_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.ckpt:
        predictor = ModelPredictor.from_checkpoint(args.ckpt, device=device)
        model, prep, described = predictor.model, predictor.prep, f"checkpoint {args.ckpt}"
        if not isinstance(getattr(model, "net", None), torch.nn.Module) or model.inputs != list(MAPS):
            print(f"error: {args.ckpt}: not a single-network model of the 4 maps {list(MAPS)}; give a U-Net's", file=sys.stderr)
            sys.exit(2)
    else:
        cfg = compose_config()
        torch.manual_seed(0)
        model, prep = instantiate(cfg.model), Preprocessing.from_config(cfg.data.preprocess)
        described = "conf/model/unet.yaml with data=isles24, random initial weights"
    net = model.net.to(device).eval()
    settings = dict(model.inference)
    patch = tuple(int(p) for p in settings["patch_size"])
    overlap, batch = float(settings["overlap"]), int(settings["batch_size"])
    sigma = 0.125  # our default (strokelab.nn.sliding_window), MONAI's too; set explicitly for both below

    if args.shape:
        image, source = smooth_volume(tuple(args.shape)), f"smooth random volume {tuple(args.shape)}"
    else:
        image, seconds = isles_volume(prep)
        source = (
            f"an ISLES'24-sized phantom case preprocessed at {list(prep.spacing)} mm ({seconds:.0f} s to write and preprocess)"
        )
    image = image.to(device)
    spatial = tuple(image.shape[2:])

    def ours(x=image, predictor=net):
        return sliding_window_inference(
            predictor, x, patch, overlap=overlap, batch_size=batch, mode="gaussian", sigma_scale=sigma
        )

    def theirs(x=image, predictor=net, **kw):
        return monai_swi(
            x, patch, batch, predictor, overlap=overlap, mode="gaussian", sigma_scale=sigma, padding_mode="constant",
            cval=0.0, **kw
        )

    padded = tuple(max(s, p) for s, p in zip(spatial, patch))
    our_starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch)]
    their_starts = [monai_starts(s, p, overlap) for s, p in zip(padded, patch)]
    n_ours, n_theirs = math.prod(map(len, our_starts)), math.prod(map(len, their_starts))
    windows = torch.zeros((batch, image.shape[1], *patch), device=device)

    def network_only():
        for _ in range(math.ceil(n_ours / batch)):
            net(windows)

    print(
        f"torch {torch.__version__}, MONAI {monai.__version__}, device {device}, {torch.get_num_threads()} threads; "
        f"{type(net).__name__} ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters; {described}), eval"
    )
    print(f"volume {tuple(image.shape)}: {source}")
    print(f"patch {patch}, overlap {overlap}, batch_size {batch}, Gaussian sigma {sigma} x patch, zero padding")
    print(f"window starts, ours:  {our_starts} ({n_ours} windows)")
    print(f"window starts, MONAI: {their_starts} ({n_theirs} windows)")

    our_map = gaussian_importance_map(patch, sigma, device=device)
    threshold = float(model.threshold)
    with torch.no_grad():
        _, a, b = network_only(), ours(), theirs()  # the outputs compared below; also the warm-up
        t_net, t_ours, t_monai = time_interleaved([network_only, ours, theirs], args.repeats, device, warmup=False)
        light = torch.nn.Conv3d(image.shape[1], 1, 1).to(device).eval()
        t_light_ours, t_light_monai = time_interleaved(
            [lambda: ours(predictor=light), lambda: theirs(predictor=light)], args.machinery_repeats, device
        )
        # The same windows (the volume cropped so that both place them alike) and our weights given to MONAI
        # (roi_weight_map): what is left is the blending arithmetic, which should agree to float rounding.
        crop = image[(..., *[slice(0, same_grid_size(s, p, overlap)) for s, p in zip(spatial, patch)])]
        checks = [
            ("MONAI's own Gaussian (the comparison)", spatial, agreement(a, b, threshold)),
            ("MONAI given our weights: window placement alone", spatial, agreement(a, theirs(roi_weight_map=our_map), threshold)),
            (
                "same windows and weights (control)",
                tuple(crop.shape[2:]),
                agreement(ours(crop), theirs(crop, roi_weight_map=our_map), threshold),
            ),
        ]

    print(f"\nmedian of {args.repeats} interleaved runs after one warm-up each\n")
    print(f"| {'method':<36} | {'ms':>8} | {'x network only':>14} | {'ms over network':>15} |")
    print(f"|{'-' * 38}|{'-' * 9}:|{'-' * 15}:|{'-' * 16}:|")
    for name, t in (
        (f"network only ({math.ceil(n_ours / batch)} calls of {batch} windows)", t_net),
        ("ours (strokelab)", t_ours),
        ("MONAI sliding_window_inference", t_monai),
    ):
        print(f"| {name:<36} | {1000 * t:8.1f} | {t / t_net:14.2f} | {1000 * (t - t_net):15.1f} |")
    print(f"\nratio ours / MONAI = {t_ours / t_monai:.2f} (goal <= 1)")
    print(
        f"machinery alone (a 1x1x1 convolution as the predictor, median of {args.machinery_repeats}): ours "
        f"{1000 * t_light_ours:.1f} ms, MONAI {1000 * t_light_monai:.1f} ms, ratio {t_light_ours / t_light_monai:.2f}\n"
    )
    print(f"agreement of the outputs (logits; masks: probability >= {threshold}):\n")
    print("| against | volume | max abs diff | 99th pct | mean | Dice of masks | voxels differing | foreground ours / MONAI |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, shape, v in checks:
        print(
            f"| {label} | {'x'.join(map(str, shape))} | {v['max_abs_logit']:.2e} | {v['p99_abs_logit']:.2e} "
            f"| {v['mean_abs_logit']:.2e} | {v['dice']:.4f} | {v['differing_voxels']} "
            f"| {100 * v['fg_ours']:.1f} % / {100 * v['fg_monai']:.1f} % |"
        )

if __name__ == "__main__":
    main()

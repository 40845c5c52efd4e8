"""Benchmark: the project's instance norm (``make_norm("instance")``: ``F.group_norm`` with one group per
channel) against torch's ``instance_norm`` (the reference, measured in the same run), on CPU.

Rows: the layer alone on the default U-Net's feature maps (batch 4 of 64x64x16 patches, widths 16 ... 128;
``conf/model/unet.yaml``), forward (prediction) and forward + backward (training); then the whole default
U-Net (4 maps in, one logit out) on the same batch with either norm: a prediction forward and a training
step (forward, mean, backward). Both norms give the same output and gradients (``tests/test_nn.py``).

Run:  .venv/bin/python benchmarks/instance_norm.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from strokelab.nn.blocks import InstanceNorm3d
from strokelab.nn.unet import UNet3D

SHAPES = [(4, 16, 64, 64, 16), (4, 32, 32, 32, 16), (4, 64, 16, 16, 8), (4, 128, 8, 8, 4)]
WIDTHS = [16, 32, 64, 128]
STRIDES = [[2, 2, 1], [2, 2, 2], [2, 2, 2]]


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def torch_norms(net: nn.Module) -> nn.Module:
    """The same network with torch's InstanceNorm3d in place of ours (same parameters)."""
    for name, child in net.named_children():
        if isinstance(child, InstanceNorm3d):
            ref = nn.InstanceNorm3d(child.num_features, eps=child.eps, affine=True)
            ref.load_state_dict(child.state_dict())
            setattr(net, name, ref)
        else:
            torch_norms(child)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for shape in SHAPES:
        x = torch.randn(shape)
        ours, ref = InstanceNorm3d(shape[1], affine=True), nn.InstanceNorm3d(shape[1], affine=True)
        with torch.inference_mode():
            forward = (timed(lambda: ours(x), args.repeats), timed(lambda: ref(x), args.repeats))
        rows.append((f"layer {tuple(shape)}, forward", *forward))
        xg, g = x.clone().requires_grad_(), torch.randn(shape)
        rows.append(
            (
                f"layer {tuple(shape)}, fwd + bwd",
                timed(lambda: ours(xg).backward(g), args.repeats),
                timed(lambda: ref(xg).backward(g), args.repeats),
            )
        )
    net = UNet3D(4, 1, channels=WIDTHS, strides=STRIDES, norm="instance")
    ref_net = torch_norms(UNet3D(4, 1, channels=WIDTHS, strides=STRIDES, norm="instance"))
    ref_net.load_state_dict(net.state_dict())
    x = torch.randn(4, 4, 64, 64, 16)
    with torch.inference_mode():
        net.eval(), ref_net.eval()
        agree = (net(x) - ref_net(x)).abs().max().item()
        rows.append(("U-Net, prediction forward", timed(lambda: net(x), args.repeats), timed(lambda: ref_net(x), args.repeats)))
    net.train(), ref_net.train()
    rows.append(
        (
            "U-Net, training step (fwd + bwd)",
            timed(lambda: net(x).mean().backward(), args.repeats),
            timed(lambda: ref_net(x).mean().backward(), args.repeats),
        )
    )
    print(f"CPU, {torch.get_num_threads()} threads, median of {args.repeats}; ms")
    print(f"| {'case':<40} | {'ours':>8} | {'torch':>8} | {'ours / torch':>12} |")
    print(f"|{'-' * 42}|{'-' * 9}:|{'-' * 9}:|{'-' * 13}:|")
    for name, a, b in rows:
        print(f"| {name:<40} | {a:8.1f} | {b:8.1f} | {a / b:12.2f} |")
    print(f"\nU-Net outputs of the two norms differ by at most {agree:.2e}")


if __name__ == "__main__":
    main()

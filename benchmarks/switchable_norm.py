"""Benchmark: training-step time of SLNet with switchable norm against the same U-Net with instance norm.

Both networks are ``strokelab.nn.slnet.SLNet`` with identical widths, SE blocks off, Xavier init, ReLU,
max-pool down, transposed-conv up; the only difference is the normalisation layer after each
convolution: ``SwitchableNorm`` (mixing instance, layer and batch statistics, Wang et al.'s choice) vs
the project's instance norm (``make_norm("instance")``: ``InstanceNorm{2,3}d(affine=True)`` computed by
``group_norm``; the reference, measured in the same run). One step is forward +
binary cross-entropy on one lesion logit + backward + RMSprop step (lr 0.002, Wang et al.).

Rows: 2D 256x256 slices, batch 5 (Wang et al.'s batch size), widths (16, 32, 64, 128, 256); a 3D
64x64x16 patch, batch 2, widths (8, 16, 32, 64, 128); ``--paper`` adds one 2D step at Wang's widths
(64 ... 1024, 31 M parameters; one step each without warm-up: about a minute per step on 2 CPU
cores). With CUDA, the same rows run again under bf16 autocast on the GPU. A norm-only row times one
normalisation layer alone (forward + backward) on the 2D network's first feature map.

Run:  .venv/bin/python benchmarks/switchable_norm.py [--repeats 3] [--threads N] [--paper]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import time_interleaved
from torch import nn

from strokelab.nn import count_parameters
from strokelab.nn.blocks import make_norm
from strokelab.nn.norms import SwitchableNorm
from strokelab.nn.slnet import SLNet

CASES = [
    # (name, spatial_dims, input shape (B, C, *spatial), channels)
    ("2D 256x256, batch 5", 2, (5, 4, 256, 256), (16, 32, 64, 128, 256)),
    ("3D 64x64x16, batch 2", 3, (2, 4, 64, 64, 16), (8, 16, 32, 64, 128)),
]
PAPER_CASE = ("2D 256x256, batch 5, paper widths", 2, (5, 4, 256, 256), (64, 128, 256, 512, 1024))


def make_step(net: nn.Module, x: torch.Tensor, target: torch.Tensor, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.RMSprop(net.parameters(), lr=0.002)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        opt.step()

    return step


def network_row(
    case, device: torch.device, bf16: bool, repeats: int, warmup: bool = True
) -> tuple[str, float, float, float, float]:
    name, dims, shape, channels = case
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    target = (torch.rand((shape[0], 1) + shape[2:], device=device) > 0.9).float()
    steps = []
    params = []
    for norm in ("switchable", "instance"):
        torch.manual_seed(0)
        net = SLNet(shape[1], 1, channels=channels, spatial_dims=dims, se=False, norm=norm).to(device).train()
        steps.append(make_step(net, x, target, bf16))
        params.append(count_parameters(net))
    t_sn, t_in = time_interleaved(steps, repeats, device, warmup)
    return name, params[0], t_sn, t_in, t_sn / t_in


def norm_only_row(device: torch.device, bf16: bool, repeats: int) -> tuple[str, float, float, float, float]:
    shape = (5, 16, 256, 256)
    x = torch.randn(shape, device=device, requires_grad=True)
    dtype = torch.bfloat16 if bf16 else torch.float32
    xin = x.detach().to(dtype).requires_grad_(True)
    sn = SwitchableNorm(16, spatial_dims=2).to(device).train()
    inorm = make_norm("instance", 16, spatial_dims=2).to(device).train()

    def run(layer: nn.Module) -> Callable[[], None]:
        def fn() -> None:
            xin.grad = None
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                y = layer(xin)
            y.float().square().mean().backward()

        return fn

    t_sn, t_in = time_interleaved([run(sn), run(inorm)], repeats, device)
    return "norm layer only, (5,16,256,256)", 0.0, t_sn, t_in, t_sn / t_in


def print_table(title: str, rows: list[tuple[str, float, float, float, float]]) -> None:
    print(title)
    header = f"{'case':<36} {'params M':>9} {'SN ms/step':>11} {'IN ms/step':>11} {'SN/IN':>6}"
    print(header)
    print("-" * len(header))
    for name, params, t_sn, t_in, ratio in rows:
        p = f"{params:.3f}" if params else "-"
        print(f"{name:<36} {p:>9} {t_sn * 1e3:>11.1f} {t_in * 1e3:>11.1f} {ratio:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--paper", action="store_true", help="also one 2D step at Wang's widths (64 ... 1024)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cpu = torch.device("cpu")
    print(f"torch={torch.__version__} threads={torch.get_num_threads()}; median of {args.repeats} steps after 1 warm-up")
    rows = [network_row(case, cpu, False, args.repeats) for case in CASES]
    rows.append(norm_only_row(cpu, False, args.repeats))
    if args.paper:
        rows.append(network_row(PAPER_CASE, cpu, False, 1, warmup=False))  # one step each, no warm-up
    print_table("CPU, float32 (SLNet with SE off; SN = switchable norm, IN = instance norm)", rows)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        rows = [network_row(case, gpu, True, args.repeats) for case in CASES]
        rows.append(network_row(PAPER_CASE, gpu, True, args.repeats))
        rows.append(norm_only_row(gpu, True, args.repeats))
        print_table(f"CUDA ({torch.cuda.get_device_name(gpu)}), bf16 autocast", rows)


if __name__ == "__main__":
    main()

"""Benchmark: training-step time and peak memory of the pseudo-DWI chain against SLNet alone.

Both are the models ``train.py`` builds (``strokelab.models``): SLNet on the four perfusion maps F_o with
Wang's WCE + HGD (the reference, measured in the same run), and the whole chain of ``model=pseudo_dwi``
(feature extractor Φ_e on the 6-frame windowed CTP, generator Φ_g on F_o + MIP + F_h, SLNet Φ_s on the
pseudo-DWI, the frozen context encoder Φ_c; all five loss terms of Eq. 15), both with U-Net widths given per
row. One step is forward + every loss term + backward + RMSprop step (lr 0.002), batch 5 of 2D slices.

Time: median seconds per step over ``--repeats`` interleaved steps after one warm-up step each. Peak memory:
each model runs again in a fresh process; on CPU the rise of the process's peak resident memory (VmHWM,
reset through /proc/self/clear_refs) over what it held after building the model and the batch, on CUDA
``torch.cuda.max_memory_allocated`` over what was allocated before the steps.
Rows: 64x64 slices at the CPU budget's widths (16 ... 256, experiment=pseudo_dwi), 256x256 slices at the
same widths; with CUDA the rows run again on the GPU under bf16 autocast, plus 256x256 at the paper's widths
(64 ... 1024).

Run:  .venv/bin/python benchmarks/chain_step.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import time
from pathlib import Path

import torch

BUDGET = (16, 32, 64, 128, 256)
PAPER = (64, 128, 256, 512, 1024)
MAPS = ("cbf", "cbv", "mtt", "tmax")


def build(kind: str, widths, spatial: int, device: str):
    """The model and one batch of 5 slices (inputs and targets by name)."""
    from strokelab.losses import ContextLoss, PixelLoss, WCEHGDLoss
    from strokelab.models import PseudoDWIChain, SegmentationModel
    from strokelab.nn.context import ContextEncoder
    from strokelab.nn.slnet import PlainUNet, SLNet

    torch.manual_seed(0)
    if kind == "slnet":
        net = SLNet(4, 1, widths, spatial_dims=2, se_reduction=1)
        model = SegmentationModel(net, list(MAPS), losses={"seg": {"fn": WCEHGDLoss()}}, spatial_dims=2)
    else:
        unet = functools.partial(PlainUNet, out_channels=1, channels=widths, spatial_dims=2)
        slnet = functools.partial(SLNet, out_channels=1, channels=widths, spatial_dims=2, se_reduction=1)
        losses = {
            "seg": {"fn": WCEHGDLoss()},
            "synth_pixel": {"fn": PixelLoss("l2", weighted=True)},
            "synth_context": {"fn": ContextLoss("l1")},
            "extract_pixel": {"fn": PixelLoss("l2", weighted=True)},
            "extract_context": {"fn": ContextLoss("l1")},
        }
        model = PseudoDWIChain(
            unet, extractor=unet, segmenter=slnet, context_encoder=ContextEncoder(spatial_dims=2), losses=losses, spatial_dims=2
        )
    g = torch.Generator().manual_seed(1)
    shape = (5, 1, spatial, spatial)
    batch = {m: torch.randn(shape, generator=g) for m in (*MAPS, "ctp_mip")}
    batch["ctp_window"] = torch.randn((5, 6, spatial, spatial), generator=g)
    batch["dwi"] = torch.rand(shape, generator=g)
    label = torch.zeros(shape)
    label[:, :, spatial // 3 : spatial // 2, spatial // 3 : spatial // 2] = 1
    batch["label"], batch["weight_map"] = label, 1 + 0.5 * label
    model = model.to(device).train()
    return model, {k: v.to(device) for k, v in batch.items()}


def make_step(model, batch, bf16: bool):
    opt = torch.optim.RMSprop(model.generator_parameters(), lr=0.002)
    device = next(model.parameters()).device.type

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            outputs = model({m: batch[m] for m in model.inputs})
        outputs = {k: v.float() for k, v in outputs.items()}
        model.losses(outputs, batch)["loss"].backward()
        opt.step()

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory(args) -> float:
    """MiB of peak memory one model's training steps add (run in a fresh process)."""
    kind, widths, spatial, device, bf16, threads = args
    torch.set_num_threads(threads)
    model, batch = build(kind, widths, spatial, device)
    step = make_step(model, batch, bf16)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident size (VmHWM) to the current one
    base = _status_kib("VmRSS")
    for _ in range(2):
        step()
    return (_status_kib("VmHWM") - base) / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [("cpu", False, 64, BUDGET), ("cpu", False, 256, BUDGET)]
    if torch.cuda.is_available():
        rows += [("cuda", True, 64, BUDGET), ("cuda", True, 256, BUDGET), ("cuda", True, 256, PAPER)]
    ctx = multiprocessing.get_context("spawn")
    print(f"torch {torch.__version__}, {args.threads} CPU threads, {args.repeats} interleaved steps per model, batch 5\n")
    header = (
        "| device | slice | widths | SLNet s/step | chain s/step | time ratio | SLNet peak MiB | chain peak MiB "
        "| memory ratio | params SLNet / chain (M) |"
    )
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for device, bf16, spatial, widths in rows:
        models = {k: build(k, widths, spatial, device) for k in ("slnet", "chain")}
        steps = {k: make_step(m, b, bf16) for k, (m, b) in models.items()}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for fn in steps.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for k, fn in steps.items():
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[k].append(time.perf_counter() - t0)
        params = {k: m.parameter_count() / 1e6 for k, (m, _) in models.items()}
        del models, steps
        with ctx.Pool(1) as pool:
            memory = {k: pool.apply(peak_memory, ((k, widths, spatial, device, bf16, args.threads),)) for k in ("slnet", "chain")}
        t = {k: statistics.median(v) for k, v in times.items()}
        label = f"{device}{' bf16' if bf16 else ''}"
        print(
            f"| {label} | {spatial}x{spatial} | {widths[0]}...{widths[-1]} | {t['slnet']:.3f} | {t['chain']:.3f} | "
            f"{t['chain'] / t['slnet']:.2f}x | {memory['slnet']:.0f} | {memory['chain']:.0f} | "
            f"{memory['chain'] / max(memory['slnet'], 1e-9):.2f}x | {params['slnet']:.2f} / {params['chain']:.2f} |"
        )


if __name__ == "__main__":
    main()

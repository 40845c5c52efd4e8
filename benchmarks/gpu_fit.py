"""Benchmark: short fits of the U-Net, SLNet and the pseudo-DWI chain in bf16-mixed against fp32, then with DDP.

For each model the real configs are composed with Hydra (``conf/model/``, ``conf/data/`` for the patch and
batch size, ``conf/trainer/gpu.yaml`` and ``ddp.yaml``) and the real training step runs: the model is wrapped
in ``strokelab.tasks.task.Task`` and fitted by a Lightning Trainer built from the trainer config, so the chain
(``experiment=pseudo_dwi +variant=l2_gan``: generator, extractor, SLNet and a patch discriminator) goes through
the task's manual optimisation with its second optimiser.

Rows, per model, each ``--steps`` training steps (batches) on the same synthetic phantom-like batches (a lesion blob in
smooth perfusion-like maps; label, weight map and DWI to match) from the same initial weights and seed:

* ``bf16-mixed``: the trainer config as it is (``trainer=gpu``: ``precision: bf16-mixed``), one device;
* ``fp32``: the same with ``precision=32-true`` and TF32 off (``torch.backends.cuda.matmul.allow_tf32`` and
  ``torch.backends.cudnn.allow_tf32`` false), the reference for both speed and loss; measured in the same run;
* ``bf16-mixed ddp``: ``trainer=ddp`` (strategy ddp, ``devices: auto``: every visible GPU, synchronised batch
  norm), in a fresh process, as Lightning launches one process per device; each rank draws its own batches.
  With one visible GPU it runs on that one device (the strategy's code path, no scaling) and says so. The GAN
  chain runs with ``ddp_find_unused_parameters_true`` as train.py does (``train.ddp_adjustments``; its row says
  so): the discriminator step backpropagates a loss that reaches none of the other networks.

Columns: steps/s and samples/s (global: batch x devices) over the steps after ``--warmup`` warm-up steps, peak
memory (``torch.cuda.max_memory_allocated`` of rank 0's device, MiB), whether every step's loss was finite, the
loss of the first and the last step, and their relative difference to the fp32 row's (first step: same
weights, same batch, so the numerics alone; last step: the last step both ran, after diverging updates; not for DDP rows,
whose gradients also average the other ranks' batches). The closing lines give the bf16 / fp32 speed ratio per
model, and the DDP / one-device ratio of samples/s.

Time guard: the whole run stops at ``--budget`` seconds (default 420 s: under 8 minutes with start-up); a fit
that runs past its share stops at the end of its current step and its row says so, fits that no longer fit are
skipped, and the table printed and written is what was measured. Results go to ``--out`` (default
``benchmarks/results/``) as ``gpu_fit_<cuda|cpu>.json`` and ``.md``, rewritten after every fit.

Without a GPU (or with ``--cpu``) it runs a tiny version on the CPU: tiny widths, small patches, a few steps,
bf16-mixed against fp32 and DDP on 2 processes (gloo, without synchronised batch norm, which is GPU-only), so
that every code path of the script runs anywhere (about 20 s on 2 cores).

Run:  .venv/bin/python benchmarks/gpu_fit.py [--steps 60] [--warmup 10] [--models unet slnet chain] [--out DIR]
      .venv/bin/python benchmarks/gpu_fit.py --cpu          (the CPU smoke run; tests/test_benchmarks_gpu_fit.py)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DEFAULT_OUT = REPO / "benchmarks" / "results"

# Config overrides per model: the real model configs with the data config that gives their patch and batch
# size (data=isles24: 96x96x32 patches, batch 2; data=isles18: 128x128 slices, batch 5; the chain at the
# paper's widths with the L2 + GAN variant, whose discriminator makes the task optimise manually).
GPU_MODELS: dict[str, list[str]] = {
    "unet": ["model=unet", "data=isles24"],
    "slnet": ["model=slnet", "data=isles18", "loss=wce_hgd"],
    "chain": [
        "experiment=pseudo_dwi",
        "+variant=l2_gan",
        "widths=[64,128,256,512,1024]",
        "data.patch_size=[128,128,1]",
    ],
}
# The CPU smoke run: the same configs at tiny widths and patches.
CPU_MODELS: dict[str, list[str]] = {
    "unet": [*GPU_MODELS["unet"], "model.net.channels=[4,8,16,32]", "data.patch_size=[16,16,8]"],
    "slnet": [*GPU_MODELS["slnet"], "model.net.channels=[4,8,16,32,64]", "data.patch_size=[32,32,1]", "data.batch_size=2"],
    "chain": [*GPU_MODELS["chain"][:2], "widths=[4,8,16,32,64]", "data.patch_size=[32,32,1]", "data.batch_size=2"],
}
POOL = 4  # distinct batches per rank, cycled (built before the fit, so data generation is not timed)
DDP_RESERVE_S = 0.3  # share of the budget kept for the DDP fits when the single-device fits run


# -- configs, models and batches ------------------------------------------------------------------------------
def compose_config(overrides: list[str], trainer: str):
    from hydra import compose, initialize_config_dir

    from strokelab.entry import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"trainer={trainer}"])


def input_channels(cfg, name: str) -> int:
    """Channels the data side serves for ``name``: the chain's CTP window has one per frame, the rest one."""
    if name == cfg.model.get("window"):
        return int(cfg.data.preprocess.window_frames)
    return 1


def smooth_field(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Smooth random field in about [-1, 1]: noise upsampled from a coarse grid (4x fewer voxels per axis)."""
    coarse = torch.randn((shape[0], 1, *[max(2, s // 4) for s in shape[1:]]), generator=g)
    mode = "trilinear" if len(shape) == 4 else "bilinear"
    return torch.nn.functional.interpolate(coarse, size=shape[1:], mode=mode, align_corners=False)[:, 0].clamp(-2, 2) / 2


def make_batch(cfg, names: list[str], seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """One phantom-like TorchIO-style batch ``{name: {"data": (B, C, X, Y, Z)}}``: per sample a spherical lesion
    in smooth maps (CBF and CBV lower, MTT and Tmax higher inside), its label, Wang's weight map and a DWI."""
    import torchio as tio

    g = torch.Generator().manual_seed(seed)
    b = int(cfg.data.batch_size)
    patch = [int(p) for p in cfg.data.patch_size]
    spatial = tuple(patch[:2]) if int(cfg.model.spatial_dims) == 2 else tuple(patch)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in spatial], indexing="ij")
    centre = torch.rand((b, len(spatial)), generator=g) * 0.8 - 0.4
    radius = 0.2 + 0.25 * torch.rand((b,), generator=g)
    expand = (slice(None),) + (None,) * len(spatial)
    dist = sum((grid[None] - centre[:, i][expand]) ** 2 for i, grid in enumerate(grids))
    lesion = (dist.sqrt() < radius[expand]).float()  # (B, *spatial)
    sign = {"cbf": -1.0, "cbv": -1.0, "mtt": 1.0, "tmax": 1.0}
    images: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "label":
            images[name] = lesion[:, None]
        elif name == "weight_map":
            images[name] = 1.0 + 0.5 * lesion[:, None]
        elif name == "dwi":
            images[name] = (0.3 + 0.5 * lesion + 0.1 * smooth_field((b, *spatial), g)).clamp(0, 1)[:, None]
        else:
            c = input_channels(cfg, name)
            maps = [sign.get(name, 1.0) * 1.5 * lesion + smooth_field((b, *spatial), g) for _ in range(c)]
            images[name] = torch.stack(maps, dim=1)
    if int(cfg.model.spatial_dims) == 2:  # axial slices come as (B, C, X, Y, 1) from the patch queue
        images = {k: v[..., None] for k, v in images.items()}
    return {k: {tio.DATA: v.contiguous()} for k, v in images.items()}


class Batches(torch.utils.data.Dataset):
    """``steps`` batches cycling through a pool of ``POOL`` distinct ones; each DDP rank gets its own pool
    (drawn when first read, after the process group exists)."""

    def __init__(self, cfg, names: list[str], steps: int, seed: int):
        self.cfg, self.names, self.steps, self.seed = cfg, names, steps, seed
        self.pool: list[dict] | None = None

    def __len__(self) -> int:
        return self.steps

    def build(self) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.pool = [make_batch(self.cfg, self.names, self.seed + 1000 * rank + i) for i in range(POOL)]

    def __getitem__(self, i: int) -> dict:
        if self.pool is None:
            self.build()
        return self.pool[i % POOL]


# -- measuring one fit -----------------------------------------------------------------------------------------
class Probe(L.Callback):
    """Per-step losses, the wall time of the steps after warm-up (synchronised at its two ends only, so that
    the host runs ahead of the GPU as in training), and the time guard."""

    def __init__(self, warmup: int, deadline: float, cuda: bool):
        self.warmup, self.deadline, self.cuda = warmup, deadline, cuda
        self.losses: list[torch.Tensor] = []
        self.t0: float | None = None
        self.t1: float | None = None
        self.stopped = False

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach().float().clone())
        last = batch_idx + 1 >= trainer.num_training_batches
        if not last and time.time() > self.deadline:
            self.stopped = True
            trainer.should_stop = True
        if (last or self.stopped) and batch_idx >= self.warmup:
            self._sync()
            self.t1 = time.perf_counter()


@contextmanager
def strict_fp32(enabled: bool):
    """TF32 off for the fp32 reference (cuDNN convolutions use TF32 by default on Ampere and later)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def fit(cfg, model, *, precision: str | None, steps: int, warmup: int, deadline: float, seed: int, work: Path, **trainer_kw):
    """Fit a copy of ``model`` for ``steps`` steps with the config's trainer (``precision`` overrides it) and
    return the measured row (rank 0's figures; a DDP rank > 0 returns None)."""
    from hydra.utils import instantiate

    from strokelab.tasks.task import Task

    cuda = cfg.trainer.accelerator == "gpu"
    L.seed_everything(seed, workers=True, verbose=False)
    task = Task(copy.deepcopy(model), meta={}, val_images=0)
    names = list(dict.fromkeys(model.inputs + model.served_targets))
    loader = torch.utils.data.DataLoader(Batches(cfg, names, steps, seed), batch_size=None, shuffle=False, pin_memory=cuda)
    probe = Probe(warmup, deadline, cuda)
    kw = dict(
        default_root_dir=str(work),
        max_epochs=1,  # one epoch of ``steps`` batches (max_steps counts optimiser steps: two per batch for a GAN)
        max_steps=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
        **trainer_kw,
    )
    if precision is not None:
        kw["precision"] = precision
    from strokelab.train import ddp_adjustments

    kw.update(ddp_adjustments(cfg, model))  # what train.py's trainer gets under trainer=ddp (GAN step, CPU batch norm)
    trainer = instantiate(cfg.trainer, **kw)
    if cuda:  # the previous fit's trainer and task are garbage now: free them so the peak is this fit's
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with strict_fp32(cuda and precision == "32-true"):
        trainer.fit(task, train_dataloaders=loader)
    if not trainer.is_global_zero:
        return None
    losses = [float(v) for v in probe.losses]
    timed = len(losses) - warmup
    elapsed = (probe.t1 - probe.t0) if probe.t0 is not None and probe.t1 is not None else float("nan")
    rate = timed / elapsed if timed > 0 and elapsed > 0 else float("nan")
    world = int(trainer.world_size)
    return {
        "precision": str(trainer.precision),
        "strategy": type(trainer.strategy).__name__,
        "devices": world,
        "batch": int(cfg.data.batch_size),
        "patch": [int(p) for p in cfg.data.patch_size],
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "steps": len(losses),
        "timed_steps": max(timed, 0),
        "steps_per_s": rate,
        "samples_per_s": rate * int(cfg.data.batch_size) * world,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "losses": losses,
        "stopped_by_time_guard": probe.stopped,
    }


def build_model(cfg, seed: int):
    from hydra.utils import instantiate

    L.seed_everything(seed, workers=True, verbose=False)
    return instantiate(cfg.model)


def quiet() -> None:
    """Lightning's start-up banners and the data-loader hints are not part of the table."""
    # (lightning, imported above, set its loggers' levels on import: override them now)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|LeafSpec|smaller than the logging).*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    warnings.filterwarnings("ignore", category=FutureWarning)


# -- the two phases --------------------------------------------------------------------------------------------
def single_device(args, models: dict[str, list[str]], deadline: float, out: Path, rows: list[dict], meta: dict) -> None:
    trainer_cfg = "cpu" if args.cpu else "gpu"
    extra = {"precision": "bf16-mixed"} if args.cpu else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in models.items():
            cfg = compose_config(overrides, trainer_cfg)
            model = build_model(cfg, args.seed)
            for label, precision in (("bf16-mixed", extra.get("precision")), ("fp32", "32-true")):
                row = {"model": name, "mode": label}
                if time.time() > deadline:
                    rows.append({**row, "skipped": "time guard: the budget was spent"})
                else:
                    row.update(
                        fit(cfg, model, precision=precision, steps=args.steps, warmup=args.warmup, deadline=deadline,
                            seed=args.seed, work=Path(tmp))
                    )
                    rows.append(row)
                write_results(out, rows, meta)
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def ddp_child(args) -> None:
    """Runs in every DDP rank (Lightning re-runs this command once per further device): the bf16 DDP fits."""
    models = CPU_MODELS if args.cpu else GPU_MODELS
    chosen = {k: v for k, v in models.items() if k in args.models}
    # On the CPU: 2 gloo processes, with the config's bf16-mixed as on the GPU (train.ddp_adjustments turns off
    # sync_batchnorm there: torch's SyncBatchNorm runs on GPUs only, and the chain's PlainUNets use batch norm).
    extra = ["trainer.accelerator=cpu", "trainer.devices=2"] if args.cpu else []
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in chosen.items():
            cfg = compose_config([*overrides, *extra], "ddp")
            model = build_model(cfg, args.seed)
            row = {"model": name, "mode": "bf16-mixed ddp"}
            if getattr(model, "discriminator", None) is not None:
                # train.ddp_adjustments: the GAN step's discriminator backward reaches none of the other networks'
                # parameters, which plain DDP refuses at the next step.
                row["note"] = "strategy ddp_find_unused_parameters_true (train.ddp_adjustments: the GAN step)"
            if time.time() > args.deadline:
                row["skipped"] = "time guard: the budget was spent"
            else:
                result = fit(
                    cfg, model, precision=None, steps=args.steps, warmup=args.warmup, deadline=args.deadline,
                    seed=args.seed, work=Path(tmp)
                )
                if result is None:  # rank > 0
                    continue
                row.update(result)
            rows.append(row)
            if args.ddp_child:
                Path(args.ddp_child).write_text(json.dumps(rows))


def run_ddp(args, deadline: float, out: Path, rows: list[dict], meta: dict) -> None:
    """The DDP fits in a fresh process (Lightning launches the further ranks by re-running its command)."""
    if args.cpu:
        meta["ddp"] = "2 CPU processes (gloo), bf16-mixed, sync_batchnorm off (GPU-only): the code path only, no GPU"
    else:
        n = torch.cuda.device_count()
        meta["ddp"] = (
            f"{n} GPUs" if n > 1 else "1 GPU visible: DDP ran on that one device (the strategy's code path; no scaling)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "ddp.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-child", str(result), "--deadline", str(deadline),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed), "--models", *args.models]
        if args.cpu:
            cmd.append("--cpu")
        env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT")}
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            log, _ = proc.communicate(timeout=max(deadline - time.time(), 0) + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the child's session: it and the ranks it launched
            log, _ = proc.communicate()
            meta["ddp"] += "; killed by the time guard"
        found = json.loads(result.read_text()) if result.exists() else []
        rows.extend(found)
        done = {r["model"] for r in found}
        for name in args.models:
            if name not in done:
                reason = "time guard" if time.time() > deadline else f"the DDP process failed (exit {proc.returncode})"
                rows.append({"model": name, "mode": "bf16-mixed ddp", "skipped": reason})
        if proc.returncode != 0:
            print(f"the DDP process exited with {proc.returncode}; its last output:\n{log[-3000:]}", file=sys.stderr)
    write_results(out, rows, meta)


# -- the table -------------------------------------------------------------------------------------------------
def rel(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return abs(a - b) / abs(b)


def fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(rows: list[dict]) -> list[str]:
    ref = {r["model"]: r for r in rows if r["mode"] == "fp32" and "losses" in r}
    head = (
        "| model | mode | devices | batch × patch | steps (timed) | steps/s | samples/s | peak MiB | loss finite "
        "| loss step 1 | loss step N | vs fp32 step 1 | vs fp32 step N |"
    )
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['mode']} | skipped: {r['skipped']} |" + " |" * 10)
            continue
        losses, base = r["losses"], ref.get(r["model"])
        first = rel(losses[0], base["losses"][0]) if base and r is not base and losses else None
        n = min(len(losses), len(base["losses"])) if base else 0
        # DDP rows: only step 1 compares like with like (the later steps average the gradients of other batches).
        last = rel(losses[n - 1], base["losses"][n - 1]) if base and r is not base and n and r["devices"] == 1 else None
        patch = "×".join(str(p) for p in r["patch"])
        steps = f"{r['steps']} ({r['timed_steps']})" + (" stopped: time guard" if r["stopped_by_time_guard"] else "")
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['devices']} | {r['batch']} × {patch} | {steps} | {fmt(r['steps_per_s'], '.2f')} "
            f"| {fmt(r['samples_per_s'], '.1f')} | {fmt(r['peak_mib'], '.0f')} | {'yes' if r['finite'] else 'NO'} "
            f"| {fmt(losses[0] if losses else None, '.4f')} | {fmt(losses[-1] if losses else None, '.4f')} "
            f"| {fmt(first, '.2e')} | {fmt(last, '.2e')} |"
        )
    lines += [f"- {r['model']} {r['mode']}: {r['note']}" for r in rows if r.get("note")]
    return lines


def ratios(rows: list[dict]) -> list[str]:
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        got = {r["mode"]: r for r in rows if r["model"] == name and "steps_per_s" in r}
        bf16, fp32 = got.get("bf16-mixed"), got.get("fp32")
        if bf16 and fp32 and fp32["steps_per_s"] > 0:
            line = f"{name}: bf16-mixed / fp32 speed = {bf16['steps_per_s'] / fp32['steps_per_s']:.2f}x"
            if fp32["peak_mib"] and bf16["peak_mib"]:
                line += f", peak memory {bf16['peak_mib'] / fp32['peak_mib']:.2f}x"
            ddp = got.get("bf16-mixed ddp")
            if ddp and bf16["samples_per_s"] > 0:
                speedup = ddp["samples_per_s"] / bf16["samples_per_s"]
                line += f"; ddp on {ddp['devices']} device(s) / one device, samples/s = {speedup:.2f}x"
            out.append(line)
    return out


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gpu_fit_{meta['device_kind']}"
    payload = json.dumps({"meta": meta, "rows": rows}, indent=1)
    md = "\n".join([describe(meta), "", *table(rows), "", *ratios(rows), ""])
    for path, text in ((stem.with_suffix(".json"), payload), (stem.with_suffix(".md"), md)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def describe(meta: dict) -> str:
    return (
        f"{meta['device']}; torch {meta['torch']}, {meta['steps']} steps per fit ({meta['warmup']} warm-up, not timed), "
        f"seed {meta['seed']}; fp32 = 32-true with TF32 off; DDP: {meta.get('ddp', 'not run')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the tiny CPU version (automatic without a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="steps per fit (default 60 on GPU, 6 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 10 on GPU, 2 on CPU)")
    parser.add_argument("--models", nargs="+", default=list(GPU_MODELS), choices=list(GPU_MODELS))
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (the time guard)")
    parser.add_argument("--no-ddp", action="store_true", help="skip the DDP fits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for gpu_fit_<cuda|cpu>.json and .md")
    parser.add_argument("--ddp-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    start = time.time()
    if not args.cpu and not torch.cuda.is_available():
        print("no GPU is visible: running the tiny CPU version (--cpu)")
        args.cpu = True
    args.steps = args.steps or (6 if args.cpu else 60)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.cpu else 10)
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    quiet()
    if args.cpu:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    if args.ddp_child is not None:
        ddp_child(args)
        return

    models = {k: v for k, v in (CPU_MODELS if args.cpu else GPU_MODELS).items() if k in args.models}
    deadline = start + args.budget
    device = (
        "CPU (tiny smoke version: tiny widths, small patches)"
        if args.cpu
        else ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    )
    meta = {"device_kind": "cpu" if args.cpu else "cuda", "device": device, "torch": torch.__version__, "steps": args.steps,
            "warmup": args.warmup, "seed": args.seed, "budget_s": args.budget}
    rows: list[dict] = []
    reserve = 0.0 if args.no_ddp else DDP_RESERVE_S * args.budget
    single_device(args, models, deadline - reserve, args.out, rows, meta)
    if args.no_ddp:
        meta["ddp"] = "not run (--no-ddp)"
    else:
        run_ddp(args, deadline, args.out, rows, meta)
    meta["wall_s"] = round(time.time() - start, 1)
    write_results(args.out, rows, meta)
    print(describe(meta))
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(ratios(rows)))
    print(f"\n{meta['wall_s']:.0f} s in all; written to {args.out}/gpu_fit_{meta['device_kind']}.json and .md")
    bad = [f"{r['model']} {r['mode']}" for r in rows if "finite" in r and not r["finite"]]
    if bad:
        print(f"non-finite loss in: {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Timing shared by the benchmarks: interleaved repeats, so that a change of machine load during a run affects
every row alike instead of biasing the rows measured last."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_interleaved(
    fns: list[Callable[[], object]], repeats: int, device: torch.device, warmup: bool = True
) -> list[float]:
    """Median seconds per call of each function: one warm-up call each (unless ``warmup=False``), then
    ``repeats`` rounds calling every function once (a, b, a, b, ...); CUDA is synchronised around each call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns if warmup else []:
        fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]

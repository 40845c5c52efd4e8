"""How well can a voxel-wise network predict Tmax from CTP voxels, with and without in-plane smoothing?

The best *linear* 1x1x1 model (``tmax_linear``'s optimum) is a least-squares fit of Tmax on the 32 resampled
frames of every brain voxel. Fit on the phantom's training cases, tested on held-out ones, for several
``data.preprocess.series_smooth_mm``; the reference is guessing the training mean (same run).

    .venv/bin/python benchmarks/tmax_voxelwise_ceiling.py [--root data/phantom] [--cases 12]
"""

from __future__ import annotations

import argparse

import numpy as np

from strokelab.data.check import load_case
from strokelab.data.layouts import discover
from strokelab.data.phantom import PhantomConfig, generate, is_current
from strokelab.data.preprocess import Preprocessing, Serve, preprocess_loaded

BASE = {
    "spacing": [2.0, 2.0, 5.0],
    "frames": 32,
    "skull_strip": "ct",
    "normalize": "minmax",
    "nan_policy": "replace",
    "target_range": [0.0, 20.0],
}


def voxels(cases, sigma_mm: float):
    prep = Preprocessing.from_config({**BASE, "series_smooth_mm": sigma_mm})
    xs, ys = [], []
    for case in cases:
        entry = preprocess_loaded(load_case(case, "replace"), prep, Serve.make(["ctp"], ["tmax"]))
        target = entry["images"]["tmax"][0].numpy()
        brain = target != 0
        xs.append(entry["images"]["ctp"].numpy()[:, brain].T)
        ys.append(target[brain])
    return xs, ys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/strokelab_tmax_ceiling")
    parser.add_argument("--cases", type=int, default=12)
    args = parser.parse_args()
    config = PhantomConfig(n_cases=args.cases)
    if not is_current(args.root, config):
        generate(args.root, config, workers=2)
    cases = discover(args.root, ["ctp", "tmax"], with_label=False)
    n_test = max(2, len(cases) // 4)
    print(f"{len(cases) - n_test} training cases, {n_test} held-out cases (phantom, Tmax in s, inside the brain)\n")
    print("| series_smooth_mm | r (linear fit) | MAE linear (s) | MAE mean guess (s) | ratio |")
    print("|-----------------:|---------------:|---------------:|-------------------:|------:|")
    for sigma in (0.0, 2.0, 5.0, 7.0):
        xs, ys = voxels(cases, sigma)
        tr_x, tr_y = np.concatenate(xs[:-n_test]), np.concatenate(ys[:-n_test])
        te_x, te_y = np.concatenate(xs[-n_test:]), np.concatenate(ys[-n_test:])
        w, *_ = np.linalg.lstsq(np.c_[tr_x, np.ones(len(tr_x))], tr_y, rcond=None)
        pred = np.c_[te_x, np.ones(len(te_x))] @ w
        mae, guess = float(np.abs(te_y - pred).mean()), float(np.abs(te_y - tr_y.mean()).mean())
        r = float(np.corrcoef(te_y, pred)[0, 1])
        print(f"| {sigma:16.1f} | {r:14.2f} | {mae:14.2f} | {guess:18.2f} | {mae / guess:5.2f} |")


if __name__ == "__main__":
    main()

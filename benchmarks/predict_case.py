"""Time the prediction of one ISLES-sized case: stage by stage, and ``predict.py`` end to end against a bare read.

The case has real ISLES'24 geometry (512x586x74 voxels of 0.38x0.38x2 mm, LAS, oblique; the header of
shared/data/real's sub-stroke0014 mask when present) and maps resampled from a phantom case; ``--noisy`` adds
Gaussian noise everywhere (maps that gzip poorly and a background that is not 0, so nothing is cropped: the
slow case). The model is the default config's network, untrained (``--ckpt`` to time a trained one; the
compute is the same).

    python benchmarks/predict_case.py [--noisy] [--ckpt PATH] [--repeats 2] [--skip-e2e]

Prints two tables, each with its reference measured in the same run:
1. seconds per stage in this process: data loading (read + check + preprocess + back to native + write) over
   model compute (sliding-window network), and our read + check over a bare ``nibabel`` read of the same files;
2. ``predict.py`` as a user runs it (a new process: Python start-up, reading, writing included) on the case
   with its lesion mask (metrics too), without it, and three cases in one call, against a bare ``nibabel``
   read of the same files in a new process; the goals (issue 10): under 8 s, at most 4 s above the bare read,
   the metrics under 2 s more.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from strokelab.data.check import load_case
from strokelab.data.layouts import discover, label_path, modality_path
from strokelab.data.phantom import PhantomConfig, generate_case
from strokelab.data.preprocess import Preprocessing, Serve, preprocess_loaded, to_native
from strokelab.entry import register_resolvers
from strokelab.inference import ModelPredictor, write_mask
from strokelab.metrics import case_metrics

REPO = Path(__file__).resolve().parents[1]
REAL_MASK = REPO.parent / "shared/data/real/isles24/derivatives/sub-stroke0014/ses-02/sub-stroke0014_ses-02_lesion-msk.nii.gz"
MAPS = ("cbf", "cbv", "mtt", "tmax")


def isles_geometry() -> tuple[tuple[int, int, int], np.ndarray]:
    if REAL_MASK.exists():
        img = nib.load(REAL_MASK)
        return img.shape[:3], img.affine
    t = np.deg2rad(15)
    affine = np.diag([-0.383, 0.383, 2.0, 1.0])
    affine[1:3, 1:3] = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.diag([0.383, 2.0])
    affine[:3, 3] = -affine[:3, :3] @ np.array([256, 293, 37])
    return (512, 586, 74), affine


def write_isles_case(root: Path, cid: str = "sub-stroke0001") -> None:
    """A phantom case resampled onto ISLES'24 geometry, written in the ISLES'24 layout."""
    shape, affine = isles_geometry()
    images = generate_case(0, PhantomConfig(n_cases=1))
    src = images["cbf"]
    # Centre the phantom head in the ISLES field of view.
    src_affine = src.affine.copy()
    src_affine[:3, 3] += (affine[:3, :3] @ (np.array(shape) / 2) + affine[:3, 3]) - (
        src_affine[:3, :3] @ (np.array(src.shape[:3]) / 2) + src_affine[:3, 3]
    )
    for name in (*MAPS, "lesion"):
        data = np.asarray(images[name if name != "lesion" else "lesion-msk"].dataobj, dtype=np.float32)
        out = to_native(data, src_affine, shape, affine)
        path = modality_path(root, cid, name) if name != "lesion" else label_path(root, cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = (out > 0.5).astype(np.uint8) if name == "lesion" else out.astype(np.float32)
        nib.save(nib.Nifti1Image(arr, affine), path)


def add_noise(root: Path, cid: str = "sub-stroke0001") -> None:
    """Gaussian noise (5 % of each map's SD) on every voxel of the case's maps: they gzip poorly, and no
    background is 0."""
    rng = np.random.default_rng(0)
    for name in MAPS:
        path = modality_path(root, cid, name)
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        data += rng.normal(0, 0.05 * (float(data.std()) + 1e-3), data.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


def write_checkpoint(cfg, path: Path) -> Path:
    """The default model, untrained, saved as train.py saves a checkpoint (the compute is a trained one's)."""
    from strokelab.train import checkpoint_meta

    torch.manual_seed(0)
    model = instantiate(cfg.model)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"strokelab": checkpoint_meta(cfg, model), "state_dict": state}, path)
    return path


def linked_root(src: Path, dst: Path, ids: list[str], label: bool) -> Path:
    """A data root whose cases ``ids`` are symbolic links to the maps (and mask) of ``src``'s one case."""
    for cid in ids:
        for name in MAPS:
            target = modality_path(dst, cid, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(modality_path(src, "sub-stroke0001", name))
        if label:
            target = label_path(dst, cid)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(label_path(src, "sub-stroke0001"))
    return dst


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"benchmark: {' '.join(cmd[:2])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def end_to_end(root: Path, ckpt: Path, repeats: int) -> None:
    """predict.py in a new process, as a user runs it, against a bare nibabel read of the same files."""
    work = root.parent / "e2e"
    shutil.rmtree(work, ignore_errors=True)
    with_label = linked_root(root, work / "with_label", ["sub-stroke0001"], label=True)
    no_label = linked_root(root, work / "no_label", ["sub-stroke0001"], label=False)
    three = linked_root(root, work / "three", ["sub-stroke0001", "sub-stroke0002", "sub-stroke0003"], label=True)
    files = [str(modality_path(root, "sub-stroke0001", m)) for m in MAPS] + [str(label_path(root, "sub-stroke0001"))]
    bare = [
        sys.executable,
        "-c",
        "import sys, nibabel as nib, numpy as np\nfor p in sys.argv[1:]: np.asarray(nib.load(p).dataobj, dtype=np.float32)",
        *files,
    ]

    def predict(data: Path, out: str) -> list[str]:
        return [
            sys.executable,
            "predict.py",
            f"input={data}",
            f"output={work / out}",
            f"ckpt={ckpt}",
            "overwrite=true",
            f"hydra.run.dir={work / 'hydra'}",
        ]

    rows: dict[str, list[float]] = {}
    for _ in range(repeats):
        rows.setdefault("bare nibabel read, new process (reference)", []).append(wall(bare))
        rows.setdefault("predict.py, one case, no label", []).append(wall(predict(no_label, "out_no_label")))
        rows.setdefault("predict.py, one case with its label (+ metrics)", []).append(wall(predict(with_label, "out_label")))
        rows.setdefault("predict.py, three cases with labels in one call", []).append(wall(predict(three, "out_three")))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\npredict.py end to end, {os.cpu_count()} cores, median of {repeats} (seconds of wall time):")
    print(f"| {'run':<50} | {'seconds':>8} |\n|{'-' * 52}|{'-' * 10}:|")
    for key, value in med.items():
        print(f"| {key:<50} | {value:8.2f} |")
    read, single = med["bare nibabel read, new process (reference)"], med["predict.py, one case, no label"]
    labelled = med["predict.py, one case with its label (+ metrics)"]
    three_cases = med["predict.py, three cases with labels in one call"]
    print(f"predict.py one case - bare read = {single:.2f} - {read:.2f} = {single - read:.2f} s (goal <= 4 s; total goal < 8 s)")
    print(f"metrics (with label - without) = {labelled - single:.2f} s (goal < 2 s)")
    print(f"each further case in one call = ({three_cases:.2f} - {labelled:.2f}) / 2 = {(three_cases - labelled) / 2:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--noisy", action="store_true", help="noise on every voxel of the maps: the slow case")
    parser.add_argument("--skip-e2e", action="store_true", help="only the stage table")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["task_name=unet"])  # outside a Hydra run: no ${hydra:...} choices
    if args.ckpt:
        predictor = ModelPredictor.from_checkpoint(args.ckpt, device="cpu")
    else:
        predictor = ModelPredictor(instantiate(cfg.model), Preprocessing.from_config(cfg.data.preprocess), device="cpu")
    rows: dict[str, list[float]] = {}
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name) / "case"
    t = time.perf_counter()
    write_isles_case(root)
    if args.noisy:
        add_noise(root)
    print(f"wrote an ISLES-sized case{' with noisy maps' if args.noisy else ''} in {time.perf_counter() - t:.1f} s")
    case = discover(root, predictor.modalities)[0]
    for _ in range(args.repeats):
        times = {}
        t0 = time.perf_counter()
        for path in case.images.values():
            np.asarray(nib.load(path).dataobj, dtype=np.float32)
        times["bare nibabel read (reference)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = load_case(case)
        times["read + check"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        entry = preprocess_loaded(loaded, predictor.prep, Serve.make(predictor.modalities, ()))
        times["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        volumes = {m: entry["images"][m][None] for m in predictor.modalities}
        logits = predictor.model.predict_volume(volumes)["logits"]
        prob = torch.sigmoid(logits)[0, 0].numpy()
        times["network (sliding window)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        native = to_native(prob, entry["affine"], entry["native_shape"], entry["native_affine"])
        times["back to native grid"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_mask(native >= 0.5, loaded.reference, root.parent / "pred.nii.gz")
        times["write mask"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        case_metrics(native >= 0.5, loaded.label, tuple(float(z) for z in loaded.reference.header.get_zooms()[:3]))
        times["metrics (not part of predict)"] = time.perf_counter() - t0
        for key, value in times.items():
            rows.setdefault(key, []).append(value)
    med = {k: statistics.median(v) for k, v in rows.items()}
    shape, _ = isles_geometry()
    print(
        f"\nOne case of {shape[0]}x{shape[1]}x{shape[2]} voxels, {len(predictor.modalities)} maps, "
        f"spacing {predictor.prep.spacing} mm, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"| {'stage':<32} | {'seconds':>8} |\n|{'-' * 34}|{'-' * 10}:|")
    for key, value in med.items():
        print(f"| {key:<32} | {value:8.2f} |")
    loading = sum(med[k] for k in ("read + check", "preprocess", "back to native grid", "write mask"))
    predict_total = loading + med["network (sliding window)"]
    print(f"| {'predict total (excl. reference)':<32} | {predict_total:8.2f} |")
    print(
        f"\ndata loading / model compute = {loading:.2f} s / {med['network (sliding window)']:.2f} s "
        f"= {loading / med['network (sliding window)']:.2f}"
    )
    print(f"read + check / bare nibabel read = {med['read + check'] / med['bare nibabel read (reference)']:.2f}")
    if not args.skip_e2e:
        ckpt = Path(args.ckpt) if args.ckpt else write_checkpoint(cfg, Path(tmp.name) / "default.ckpt")
        end_to_end(root, ckpt, args.repeats)
    tmp.cleanup()


if __name__ == "__main__":
    main()

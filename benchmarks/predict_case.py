"""Time the prediction of one ISLES-sized case, stage by stage, against data loading and model compute.

The case has real ISLES'24 geometry (512x586x74 voxels of 0.38x0.38x2 mm, LAS, oblique; the header of
shared/data/real's sub-stroke0014 mask when present) and maps resampled from a phantom case. The model
is the default config's network (``--ckpt`` to time a trained one; the compute is the same).

    python benchmarks/predict_case.py [--ckpt PATH] [--repeats 2]

Prints a table of seconds per stage and two ratios measured in the same run:
data loading (read + check + preprocess + back to native + write) over model compute (sliding-window
network), and our read + check over a bare ``nibabel`` read of the same files (the I/O floor).
"""

from __future__ import annotations

import argparse
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train")
    if args.ckpt:
        predictor = ModelPredictor.from_checkpoint(args.ckpt, device="cpu")
    else:
        predictor = ModelPredictor(instantiate(cfg.model), Preprocessing.from_config(cfg.data.preprocess), device="cpu")
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_isles_case(root)
        print(f"wrote an ISLES-sized case in {time.perf_counter() - t:.1f} s")
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
            write_mask(native >= 0.5, loaded.reference, root / "pred.nii.gz")
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


if __name__ == "__main__":
    main()

"""Prediction of a case with a trained network, back in the case's native geometry.

A checkpoint is self-contained: besides the weights it stores the network config, the input modality
list, the preprocessing and the inference settings (see ``train``), so ``predict.py ckpt=...`` needs no
other config. The prediction is made on the preprocessed grid with Gaussian-weighted sliding windows
(optionally mirrored), the probability is resampled linearly onto the native grid and thresholded, and
the mask is written with exactly the reference image's shape and affine (header copied, uint8 0/1).

A regression checkpoint (e.g. Tmax from the raw CTP) predicts a map in its units instead: 0 outside the
input's brain mask, clipped to the trained value range, resampled linearly to the native grid and written
as float32 with the reference header. Its reference grid is the case's target map when one exists (so the
prediction lies exactly on it), else the input's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from omegaconf import OmegaConf

from strokelab.data.check import load_case
from strokelab.data.layouts import Case, modality_path
from strokelab.data.preprocess import Preprocessing, preprocess_loaded, to_native
from strokelab.errors import CheckpointError
from strokelab.io import save_nifti
from strokelab.nn.sliding_window import infer


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class NetworkPredictor:
    """A trained network plus everything needed to apply it to a case on disk."""

    def __init__(
        self,
        net: torch.nn.Module,
        modalities: list[str],
        prep: Preprocessing,
        inference: dict[str, Any],
        threshold: float = 0.5,
        device: torch.device | str | None = None,
        label: str = "model",
        target: str | None = None,
        value_range: tuple[float, float] | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.target = target  # regression: the predicted map's modality (e.g. tmax); None: segmentation
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.net = net.to(self.device).eval()
        self.modalities, self.prep, self.inference, self.threshold, self.label = (
            list(modalities),
            prep,
            dict(inference),
            threshold,
            label,
        )
        self.timings: dict[str, float] = {}

    def name(self) -> str:
        return self.label

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, net_cfg: Any = None, device: torch.device | str | None = None, inference: dict | None = None
    ) -> NetworkPredictor:
        """Load a strokelab checkpoint. ``net_cfg`` (optional) overrides the network config it stores."""
        from hydra.utils import instantiate

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(path, "checkpoint does not exist", "give ckpt=PATH to a .ckpt written by train.py")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file for the user
            raise CheckpointError(
                path, f"unreadable checkpoint ({type(exc).__name__})", "give a .ckpt written by train.py"
            ) from None
        meta = ckpt.get("strokelab") if isinstance(ckpt, dict) else None
        if not meta or "state_dict" not in ckpt:
            raise CheckpointError(path, "is not a strokelab checkpoint", "give a .ckpt written by train.py")
        cfg = OmegaConf.create(OmegaConf.to_container(net_cfg, resolve=True) if net_cfg is not None else meta["net"])
        net = instantiate(cfg)
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise CheckpointError(
                path,
                f"does not match the model config ({detail[:160]})",
                "use the model config it was trained with, or leave model unset to use the checkpoint's own",
            ) from None
        prep = Preprocessing.from_config(meta["preprocess"])
        settings = {**meta["inference"], **dict(inference or {})}
        return cls(
            net,
            meta["modalities"],
            prep,
            settings,
            meta.get("threshold", 0.5),
            device,
            label=meta.get("name", path.stem),
            target=meta.get("target"),
            value_range=meta.get("value_range"),
        )

    @property
    def task(self) -> str:
        return "segmentation" if self.target is None else "regression"

    @torch.no_grad()
    def predict_case(self, case: Case) -> tuple[np.ndarray, nib.Nifti1Image]:
        """Lesion probability (or the regression map) in the case's native grid, and the grid's reference image."""
        t0 = time.perf_counter()
        images = {m: case.images.get(m) or modality_path(case.root, case.id, m) for m in self.modalities}
        target = None
        if self.target is not None:
            target_path = case.images.get(self.target) or modality_path(case.root, case.id, self.target)
            if Path(target_path).exists():  # read for its grid only: the prediction goes onto it
                target, images = self.target, {self.target: target_path, **images}
        loaded = load_case(
            Case(case.id, case.root, images, None), self.prep.nan_policy, self.prep.affine_tol_mm, self.prep.max_missing_frames
        )
        entry = preprocess_loaded(loaded, self.prep, target)
        t1 = time.perf_counter()
        x = entry["image"][None].to(self.device)
        cfg = self.inference
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda" and cfg.get("bf16", True)):
            logits = infer(self.net, x, cfg)
        if self.target is None:
            prob = torch.sigmoid(logits.float())[0, 0].cpu().numpy()
        else:
            values = logits.float()[0, 0].cpu()
            if entry.get("brain") is not None:
                values = values * entry["brain"][0]
            if self.value_range is not None:
                values = values.clamp(*self.value_range)
            prob = values.numpy()
        t2 = time.perf_counter()
        native = to_native(prob, entry["affine"], entry["native_shape"], entry["native_affine"])
        t3 = time.perf_counter()
        self.timings = {"load_preprocess_s": t1 - t0, "network_s": t2 - t1, "to_native_s": t3 - t2}
        return native, loaded.reference


def mask_image(mask: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """A uint8 0/1 image with exactly the reference's shape, affine (sform and qform) and header."""
    if mask.shape != reference.shape[:3]:
        raise ValueError(f"mask shape {mask.shape} differs from reference {reference.shape[:3]}")
    header = reference.header.copy()
    header.set_data_shape(mask.shape)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 1
    img = nib.Nifti1Image(mask.astype(np.uint8), None, header=header)
    return img


def write_mask(mask: np.ndarray, reference: nib.Nifti1Image, path: str | Path) -> Path:
    save_nifti(mask_image(mask, reference), path)
    return Path(path)

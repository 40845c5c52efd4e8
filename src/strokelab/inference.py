"""Prediction of a case with a trained model, back in the case's native geometry.

A checkpoint is self-contained: besides the weights it stores the whole model config (networks, inputs,
targets, outputs, losses, inference settings) and the preprocessing (see ``train.checkpoint_meta``), so
``predict.py ckpt=...`` rebuilds any model family from it alone (:meth:`ModelPredictor.from_checkpoint`).
The prediction is made on the preprocessed grid with Gaussian-weighted sliding windows (optionally mirrored;
slice by slice for a 2D model), and every declared output is resampled linearly onto the native grid:

* ``mask``: the lesion probability, thresholded by the caller and written as uint8 0/1 with exactly the
  reference image's shape and affine (header copied);
* ``map`` / ``image``: values in their units (0 outside the input's brain, clipped to the trained value range),
  written as float32 with the reference header. The reference grid of a map output is the case's own map of
  that name when one exists (so the prediction lies exactly on it), else the inputs'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from strokelab.data.check import load_case
from strokelab.data.layouts import Case, modality_path
from strokelab.data.preprocess import Preprocessing, Serve, preprocess_loaded, to_native
from strokelab.errors import CheckpointError, DataError
from strokelab.io import save_nifti
from strokelab.models.base import Model, OutputSpec

CHECKPOINT_FORMAT = 2  # 2: the whole model config (strokelab.models); 1 (before): one network config


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Prediction:
    """Every output of one case on its native grid (mask outputs as probabilities), and the grid's image."""

    outputs: dict[str, np.ndarray]
    specs: dict[str, OutputSpec]
    reference: nib.Nifti1Image
    images: dict[str, np.ndarray] | None = None  # the inputs as read (native grid), for previews without re-reading

    @property
    def mask(self) -> np.ndarray | None:
        return next((self.outputs[n] for n, s in self.specs.items() if s.kind == "mask"), None)


def case_image_path(case: Case, modality: str) -> Path:
    return Path(case.images.get(modality) or modality_path(case.root, case.id, modality))


class ModelPredictor:
    """A trained model plus everything needed to apply it to a case on disk."""

    def __init__(
        self,
        model: Model,
        prep: Preprocessing,
        device: torch.device | str | None = None,
        label: str = "model",
        inference: dict | None = None,
        weight_map: dict | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.model.inference.update(dict(inference or {}))
        self.prep, self.label = prep, label
        self.weight_map = weight_map
        self.threshold = model.threshold
        self.timings: dict[str, float] = {}
        self._reader = None  # the prefetch thread (prefetch), started on first use
        self._prefetched = None  # (case key, Future of _load): the case read in the background
        self._queued = None  # the case to read once predict_case has read its own

    @property
    def modalities(self) -> list[str]:
        """The files the model reads (a derived input such as ``ctp_mip`` reads its source, the CTP)."""
        from strokelab.data.layouts import source_modalities

        return source_modalities(self.model.inputs)

    @property
    def specs(self) -> dict[str, OutputSpec]:
        return dict(self.model.outputs)

    def name(self) -> str:
        return self.label

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: torch.device | str | None = None, inference: dict | None = None
    ) -> ModelPredictor:
        """Rebuild the model a strokelab checkpoint stores and load its weights; one-line errors otherwise."""
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        meta, state = read_checkpoint(path)
        try:
            model = instantiate(OmegaConf.create(meta["model"]))
        except InstantiationException as exc:
            cause = exc.__cause__ or exc
            detail = " ".join(str(cause).split())[:200]
            raise CheckpointError(
                path,
                f"its model config does not build here ({type(cause).__name__}: {detail})",
                "use the strokelab version that wrote it",
            ) from None
        if not isinstance(model, Model):
            raise CheckpointError(path, f"its model config builds a {type(model).__name__}, not a strokelab model", "retrain")
        weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise CheckpointError(
                path, f"weights do not match its model config ({detail[:160]})", "the file is damaged"
            ) from None
        return cls(
            model,
            Preprocessing.from_config(meta["preprocess"]),
            device,
            label=meta.get("name", Path(path).stem),
            inference=inference,
            weight_map=meta.get("weight_map"),
        )

    def prefetch(self, case: Case) -> None:
        """Read and check ``case``'s inputs in a background thread once the current (or next)
        :meth:`predict_case` has read its own, so that they are read while the network runs (``predict.py``
        passes the next case; decompression and the network release the GIL). A later predict_case of that
        case uses them and raises their errors; a prefetched case that is never predicted is dropped."""
        self._queued = case

    def _start_queued(self, current: tuple) -> None:
        from concurrent.futures import ThreadPoolExecutor

        case, self._queued = self._queued, None
        if case is None or self._key(case) == current:
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strokelab-prefetch")
        self._prefetched = (self._key(case), self._reader.submit(self._load, case))

    def close(self) -> None:
        """Stop the prefetch thread (a read in progress is finished and dropped)."""
        self._queued = None
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader, self._prefetched = None, None

    @staticmethod
    def _key(case: Case) -> tuple:
        return case.id, tuple(sorted((m, str(p)) for m, p in case.images.items()))

    def _load(self, case: Case) -> tuple[Any, list[str]]:
        """The case's inputs (and the reference map of a map output), read and checked: (LoadedCase, on_grid)."""
        model = self.model
        missing = [m for m in self.modalities if not case_image_path(case, m).exists()]
        if missing:
            raise DataError(
                case_image_path(case, missing[0]),
                f"case {case.id} lacks the input(s) {missing} that this model reads ({', '.join(model.inputs)})",
                "add the file(s), or use a model trained on what the case has",
            )
        images = {m: case_image_path(case, m) for m in self.modalities}
        # A map output is put on the grid of the case's own map of that name when there is one.
        on_grid = [
            s.reference
            for s in model.outputs.values()
            if s.kind == "map" and s.reference and s.reference not in model.inputs and case_image_path(case, s.reference).exists()
        ]
        if on_grid:
            images = {on_grid[0]: case_image_path(case, on_grid[0]), **images}
        loaded = load_case(
            Case(case.id, case.root, images, None), self.prep.nan_policy, self.prep.affine_tol_mm, self.prep.max_missing_frames
        )
        return loaded, on_grid

    @torch.no_grad()
    def predict_case(self, case: Case) -> Prediction:
        """Every declared output of ``case`` in its native grid (see the module docstring)."""
        t0 = time.perf_counter()
        model = self.model
        pending, self._prefetched, key = self._prefetched, None, self._key(case)
        if pending is not None and pending[0] == key:
            loaded, on_grid = pending[1].result()
        else:
            loaded, on_grid = self._load(case)
        self._start_queued(key)
        serve = Serve.make(model.inputs, on_grid[:1], self.weight_map, per_slice=model.spatial_dims == 2)
        entry = preprocess_loaded(loaded, self.prep, serve)
        t1 = time.perf_counter()
        volumes = {m: entry["images"][m][None].to(self.device) for m in model.inputs}
        if "brain" in entry["images"]:
            volumes["brain"] = entry["images"]["brain"][None].to(self.device)
        bf16 = self.device.type == "cuda" and model.inference.get("bf16", True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            preds = model.predict_volume(volumes)
        grids = {}
        for n, spec in model.outputs.items():
            values = preds[n].float()[0, 0]
            grids[n] = (torch.sigmoid(values) if spec.kind == "mask" else values).cpu().numpy()
        t2 = time.perf_counter()
        native = {n: to_native(v, entry["affine"], entry["native_shape"], entry["native_affine"]) for n, v in grids.items()}
        t3 = time.perf_counter()
        self.timings = {"load_preprocess_s": t1 - t0, "network_s": t2 - t1, "to_native_s": t3 - t2}
        return Prediction(native, dict(model.outputs), loaded.reference, loaded.images)


def load_checkpoint(path: str | Path) -> Any:
    """What a checkpoint file holds, loaded weights-only (tensors and plain types: no object in it is built and
    no code in it runs), on the CPU. train.py writes nothing else (``checkpoint_meta`` is plain data), so a file
    that needs more is not ours: it is refused, as are unreadable files, with one-line CheckpointErrors."""
    from strokelab.data.cache import unsafe_reason

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file for the user
        reason = unsafe_reason(exc)
        if reason is not None:
            raise CheckpointError(
                path,
                f"would run code when loaded (weights-only loading refused it: {reason})",
                "only open checkpoints you trust; retrain with train.py to get one that loads safely",
            ) from None
        raise CheckpointError(path, f"unreadable checkpoint ({type(exc).__name__})", "give a .ckpt written by train.py") from None


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(strokelab metadata, state dict) of a checkpoint written by train.py, loaded weights-only (see
    :func:`load_checkpoint`); one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint does not exist", "give ckpt=PATH to a .ckpt written by train.py")
    ckpt = load_checkpoint(path)
    meta = ckpt.get("strokelab") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or not meta or "state_dict" not in ckpt:
        raise CheckpointError(path, "is not a strokelab checkpoint", "give a .ckpt written by train.py")
    if meta.get("format", 1) != CHECKPOINT_FORMAT or "model" not in meta:
        raise CheckpointError(
            path,
            f"was written in checkpoint format {meta.get('format', 1)}; this strokelab reads format {CHECKPOINT_FORMAT}",
            "retrain with this version (format 2 stores the whole model config)",
        )
    return meta, ckpt["state_dict"]


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

"""Lightning DataModule: cases -> checks -> cached preprocessing -> TorchIO subjects -> loaders.

The data side serves what the model declares, by name (``inputs`` and ``targets``, see
``strokelab.models``): each input modality, the lesion ``label``, a regression target map (``tmax``), Wang
et al.'s ``weight_map``, and the ``brain`` mask when skull-stripped, each a TorchIO image named after it.

Folds: fold ``fold`` is held out for testing and nothing else (``train.py`` predicts and scores it in native
geometry after training). Validation -- the choice of the best checkpoint and of hyperparameters in sweeps --
comes from the training folds: ``val_fold`` (an inner fold of the training cases) or, when it is None, a
share ``val_fraction`` of them; either way stratified like the folds (by NIHSS, deterministic), so the held-out
fold never decides anything.

Training draws patches from a TorchIO ``Queue`` with a ``LabelSampler`` (lesion-aware: patch centres fall in
the lesion with the configured odds, as nnU-Net oversamples foreground; ``sampler: brain`` centres patches
in the skull-stripped brain, ``uniform`` anywhere); in 2D slice mode (``spatial_dims: 2``) the patches are
axial slices (``patch_size`` [X, Y]), drawn the same lesion-aware way. Validation uses whole preprocessed
volumes (the task runs sliding-window inference on them, slice by slice in 2D).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchio as tio

from strokelab.data.folds import ensure_fold_file, lesion_volume_ml, read_fold_file, stratified_folds
from strokelab.data.layouts import TIME_SERIES, Case, discover, resolve_input
from strokelab.data.preprocess import Preprocessing, Serve, cache_cases, prepare_cases
from strokelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)
MASKS = frozenset({"label", "brain"})  # served as label maps (nearest-neighbour under spatial transforms)


def make_subject(entry: dict[str, Any], min_shape: Sequence[int] | None = None) -> tio.Subject:
    """A TorchIO subject with one image per served name (inputs, targets, brain) on the cached grid.

    With ``min_shape``, volumes smaller than a training patch are zero-padded at their far end (the
    affine's origin is unchanged by padding there).
    """
    affine = entry["affine"]
    volumes = dict(entry["images"])
    if min_shape is not None:
        shape = next(iter(volumes.values())).shape[1:]
        pad = [max(int(m) - s, 0) for m, s in zip(min_shape, shape)]
        if any(pad):
            spec = (0, pad[2], 0, pad[1], 0, pad[0])
            volumes = {k: torch.nn.functional.pad(v, spec) for k, v in volumes.items()}
    fields: dict[str, Any] = {
        name: (tio.LabelMap if name in MASKS else tio.ScalarImage)(tensor=v, affine=affine) for name, v in volumes.items()
    }
    fields["case"] = entry["case"]
    return tio.Subject(fields)


def validation_split(cases: list[Case], val_fold: int | None, val_fraction: float, n_folds: int, seed: int) -> set[str]:
    """Ids of the validation cases among ``cases`` (the training folds): inner fold ``val_fold`` of
    ``n_folds - 1`` stratified inner folds, or inner fold 0 of ``round(1 / val_fraction)`` of them. Stratified like
    the folds: by NIHSS, or by lesion volume where there is no clinical table (ISLES'18)."""
    if val_fold is None:
        if not 0 < val_fraction < 1:
            raise ConfigError("data.val_fraction", f"is {val_fraction}", "use a share of the training folds, e.g. 0.2")
        n_inner, chosen = max(2, round(1.0 / val_fraction)), 0
    else:
        n_inner, chosen = n_folds - 1, int(val_fold)
        if not 0 <= chosen < n_inner:
            raise ConfigError("data.val_fold", f"{chosen} is not in 0..{n_inner - 1}", "pick an inner fold of the training folds")
    if len(cases) < n_inner:
        raise DataError(
            None, f"{len(cases)} training cases cannot give {n_inner} inner folds", "add cases or lower data.val_fraction"
        )
    strata = {c.id: c.clinical.get("nihss_admission") for c in cases}
    if all(v is None for v in strata.values()) and all(c.label is not None and Path(c.label).exists() for c in cases):
        strata = {c.id: lesion_volume_ml(c.label) for c in cases}  # ISLES'18 has no clinical table: by lesion volume
    inner = stratified_folds(strata, n_inner, seed + 1)
    return {cid for cid, f in inner.items() if f == chosen}


class StrokeDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str,
        modalities: Sequence[str],
        inputs: Sequence[str] | None = None,
        targets: Sequence[str] = ("label",),
        spatial_dims: int = 3,
        preprocess: dict | None = None,
        weight_map: dict | None = None,
        fold: int = 0,
        fold_file: str | None = None,
        n_folds: int = 5,
        fold_seed: int = 0,
        val_fold: int | None = None,
        val_fraction: float = 0.2,
        cache_dir: str | None = "data/cache",
        patch_size: Sequence[int] = (64, 64, 16),
        batch_size: int = 4,
        samples_per_volume: int = 8,
        queue_length: int = 96,
        sampler: str = "label",
        label_probabilities: dict | None = None,
        augment: Sequence[tio.Transform] | None = None,
        num_workers: int = 0,
        prepare_workers: int = 1,
        phantom: dict | None = None,
    ):
        """``modalities``: the data set's default input list (``data.modalities``); ``inputs``/``targets``/
        ``spatial_dims``: what the model declares (``train.py`` passes them; ``inputs`` defaults to
        ``modalities``)."""
        super().__init__()
        self.root = Path(root)
        self.spatial_dims = int(spatial_dims)
        if self.spatial_dims not in (2, 3):
            raise ConfigError("model.spatial_dims", f"is {spatial_dims}", "use 2 (axial slices) or 3")
        self.serve = Serve.make(
            list(modalities) if inputs is None else list(inputs), targets, weight_map, per_slice=self.spatial_dims == 2
        )
        self.modalities = list(self.serve.inputs)
        self.targets = list(self.serve.targets)
        self.prep = Preprocessing.from_config(preprocess)
        series = [m for m in self.modalities if m in TIME_SERIES]
        if series and self.prep.frames is None:
            raise ConfigError("data.preprocess.frames", f"is not set but '{series[0]}' is a 4D series", "set e.g. frames: 32")
        self.fold, self.n_folds, self.fold_seed = int(fold), int(n_folds), int(fold_seed)
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError("data.fold", f"{self.fold} is not in 0..{self.n_folds - 1}", "pick a held-out fold")
        self.val_fold, self.val_fraction = val_fold, float(val_fraction)
        self.fold_file = fold_file
        self.cache_dir = cache_dir
        patch = [int(p) for p in patch_size]
        if self.spatial_dims == 2 and len(patch) == 3:
            patch = patch[:2]  # 2D slice mode: the in-plane part of a 3D patch size (axial X x Y slices)
        if len(patch) != self.spatial_dims:
            raise ConfigError(
                "data.patch_size",
                f"{patch} has {len(patch)} entries but the model is {self.spatial_dims}D",
                "give [X, Y] for 2D slice mode, [X, Y, Z] for 3D",
            )
        self.patch_size = tuple(patch) + ((1,) if self.spatial_dims == 2 else ())  # what the sampler draws
        self.batch_size, self.samples_per_volume, self.queue_length = batch_size, samples_per_volume, queue_length
        if sampler not in {"label", "uniform", "brain"}:
            raise ConfigError("data.sampler", f"'{sampler}' is not label, uniform or brain", "pick a patch sampler")
        if sampler == "label" and "label" not in self.targets:
            raise ConfigError("data.sampler", "'label' needs lesion masks; this model reads none", "use brain or uniform")
        self.sampler = sampler
        self.label_probabilities = {int(k): float(v) for k, v in (label_probabilities or {0: 1, 1: 2}).items()}
        self.augment = tio.Compose(list(augment)) if augment else None
        self.num_workers, self.prepare_workers = num_workers, prepare_workers
        self.phantom = dict(phantom) if phantom else None
        self.train_cases: list[Case] = []
        self.val_cases: list[Case] = []
        self.test_cases: list[Case] = []
        self.train_subjects: list[tio.Subject] = []
        self.val_subjects: list[tio.Subject] = []

    # -- cases and folds ------------------------------------------------------------------
    def ensure_data(self) -> None:
        """Generate the phantom data set when configured and missing or made by another generator/config."""
        from strokelab.data.phantom import PhantomConfig, generate, is_current

        if self.phantom and not is_current(self.root, self.phantom):
            log.info("generating the phantom data set at %s", self.root)
            generate(self.root, PhantomConfig(**self.phantom), workers=self.prepare_workers)
        if not self.root.exists():
            raise DataError(
                self.root, "data root does not exist", "set paths.data_dir (or data.root) to an ISLES'24 or ISLES'18 data set"
            )

    def folds(self) -> dict[str, int]:
        path = Path(self.fold_file) if self.fold_file else ensure_fold_file(self.root, self.n_folds, self.fold_seed)
        folds = read_fold_file(path, self.root)
        bad = sorted({f for f in folds.values() if not 0 <= f < self.n_folds})
        if bad:
            raise DataError(path, f"has fold numbers {bad} outside 0..{self.n_folds - 1}", "fix the file or data.n_folds")
        return folds

    def split(self) -> tuple[list[Case], list[Case], list[Case]]:
        """(training, validation, held-out test) cases: validation from the training folds, never the held-out one."""
        root, _ = resolve_input(self.root)
        folds = self.folds()
        cases = discover(root, self.serve.modalities, with_label=self.serve.needs_label, ids=sorted(folds))
        for case in cases:
            case.fold = folds[case.id]
        pool = [c for c in cases if c.fold != self.fold]
        test = [c for c in cases if c.fold == self.fold]
        if not pool or not test:
            raise DataError(
                root, f"fold {self.fold} leaves {len(pool)} training and {len(test)} held-out cases", "check the fold file"
            )
        val_ids = validation_split(pool, self.val_fold, self.val_fraction, self.n_folds, self.fold_seed)
        train = [c for c in pool if c.id not in val_ids]
        val = [c for c in pool if c.id in val_ids]
        if not train or not val:
            raise DataError(
                root, f"{len(train)} training and {len(val)} validation cases", "add cases or change data.val_fraction"
            )
        return train, val, test

    def describe_validation(self) -> str:
        """Where checkpoints (and sweep objectives) are chosen, for the closing table."""
        how = f"inner fold {self.val_fold}" if self.val_fold is not None else f"a {self.val_fraction:.0%} stratified share"
        return f"{len(self.val_cases)} validation cases ({how} of the training folds; fold {self.fold} held out)"

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Rank 0 only: generate data if needed, check and cache every training and validation case once."""
        self.ensure_data()
        train, val, _ = self.split()
        cache_cases(train + val, self.prep, self.cache_dir, self.prepare_workers, self.serve)

    def setup(self, stage: str | None = None) -> None:
        if self.train_cases:
            return
        self.train_cases, self.val_cases, self.test_cases = self.split()
        cases = self.train_cases + self.val_cases
        entries = prepare_cases(cases, self.prep, self.cache_dir, self.prepare_workers, self.serve)
        n = len(self.train_cases)
        self.train_subjects = [make_subject(e, self.patch_size) for e in entries[:n]]
        self.val_subjects = [make_subject(e) for e in entries[n:]]
        log.info(
            "fold %d held out (%d cases); training on %d cases, validating on %d",
            self.fold,
            len(self.test_cases),
            n,
            len(self.val_subjects),
        )

    def train_dataloader(self):
        dataset = tio.SubjectsDataset(self.train_subjects, transform=self.augment)
        if self.sampler == "label":
            sampler = tio.LabelSampler(self.patch_size, label_name="label", label_probabilities=self.label_probabilities)
        elif self.sampler == "brain":
            if "brain" not in self.train_subjects[0]:
                raise ConfigError(
                    "data.sampler", "'brain' needs a brain mask", "set data.preprocess.skull_strip, or sampler=uniform"
                )
            sampler = tio.LabelSampler(self.patch_size, label_name="brain", label_probabilities={0: 0, 1: 1})
        else:
            sampler = tio.UniformSampler(self.patch_size)
        # Under DDP each rank draws patches from its own shard of the subjects (trainer=ddp disables
        # Lightning's sampler replacement for this reason).
        distributed = self.trainer is not None and self.trainer.world_size > 1
        subject_sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True) if distributed else None
        self.subject_sampler = subject_sampler  # reshuffled every epoch (set_epoch, called by the task)
        queue = tio.Queue(
            dataset,
            max_length=max(self.queue_length, self.batch_size),
            samples_per_volume=self.samples_per_volume,
            sampler=sampler,
            num_workers=self.num_workers,
            shuffle_subjects=subject_sampler is None,
            shuffle_patches=True,
            subject_sampler=subject_sampler,
        )
        return tio.SubjectsLoader(queue, batch_size=self.batch_size, num_workers=0)

    def set_epoch(self, epoch: int) -> None:
        """Under DDP, a new shuffle of the subjects over the ranks for this epoch (DistributedSampler's
        ``set_epoch``: each rank draws from another share of the subjects every epoch, the same on every rank)."""
        if getattr(self, "subject_sampler", None) is not None:
            self.subject_sampler.set_epoch(epoch)

    def val_dataloader(self):
        return tio.SubjectsLoader(tio.SubjectsDataset(self.val_subjects), batch_size=1, num_workers=0)

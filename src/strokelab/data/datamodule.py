"""Lightning DataModule: cases -> checks -> cached preprocessing -> TorchIO subjects -> loaders.

Training draws patches from a TorchIO ``Queue`` with a ``LabelSampler`` (lesion-aware: patch centres
fall in the lesion with the configured odds, as nnU-Net oversamples foreground; ``sampler: brain`` centres
patches in the skull-stripped brain, ``uniform`` anywhere); validation and test use whole preprocessed
volumes (the task runs sliding-window inference on them). Fold ``fold`` is held out for validation and
testing; the other folds train.

Segmentation reads the follow-up lesion mask as the label. With ``target`` set (e.g. ``tmax``) the data
set serves a regression task instead: the target map is read from the case like an input modality and
becomes the subject's ``target`` image; no lesion mask is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchio as tio

from strokelab.data.folds import ensure_fold_file, read_fold_file
from strokelab.data.layouts import TIME_SERIES, Case, discover, resolve_input
from strokelab.data.preprocess import Preprocessing, cache_cases, prepare_cases
from strokelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def make_subject(entry: dict[str, Any], min_shape: Sequence[int] | None = None) -> tio.Subject:
    """A TorchIO subject with one image per modality (named after it) and the label, on the cached grid.

    With ``min_shape``, volumes smaller than a training patch are zero-padded at their far end (the
    affine's origin is unchanged by padding there).
    """
    affine = entry["affine"]
    volumes = {k: entry.get(k) for k in ("image", "label", "target", "brain")}
    if min_shape is not None:
        pad = [max(int(m) - s, 0) for m, s in zip(min_shape, volumes["image"].shape[1:])]
        if any(pad):
            spec = (0, pad[2], 0, pad[1], 0, pad[0])
            volumes = {k: None if v is None else torch.nn.functional.pad(v, spec) for k, v in volumes.items()}
    fields: dict[str, Any] = {}
    start = 0
    for m in entry["modalities"]:
        n = entry.get("channels", {}).get(m, 1)
        fields[m] = tio.ScalarImage(tensor=volumes["image"][start : start + n], affine=affine)
        start += n
    if volumes["label"] is not None:
        fields["label"] = tio.LabelMap(tensor=volumes["label"], affine=affine)
    if volumes["target"] is not None:
        fields["target"] = tio.ScalarImage(tensor=volumes["target"], affine=affine)
    if volumes["brain"] is not None:
        fields["brain"] = tio.LabelMap(tensor=volumes["brain"], affine=affine)
    fields["case"] = entry["case"]
    return tio.Subject(fields)


class StrokeDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str,
        modalities: Sequence[str],
        target: str | None = None,
        preprocess: dict | None = None,
        fold: int = 0,
        fold_file: str | None = None,
        n_folds: int = 5,
        fold_seed: int = 0,
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
        super().__init__()
        self.root = Path(root)
        self.modalities = list(modalities)
        if not self.modalities:
            raise ConfigError("data.modalities", "is empty", "list the input modalities, e.g. [cbf, cbv, mtt, tmax]")
        self.target = target
        if target is not None and target in self.modalities:
            raise ConfigError("data.target", f"'{target}' is also an input modality", "drop it from data.modalities")
        self.prep = Preprocessing.from_config(preprocess)
        series = [m for m in self.modalities if m in TIME_SERIES]
        if series and self.prep.frames is None:
            raise ConfigError("data.preprocess.frames", f"is not set but '{series[0]}' is a 4D series", "set e.g. frames: 32")
        self.fold, self.n_folds, self.fold_seed = int(fold), int(n_folds), int(fold_seed)
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError("data.fold", f"{self.fold} is not in 0..{self.n_folds - 1}", "pick a held-out fold")
        self.fold_file = fold_file
        self.cache_dir = cache_dir
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size, self.samples_per_volume, self.queue_length = batch_size, samples_per_volume, queue_length
        if sampler not in {"label", "uniform", "brain"}:
            raise ConfigError("data.sampler", f"'{sampler}' is not label, uniform or brain", "pick a patch sampler")
        if sampler == "label" and target is not None:
            raise ConfigError(
                "data.sampler", "'label' needs lesion masks; a regression data set has none", "use brain or uniform"
            )
        self.sampler = sampler
        self.label_probabilities = {int(k): float(v) for k, v in (label_probabilities or {0: 1, 1: 2}).items()}
        self.augment = tio.Compose(list(augment)) if augment else None
        self.num_workers, self.prepare_workers = num_workers, prepare_workers
        self.phantom = dict(phantom) if phantom else None
        self.train_cases: list[Case] = []
        self.test_cases: list[Case] = []

    # -- cases and folds ------------------------------------------------------------------
    def ensure_data(self) -> None:
        """Generate the phantom data set when configured and missing or made by another generator/config."""
        from strokelab.data.phantom import PhantomConfig, generate, is_current

        if self.phantom and not is_current(self.root, self.phantom):
            log.info("generating the phantom data set at %s", self.root)
            generate(self.root, PhantomConfig(**self.phantom), workers=self.prepare_workers)
        if not self.root.exists():
            raise DataError(self.root, "data root does not exist", "set paths.data_dir (or data.root) to an ISLES'24 data set")

    def folds(self) -> dict[str, int]:
        path = Path(self.fold_file) if self.fold_file else ensure_fold_file(self.root, self.n_folds, self.fold_seed)
        folds = read_fold_file(path, self.root)
        bad = sorted({f for f in folds.values() if not 0 <= f < self.n_folds})
        if bad:
            raise DataError(path, f"has fold numbers {bad} outside 0..{self.n_folds - 1}", "fix the file or data.n_folds")
        return folds

    def split(self) -> tuple[list[Case], list[Case]]:
        root, _ = resolve_input(self.root)
        folds = self.folds()
        wanted = self.modalities + ([self.target] if self.target else [])
        cases = discover(root, wanted, with_label=self.target is None, ids=sorted(folds))
        for case in cases:
            case.fold = folds[case.id]
        train = [c for c in cases if c.fold != self.fold]
        test = [c for c in cases if c.fold == self.fold]
        if not train or not test:
            raise DataError(
                root, f"fold {self.fold} leaves {len(train)} training and {len(test)} held-out cases", "check the fold file"
            )
        return train, test

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Rank 0 only: generate data if needed, check and cache every case once."""
        self.ensure_data()
        train, test = self.split()
        cache_cases(train + test, self.prep, self.cache_dir, self.prepare_workers, self.target)

    def setup(self, stage: str | None = None) -> None:
        if self.train_cases:
            return
        self.train_cases, self.test_cases = self.split()
        entries = prepare_cases(self.train_cases + self.test_cases, self.prep, self.cache_dir, self.prepare_workers, self.target)
        n = len(self.train_cases)
        self.train_subjects = [make_subject(e, self.patch_size) for e in entries[:n]]
        self.test_subjects = [make_subject(e) for e in entries[n:]]
        log.info("fold %d: %d training cases, %d held-out cases", self.fold, n, len(self.test_subjects))

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

    def val_dataloader(self):
        return tio.SubjectsLoader(tio.SubjectsDataset(self.test_subjects), batch_size=1, num_workers=0)

    def test_dataloader(self):
        return self.val_dataloader()

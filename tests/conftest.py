"""Shared fixtures: tiny ISLES'24-layout data sets written on the fly, and the real sample masks."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"
REAL_ISLES24_MASK = REAL / "isles24/derivatives/sub-stroke0014/ses-02/sub-stroke0014_ses-02_lesion-msk.nii.gz"

MAPS = ("cbf", "cbv", "mtt", "tmax")


def oblique_affine(spacing=(2.0, 2.0, 5.0), tilt_deg=15.0, shape=(32, 36, 10)) -> np.ndarray:
    t = np.deg2rad(tilt_deg)
    rot = np.array([[-1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])  # LAS-like, tilted
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2)
    return affine


def write_case(
    root: Path, cid: str, shape=(32, 36, 10), affine=None, nihss=10, seed=0, label_naming="space-ncct", lesion=True
) -> None:
    """A synthetic case: brain ellipsoid with maps, a hypoperfused blob and its lesion mask."""
    rng = np.random.default_rng(seed)
    affine = oblique_affine(shape=shape) if affine is None else affine
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    centre = rng.uniform(-0.3, 0.3, 3)
    blob = ((grid - centre[:, None, None, None]) ** 2).sum(0) < 0.12
    mask = blob & brain if lesion else np.zeros(shape, bool)
    cbf = np.where(brain, 50 + rng.normal(0, 3, shape), 0) * np.where(mask, 0.2, 1.0)
    tmax = np.where(brain, np.where(mask, 10.0, 1.0) + rng.normal(0, 0.3, shape).clip(-0.9, 0.9), 0)
    cbv = np.where(brain, 4.0, 0) * np.where(mask, 0.5, 1.0)
    mtt = np.where(brain, 60 * cbv / np.maximum(cbf, 1e-3), 0)
    ses1 = root / "derivatives" / cid / "ses-01" / "perfusion-maps"
    ses1.mkdir(parents=True, exist_ok=True)
    for name, data in zip(MAPS, (cbf, cbv, mtt, tmax)):
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), ses1 / f"{cid}_ses-01_space-ncct_{name}.nii.gz")
    ses2 = root / "derivatives" / cid / "ses-02"
    ses2.mkdir(parents=True, exist_ok=True)
    tag = "space-ncct_" if label_naming == "space-ncct" else ""
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), ses2 / f"{cid}_ses-02_{tag}lesion-msk.nii.gz")
    pheno = root / "phenotype" / cid / "ses-01"
    pheno.mkdir(parents=True, exist_ok=True)
    (pheno / f"{cid}_ses-01_demographic_baseline.csv").write_text(
        f"Age,Sex,NIHSS at admission,Centre\n70,F,{nihss},C{seed % 2}\n"
    )


@pytest.fixture
def single_thread():
    """One intra-op thread for tiny-tensor tests: on a shared 2-core CPU, thread hand-off dominates
    microsecond-sized kernels and makes such tests up to 10x slower and erratic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """Ten small synthetic cases in the ISLES'24 layout."""
    root = tmp_path / "isles"
    for i in range(10):
        write_case(root, f"sub-stroke{i + 1:04d}", nihss=i * 2, seed=i, label_naming="space-ncct" if i % 3 else "plain")
    return root


def write_ctp(root: Path, cid: str, frames: int = 16, dt: float = 2.0, affine=None, missing: tuple[int, ...] = ()) -> Path:
    """A 4D CTP (HU, time last) for a case written by ``write_case``: a bright skull ring, and in the brain a
    gamma-variate bolus that arrives later where the case's Tmax map is larger. ``missing`` frames are NaN."""
    ses1 = root / "derivatives" / cid / "ses-01"
    tmax_img = nib.load(ses1 / "perfusion-maps" / f"{cid}_ses-01_space-ncct_tmax.nii.gz")
    tmax = np.asarray(tmax_img.dataobj, dtype=np.float32)
    shape = tmax.shape
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = tmax != 0
    hu = np.where(brain, 35.0, np.where(radius < 1.0, 1000.0, np.where(radius < 1.15, 30.0, -1000.0)))
    t = np.arange(frames) * dt
    shift = np.clip(t[None, None, None, :] - 4.0 - tmax[..., None], 0, None)
    bolus = 40.0 * (shift / 4.0) ** 2 * np.exp(2.0 - shift / 2.0)
    series = (hu[..., None] + np.where(brain[..., None], bolus, 0.0)).astype(np.float32)
    for m in missing:
        series[..., m] = np.nan
    affine = tmax_img.affine if affine is None else affine
    img = nib.Nifti1Image(series, affine)
    img.header.set_zooms((*np.linalg.norm(affine[:3, :3], axis=0), dt))
    path = ses1 / f"{cid}_ses-01_space-ncct_ctp.nii.gz"
    nib.save(img, path)
    return path


@pytest.fixture
def ctp_root(tiny_root) -> Path:
    """``tiny_root`` with a CTP series per case (the Tmax regression task's input)."""
    for i in range(10):
        write_ctp(tiny_root, f"sub-stroke{i + 1:04d}")
    return tiny_root

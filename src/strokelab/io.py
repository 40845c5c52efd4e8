"""Reading images with clear errors, and writing files atomically (temporary name, then rename).

Nothing the project writes is ever left half-written: an interrupted run leaves either the old file
or no file, never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from strokelab.errors import DataError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the full suffix (.nii.gz) so writers that look at the extension behave.
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_nifti(img: nib.Nifti1Image, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def load_nifti(path: str | Path, expect_3d: bool = True) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load an image fully (a truncated .nii.gz fails here, not later) as float32 data + header.

    Raises DataError naming the file for: missing, unreadable/truncated, wrong dimensionality.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file is missing", "restore it or drop its modality from data.modalities")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(path, f"unreadable or truncated image ({type(exc).__name__})", "re-export or re-download it") from None
    if expect_3d and data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if expect_3d and data.ndim != 3:
        raise DataError(path, f"is {data.ndim}D with shape {data.shape}, expected a 3D volume", "give a 3D image here")
    if not expect_3d and data.ndim != 4:
        raise DataError(path, f"is {data.ndim}D with shape {data.shape}, expected a 4D series (time last)", "give the 4D series")
    return data, img

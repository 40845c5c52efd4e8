"""Reading images with clear errors, and writing files atomically (temporary name, then rename).

Nothing the project writes is ever left half-written: an interrupted run leaves either the old file
or no file, never a truncated one.

Every NIfTI file the platform reads goes through :func:`read_image` (the header only: the data checks'
pre-flight) or :func:`load_nifti` (header, then the voxels); the 4D CTP reader of
:mod:`strokelab.perfusion` uses :func:`read_image` too. A hostile file ends in one :class:`DataError`
naming it, before any voxel is read, never in a traceback and never read as if it were fine:

* the path: a symlink loop, a dangling symlink, no permission, a folder, an empty file, a ``.gz`` name on a
  file that is not gzip-compressed or a gzip-compressed file without the ``.gz`` name, a truncated header;
* the dimensions: ``dim[0]`` outside 1..7, a dimension below 1, another dimensionality than the caller
  expects (a 3D volume, or a 4D series with time last; trailing dimensions of length 1 are dropped);
* the size: more voxels than the file can hold (an uncompressed file must hold ``vox_offset`` plus the
  data; gzip's deflate compresses at most ~1032:1, so a ``.gz`` file cannot expand to more than that) or
  more than :data:`MAX_VOXELS`: this fails fast instead of trying to allocate terabytes;
* the voxel type: only real numbers (integers, floats) are read; complex, RGB/RGBA (structured) and
  1-bit binary voxels are refused (a complex image would otherwise be read as its real part, silently);
* the spacing: ``pixdim`` of every spatial axis must be finite and > 0 (nibabel would set 0 to 1 and
  drop the sign without a word);
* the affine: the one nibabel uses and each form that the header declares (``sform_code`` /
  ``qform_code`` > 0) must be finite and non-singular;
* the scaling: ``scl_slope`` 0 means "no scaling" in the NIfTI-1 standard ("if the scl_slope field is
  nonzero, then each voxel value ... should be scaled"); nibabel, ITK and FSL read such a file unscaled, and
  so does the platform. A NaN or infinite ``scl_slope`` is refused: the standard would scale every voxel to
  NaN, nibabel silently reads it unscaled, so what the writer meant is unknown (nibabel-based writers have
  written NaN for "unset", e.g. fMRIPrep 20.2 masks: re-save such a file with slope 1, intercept 0). A
  non-finite ``scl_inter`` with a real slope is refused too.

NaN or infinite *voxels* are not a header matter: :mod:`strokelab.data.check` refuses them or, with
``nan_policy=replace``, replaces them by 0 with a warning.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from strokelab.errors import DataError

# More voxels than any CT or MR series (an ISLES'24 CTP is ~1e9): a header declaring more is corrupt.
MAX_VOXELS = 2**33
# Deflate (gzip) encodes a 258-byte match in as little as 2 bits, hence at most ~1032:1; the slack covers
# the gzip framing of tiny files.
DEFLATE_MAX_RATIO = 1032
DEFLATE_SLACK_BYTES = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_BYTES = 348
REREAD_FIX = "re-export or re-download it"
MISSING_FIX = "restore it or drop its modality from data.modalities"
SERIES = "a 4D series (time last)"
VOLUME = "a 3D volume"


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


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception on one line (nibabel's messages may span several)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def path_problem(path: str | Path, what: str = "file") -> DataError | None:
    """Why ``path`` cannot be reached, or None when it can (or plainly does not exist: callers say
    "missing" in their own words): a symlink loop, a dangling symlink, no permission on it or a folder
    above it, any other error of the operating system. ``what`` names the thing in the message."""
    path = Path(path)
    try:
        os.stat(path)
        return None
    except OSError as exc:
        code = exc.errno
    if code == errno.ELOOP:
        return DataError(
            path,
            f"{what} cannot be reached: a symlink on its path points back to itself (symlink loop)",
            "replace the link by the file or folder it should point to",
        )
    if code in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return DataError(
                path,
                f"{what} is a dangling symlink (its target {target} does not exist)",
                "restore the target or replace the link",
            )
        return None
    if code in (errno.EACCES, errno.EPERM):
        return DataError(
            path, f"{what} cannot be read (permission denied)", "give read access to it and the folders above it (chmod u+rX)"
        )
    return DataError(path, f"{what} cannot be read ({os.strerror(code or 0)})", "check the file system")


def folder_problem(folder: str | Path, what: str = "folder") -> DataError | None:
    """:func:`path_problem` for a folder, and also a file where the folder should be and a folder that
    cannot be listed (no read or search permission): its files would otherwise look missing, or the folder
    be skipped without a word. None for a usable folder or one that plainly does not exist."""
    folder = Path(folder)
    err = path_problem(folder, what)
    if err is not None or not folder.exists():
        return err
    if not folder.is_dir():
        return DataError(folder, f"{what} is a file, not a folder", "remove it or put the folder in its place")
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
        os.stat(folder / ".")  # search (x) permission: what opening a file inside needs
    except PermissionError:
        return DataError(folder, f"{what} cannot be read (permission denied)", "give read access to it (chmod -R u+rX)")
    except OSError as exc:
        return DataError(folder, f"{what} cannot be read ({_one_line(exc)})", "check the file system")
    return None


def _file_problem(path: Path) -> DataError | None:
    """What is wrong with ``path`` as a file before nibabel opens it (None: go on)."""
    err = path_problem(path)
    if err is not None:
        return err
    if not path.exists():
        return DataError(path, "file is missing", MISSING_FIX)
    if path.is_dir():
        return DataError(path, "is a folder, not an image file", "point to the image file")
    size = path.stat().st_size
    if size == 0:
        return DataError(path, "is an empty file (0 bytes)", REREAD_FIX)
    try:
        with open(path, "rb") as f:
            head = f.read(NIFTI1_HEADER_BYTES)
    except PermissionError:
        return DataError(path, "cannot be read (permission denied)", "give read access to it (chmod u+r)")
    except OSError as exc:
        return DataError(path, f"cannot be read ({_one_line(exc)})", REREAD_FIX)
    gzipped = head[:2] == GZIP_MAGIC
    if path.name.endswith(".gz") and not gzipped:
        return DataError(path, "is named .gz but is not gzip-compressed", "rename it without .gz, or gzip it")
    if gzipped and not path.name.endswith(".gz"):
        return DataError(path, "is gzip-compressed but its name does not end in .gz", "rename it to .nii.gz")
    if not gzipped and path.name.endswith(".nii") and size < NIFTI1_HEADER_BYTES:
        return DataError(path, f"header is truncated ({size} bytes; a NIfTI header has {NIFTI1_HEADER_BYTES})", REREAD_FIX)
    return None


def _raw_header(img: nib.spatialimages.SpatialImage, path: Path) -> Any:
    """The header as stored in the file: nibabel's loaded header is already "fixed" (pixdim 0 -> 1,
    negative -> positive) and has its scaling reset to NaN, so the raw values are read once more."""
    if not isinstance(img.header, nib.Nifti1Header):  # Nifti2Header is a subclass
        return img.header
    holder = img.file_map.get("header") or img.file_map.get("image")  # a single .nii has its header in "image"
    header_file = (holder.filename if holder is not None else None) or str(path)
    with nib.openers.ImageOpener(header_file) as f:
        return type(img.header).from_fileobj(f, check=False)


def _shape_of(shape: tuple[int, ...], ndim: int | None) -> tuple[int, ...]:
    """The shape with trailing dimensions of length 1 beyond ``ndim`` (beyond 3 if None) dropped."""
    keep = 3 if ndim is None else ndim
    shape = tuple(int(s) for s in shape)
    while len(shape) > keep and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n} bytes"  # unreachable


def _affine_problem(affine: np.ndarray, name: str) -> str | None:
    """Why an affine cannot map voxels to mm, or None: NaN/Inf entries, or voxel axes that collapse
    (a zero column, or columns (near) parallel: |det| tiny next to the product of the voxel sizes)."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        return f"{name} has NaN/Inf entries"
    rzs = affine[:3, :3]
    norms = np.linalg.norm(rzs, axis=0)
    det = abs(float(np.linalg.det(rzs)))
    if (norms <= 1e-6).any() or det <= 1e-6 * float(np.prod(norms)):
        return f"{name} is singular (voxel axes of lengths {', '.join(f'{n:.3g}' for n in norms)} mm, |det| {det:.3g})"
    return None


def check_header(img: nib.spatialimages.SpatialImage, path: str | Path, ndim: int | None = None) -> tuple[int, ...]:
    """Check a loaded image's header (see the module docstring) before any voxel is read; returns its shape
    with trailing length-1 dimensions beyond ``ndim`` dropped. ``ndim`` (3 or 4, or None for any) is the
    dimensionality the caller expects. Raises DataError naming ``path``."""
    path = Path(path)
    try:
        raw = _raw_header(img, path)
    except Exception as exc:  # noqa: BLE001 - a header nibabel loaded once but not twice is a bad file
        raise DataError(path, f"unreadable or truncated image header ({_one_line(exc)})", REREAD_FIX) from None
    fix_header = "re-export the image with a valid header"

    # Dimensions.
    if "dim" in raw:
        dim0 = int(raw["dim"][0])
        if not 1 <= dim0 <= 7:
            raise DataError(path, f"header dim[0] = {dim0} is not a number of dimensions (1..7)", fix_header)
    full = tuple(int(s) for s in img.shape)
    if any(s < 1 for s in full):
        raise DataError(path, f"header dimensions {full} are not all >= 1", fix_header)
    shape = _shape_of(full, ndim)
    if ndim is not None and len(shape) != ndim:
        want = VOLUME if ndim == 3 else SERIES if ndim == 4 else f"a {ndim}D image"
        fix = "give a 3D image here" if ndim == 3 else "give the 4D series" if ndim == 4 else "give the right file"
        raise DataError(path, f"is {len(shape)}D with shape {full}, expected {want}", fix)

    # Voxel type.
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind == "c":
        raise DataError(
            path, f"has complex voxels ({dtype}): only real-valued images are read", "save the magnitude as a real image"
        )
    if dtype.kind not in "iuf":
        kind = "RGB/structured" if dtype.fields else "non-numeric"
        raise DataError(
            path, f"has {kind} voxels ({dtype}): only single-channel real-valued images are read", "save it as a grayscale image"
        )

    # Size, before anything is read or allocated.
    n_voxels = int(np.prod(full, dtype=object))
    n_bytes = n_voxels * dtype.itemsize
    what = f"{'x'.join(map(str, full))} {dtype} voxels ({_human_bytes(n_bytes)})"
    holder = img.file_map.get("image")
    image_file = Path((holder.filename if holder is not None else None) or path)
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    size = image_file.stat().st_size
    with open(image_file, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    if gzipped and offset + n_bytes > DEFLATE_MAX_RATIO * size + DEFLATE_SLACK_BYTES:
        raise DataError(
            path,
            f"header declares {what}, more than a gzip file of {_human_bytes(size)} can hold",
            "the header is corrupt: " + REREAD_FIX,
        )
    if not gzipped and image_file.suffix not in (".bz2", ".zst") and offset + n_bytes > size:
        raise DataError(
            path,
            f"header declares {what} from byte {offset}, but the file has {_human_bytes(size)}: truncated file or corrupt header",
            REREAD_FIX,
        )
    if n_voxels > MAX_VOXELS:  # what the file size cannot bound (.bz2, .zst)
        raise DataError(path, f"header declares {what}, more than any CT/MR image (limit {MAX_VOXELS} voxels)", fix_header)

    # Voxel spacing.
    if "pixdim" in raw:
        spatial = min(len(full), 3)
        pixdim = np.asarray(raw["pixdim"][1 : 1 + spatial], dtype=np.float64)
        if not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
            raise DataError(
                path,
                f"voxel spacing pixdim[1:{1 + spatial}] = ({', '.join(f'{p:g}' for p in pixdim)}) is not positive",
                "re-export the image with its real voxel sizes",
            )

    # Affines: every form the header declares (named in the message), then the one nibabel uses.
    problem = None
    for name, code_key, getter in (("sform", "sform_code", "get_sform"), ("qform", "qform_code", "get_qform")):
        if problem is None and code_key in raw and int(raw[code_key]) > 0:
            try:
                problem = _affine_problem(getattr(raw, getter)(), f"affine ({name})")
            except Exception as exc:  # noqa: BLE001 - e.g. a quaternion nibabel cannot complete
                problem = f"affine ({name}) cannot be computed ({_one_line(exc)})"
    if problem is None and img.affine is not None:
        problem = _affine_problem(img.affine, "affine")
    if problem is not None:
        raise DataError(path, problem, "re-export the image with a valid orientation (sform/qform)")

    # Scaling.
    if "scl_slope" in raw:
        slope, inter = float(raw["scl_slope"]), float(raw["scl_inter"])
        if not np.isfinite(slope):
            raise DataError(
                path,
                f"scl_slope is {slope}: the voxel scaling is undefined",
                "re-save it with scl_slope 1 and scl_inter 0 (nibabel: img.header.set_slope_inter(1, 0))",
            )
        if slope != 0 and not np.isfinite(inter):
            raise DataError(
                path,
                f"scl_inter is {inter} (scl_slope {slope:g}): the voxel scaling is undefined",
                "re-save it with a finite scl_inter",
            )
    return shape


def read_image(path: str | Path, ndim: int | None = None) -> tuple[nib.spatialimages.SpatialImage, tuple[int, ...]]:
    """Open an image and check its header (:func:`check_header`) without reading a voxel: the image (its
    ``dataobj`` still on disk) and its shape (trailing length-1 dimensions beyond ``ndim`` dropped).
    Raises DataError naming the file for every problem of the module docstring."""
    path = Path(path)
    err = _file_problem(path)
    if err is not None:
        raise err
    try:
        img = nib.load(str(path))
    except nib.spatialimages.HeaderDataError as exc:  # e.g. an unsupported data type code, a bad vox_offset
        raise DataError(path, f"invalid image header ({_one_line(exc)})", "re-export the image with a valid header") from None
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise DataError(path, f"unreadable or truncated image header ({_one_line(exc)})", REREAD_FIX) from None
    return img, check_header(img, path, ndim)


def load_nifti(path: str | Path, expect_3d: bool = True) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load an image fully (a truncated .nii.gz fails here, not later) as float32 data + header.

    The header is checked first (:func:`read_image`: see the module docstring), then the voxels are read.
    Raises DataError naming the file for: missing or unreachable, unreadable/truncated, a header that
    does not describe a real-valued 3D volume (``expect_3d``) or 4D series (time last).
    """
    path = Path(path)
    img, shape = read_image(path, 3 if expect_3d else 4)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except MemoryError:
        raise DataError(path, f"does not fit in memory ({shape} voxels as float32)", "use a machine with more memory") from None
    except Exception as exc:  # noqa: BLE001 - any failure reading the voxels is a damaged file
        raise DataError(path, f"unreadable or truncated image data ({_one_line(exc)})", REREAD_FIX) from None
    return data.reshape(shape), img

"""Hostile files and data roots never crash the reader and never pass silently: each ends in one line naming it.

The corpus is generated in tmp_path: a valid case (ISLES'24 ``.nii.gz`` or ISLES'18 ``.nii``) is written, then
one of its files, case folders or modality folders is broken with nibabel or by raw byte edits of the header
(odd dimensionality, bad spacing, NaN/Inf or singular affines, undefined scaling, a size the file cannot
hold, complex/RGB/binary voxels, wrong compression, empty or truncated files, symlink loops, dangling
links, unreadable folders, NaN voxels). Every reader that meets it (discovery, the header pre-flight
``check_headers`` of predict.py, ``load_case`` of training and prediction, the CTP reader ``load_ctp``)
must raise a DataError (or a DataSetError of several) whose lines name the broken path.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_case, write_ctp

from strokelab.data.check import check_headers, load_case
from strokelab.data.layouts import discover
from strokelab.errors import DataError, DataSetError
from strokelab.io import check_header, load_nifti, read_image
from strokelab.perfusion.maps import load_ctp

REPO = Path(__file__).resolve().parents[1]
CID24 = "sub-stroke0001"
SHAPE18 = (8, 8, 3)
TAGS18 = {"cbf": "CT_CBF", "tmax": "CT_Tmax", "ctp": "CT_4DPWI"}
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------------
# Valid cases, then ways to break them
# ---------------------------------------------------------------------------------------------------
def isles24_case(root: Path, ctp: bool) -> tuple[Path, str]:
    write_case(root, CID24)
    if ctp:
        write_ctp(root, CID24, frames=8)
    return root, CID24


def isles18_case(root: Path, ctp: bool) -> tuple[Path, str]:
    """TRAINING/case_1 with CBF, Tmax, the OT mask (and a 4D CTP): uncompressed .nii, one folder each."""
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    rng = np.random.default_rng(0)
    images = {"cbf": rng.uniform(1, 10, SHAPE18), "tmax": rng.uniform(1, 10, SHAPE18), "OT": rng.uniform(size=SHAPE18) > 0.7}
    if ctp:
        images["ctp"] = rng.normal(40, 5, (*SHAPE18, 8))
    for i, (name, data) in enumerate(images.items()):
        tag = TAGS18.get(name, name)
        folder = root / "TRAINING" / "case_1" / f"SMIR.Brain.XX.O.{tag}.{100 + i}"
        folder.mkdir(parents=True)
        dtype = np.uint8 if name == "OT" else np.int16 if name == "ctp" else np.float32
        img = nib.Nifti1Image(data.astype(dtype), affine)
        if name == "ctp":
            img.header.set_zooms((1.5, 1.5, 8.0, 1.0))
        nib.save(img, folder / f"{folder.name}.nii")
    return root, "case_1"


def _bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _write(path: Path, raw: bytes) -> None:
    """Write ``raw`` as the file's content, gzip-compressed when its name says so."""
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


def edit_header(edit: Callable[[nib.Nifti1Header], None]) -> Callable[[Path], None]:
    """A raw edit of the stored header: nibabel parses it without fixing anything (check=False) and its
    binary block is written back byte for byte, whatever it holds."""

    def make(path: Path) -> None:
        raw = _bytes(path)
        hdr = nib.Nifti1Header(raw[:348], check=False)
        edit(hdr)
        _write(path, hdr.binaryblock + raw[348:])

    return make


def set_fields(**fields) -> Callable[[Path], None]:
    def edit(hdr: nib.Nifti1Header) -> None:
        for key, value in fields.items():
            hdr[key] = value

    return edit_header(edit)


def set_item(key: str, index: int, value: float) -> Callable[[Path], None]:
    def edit(hdr: nib.Nifti1Header) -> None:
        values = np.array(hdr[key])
        values[index] = value
        hdr[key] = values

    return edit_header(edit)


def replace_with(data_of: Callable[[tuple[int, ...]], np.ndarray]) -> Callable[[Path], None]:
    """Overwrite the file with an image of the same affine whose voxels ``data_of(shape)`` gives."""

    def make(path: Path) -> None:
        old = nib.load(path)
        nib.save(nib.Nifti1Image(data_of(old.shape), old.affine), path)

    return make


def huge(shape: tuple[int, ...], nifti2: bool = False) -> Callable[[Path], None]:
    """A valid header declaring ``shape`` float32 voxels, followed by 16 bytes of data."""

    def make(path: Path) -> None:
        hdr = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
        hdr.set_data_shape(shape)
        hdr.set_data_dtype(np.float32)
        hdr.set_sform(np.diag([1.0, 1.0, 2.0, 1.0]), code="scanner")
        hdr["vox_offset"] = hdr.single_vox_offset
        _write(path, hdr.binaryblock + b"\0" * 4 + b"\0" * 16)

    return make


def rgb(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])


def _move_away(path: Path) -> None:
    """Delete a file, or rename a folder to a name no layout matches (``<name>.gone``)."""
    if path.is_dir():
        path.rename(path.with_name(path.name + ".gone"))
    else:
        path.unlink()


def link_to_itself(path: Path) -> None:
    _move_away(path)
    path.symlink_to(path.name)


def link_cycle(path: Path) -> None:
    """``path`` -> ``<name>.other`` -> ``path`` (no layout matches the ``.other`` name)."""
    _move_away(path)
    other = path.with_name(path.name + ".other")
    other.symlink_to(path.name)
    path.symlink_to(other.name)


def dangling_link(path: Path) -> None:
    _move_away(path)
    path.symlink_to("nowhere-" + path.name)


def case_folder_as_file(path: Path) -> None:
    _move_away(path)
    path.write_text("not a folder")


def no_permission(path: Path) -> None:
    path.chmod(0)


@dataclass
class Hostile:
    """One entry of the corpus: ``make`` breaks ``target`` (a modality file, the case folder or, ISLES'18,
    a modality folder) of a valid case; ``needle`` is in the one-line message. ``header``: the header
    pre-flight (check_headers) catches it too (False: only reading the voxels can)."""

    name: str
    layout: str
    target: str
    make: Callable[[Path], None]
    needle: str
    header: bool = True
    root_only: bool = False  # skip when running as root (root reads anything)


CORPUS = [
    # Dimensionality.
    Hostile("2d image", "isles24", "tmax", replace_with(lambda s: np.zeros(s[:2], np.float32)), "is 2D"),
    Hostile("5d image", "isles24", "tmax", replace_with(lambda s: np.zeros((*s, 2, 2), np.float32)), "is 5D"),
    Hostile("4d map where 3d", "isles18", "tmax", replace_with(lambda s: np.zeros((*s, 3), np.float32)), "expected a 3D volume"),
    Hostile("3d ctp where 4d", "isles24", "ctp", replace_with(lambda s: np.zeros(s[:3], np.float32)), "expected a 4D series"),
    Hostile("zero dimension", "isles24", "tmax", set_item("dim", 2, 0), "not all >= 1"),
    Hostile("dim[0] of 0", "isles18", "tmax", set_item("dim", 0, 0), "dim[0] = 0"),
    # Spacing, affine.
    Hostile("zero pixdim", "isles24", "tmax", set_item("pixdim", 1, 0.0), "pixdim"),
    Hostile("negative pixdim", "isles18", "cbf", set_item("pixdim", 3, -8.0), "pixdim"),
    Hostile("zero pixdim of a ctp", "isles24", "ctp", set_item("pixdim", 2, 0.0), "pixdim"),
    Hostile("nan in the sform", "isles24", "tmax", set_item("srow_x", 0, np.nan), "affine (sform) has NaN/Inf"),
    Hostile("inf in the qform", "isles18", "tmax", set_fields(sform_code=0, qform_code=1, qoffset_x=np.inf), "qform"),
    Hostile("nan quaternion", "isles24", "tmax", set_fields(sform_code=0, qform_code=1, quatern_b=np.nan), "qform"),
    Hostile("singular sform", "isles24", "tmax", set_fields(srow_y=np.zeros(4)), "singular"),
    Hostile("singular sform, .nii", "isles18", "cbf", set_fields(srow_x=np.zeros(4)), "singular"),
    # Scaling.
    Hostile("nan scl_slope", "isles24", "tmax", set_fields(scl_slope=np.nan), "scl_slope is nan"),
    Hostile("inf scl_slope", "isles18", "tmax", set_fields(scl_slope=np.inf), "scl_slope is inf"),
    Hostile("inf scl_inter", "isles24", "tmax", set_fields(scl_slope=2.0, scl_inter=np.inf), "invalid intercept inf"),
    # A size the file cannot hold: refused before anything is read or allocated.
    Hostile("huge dims, gzip", "isles24", "tmax", huge((30000, 30000, 1000)), "more than a gzip file"),
    Hostile("huge dims, nifti-2", "isles24", "tmax", huge((100000, 100000, 1000), nifti2=True), "header declares"),
    Hostile("huge dims, uncompressed", "isles18", "tmax", huge((30000, 30000, 1000)), "truncated file or corrupt header"),
    Hostile("huge dims, ctp", "isles24", "ctp", huge((512, 512, 320, 30000)), "header declares"),
    # Voxel types.
    Hostile("complex64", "isles24", "tmax", replace_with(lambda s: np.ones(s, np.complex64)), "complex"),
    Hostile("complex128", "isles18", "cbf", replace_with(lambda s: np.ones(s, np.complex128)), "complex"),
    Hostile("complex ctp", "isles24", "ctp", replace_with(lambda s: np.ones(s, np.complex64)), "complex"),
    Hostile("rgb", "isles24", "tmax", replace_with(rgb), "RGB"),
    Hostile("binary (bool)", "isles18", "tmax", set_fields(datatype=1, bitpix=1), "data code 1"),
    # Compression, empty and truncated files.
    Hostile("not gzip, named .gz", "isles24", "tmax", lambda p: p.write_bytes(_bytes(p)), "not gzip-compressed"),
    Hostile(
        "gzip, named .nii", "isles18", "tmax", lambda p: p.write_bytes(gzip.compress(p.read_bytes())), "rename it to .nii.gz"
    ),
    Hostile("empty .nii.gz", "isles24", "tmax", lambda p: p.write_bytes(b""), "empty file"),
    Hostile("empty .nii", "isles18", "cbf", lambda p: p.write_bytes(b""), "empty file"),
    Hostile("truncated header, .nii", "isles18", "tmax", lambda p: p.write_bytes(p.read_bytes()[:200]), "header is truncated"),
    Hostile("truncated header, .nii.gz", "isles24", "tmax", lambda p: _write(p, _bytes(p)[:200]), "truncated image header"),
    Hostile("truncated data, .nii", "isles18", "tmax", lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated file"),
    Hostile(
        "truncated data, .nii.gz",
        "isles24",
        "tmax",
        lambda p: p.write_bytes(p.read_bytes()[:-300]),
        "truncated image data",
        False,
    ),
    # NaN voxels (nan_policy=error; replace is tested below).
    Hostile("nan voxels", "isles24", "tmax", replace_with(lambda s: np.full(s, np.nan, np.float32)), "NaN/Inf", False),
    # Links and permissions of files.
    Hostile("file linked to itself", "isles24", "tmax", link_to_itself, "symlink loop"),
    Hostile("file link cycle", "isles18", "tmax", link_cycle, "symlink loop"),
    Hostile("dangling file link", "isles24", "tmax", dangling_link, "dangling symlink"),
    Hostile("ctp linked to itself", "isles24", "ctp", link_to_itself, "symlink loop"),
    Hostile("unreadable file", "isles24", "tmax", no_permission, "permission denied", root_only=True),
    # Case and modality folders: found when the data root is discovered.
    Hostile("case folder linked to itself", "isles24", "case", link_to_itself, "symlink loop"),
    Hostile("case folder link cycle", "isles24", "case", link_cycle, "symlink loop"),
    Hostile("dangling case folder link", "isles24", "case", dangling_link, "dangling symlink"),
    Hostile("a file named like a case", "isles24", "case", case_folder_as_file, "not a folder"),
    Hostile("isles18 case folder linked to itself", "isles18", "case", link_to_itself, "symlink loop"),
    Hostile("isles18 dangling case folder link", "isles18", "case", dangling_link, "dangling symlink"),
    Hostile("isles18 modality folder linked to itself", "isles18", "tmax folder", link_to_itself, "symlink loop"),
    Hostile("unreadable case folder", "isles24", "case", no_permission, "permission denied", root_only=True),
    Hostile("unreadable isles18 case folder", "isles18", "case", no_permission, "permission denied", root_only=True),
]


def _build(entry: Hostile, tmp_path: Path) -> tuple[Path, str, list[str]]:
    with_ctp = entry.target == "ctp"
    make_case = isles24_case if entry.layout == "isles24" else isles18_case
    root, cid = make_case(tmp_path / "root", with_ctp)
    return root, cid, ["cbf", "tmax", "ctp"] if with_ctp else ["cbf", "tmax"]


def _lines_name(err: DataError, *paths: Path) -> None:
    """Every line of the error names one of ``paths``; a single error is one line."""
    lines = str(err).splitlines()
    assert lines and (isinstance(err, DataSetError) or len(lines) == 1), str(err)
    for line in lines:
        assert any(str(p) in line for p in paths), line
    assert "Traceback" not in str(err)


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_a_hostile_file_or_root_ends_in_one_line_naming_it(entry, tmp_path):
    if entry.root_only and AS_ROOT:
        pytest.skip("running as root: root reads any file, so a permission problem cannot be made (see the next test)")
    root, cid, modalities = _build(entry, tmp_path)
    case = discover(root, modalities, ids=[cid])[0]
    broken = case.images.get(entry.target)
    try:
        if entry.target in modalities:  # a file: discovery is fine, every reader refuses it
            target = case.images[entry.target]
            entry.make(target)
            case = discover(root, modalities, ids=[cid])[0]
            assert case.images[entry.target] == target
            readers = [("load_case", lambda: load_case(case))]
            if entry.header:
                readers.append(("check_headers", lambda: check_headers([case])))
            if entry.target == "ctp":
                readers.append(("load_ctp", lambda: load_ctp(target)))
            for name, read in readers:
                with pytest.raises(DataError) as err:
                    read()
                _lines_name(err.value, target)
                assert entry.needle in str(err.value), f"{name}: {err.value}"
            return
        # A case or modality folder: discovery of the root (every case) and of the case itself refuses it.
        folder = root / "derivatives" / cid if entry.layout == "isles24" else root / "TRAINING" / cid
        if entry.target == "tmax folder":
            folder = next(folder.glob(f"SMIR.Brain.XX.O.{TAGS18['tmax']}.*"))
        broken = folder
        entry.make(folder)
        for ids in (None, [cid]):
            with pytest.raises(DataError) as err:
                discover(root, modalities, ids=ids)
            _lines_name(err.value, folder)
            assert entry.needle in str(err.value)
    finally:
        if entry.make is no_permission:  # let pytest clean tmp_path up
            broken.chmod(0o755)


@pytest.mark.parametrize("layout", ["isles24", "isles18"])
def test_an_unreadable_case_folder_is_reported_not_skipped(layout, tmp_path, monkeypatch):
    """What chmod 000 does to a user who is not root, made here for root too: listing the folder fails."""
    root, cid = (isles24_case if layout == "isles24" else isles18_case)(tmp_path / "root", ctp=False)
    blocked = root / "derivatives" / cid if layout == "isles24" else root / "TRAINING" / cid
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for ids in (None, [cid]):
        with pytest.raises(DataError, match="case folder cannot be read \\(permission denied\\)") as err:
            discover(root, ["cbf", "tmax"], ids=ids)
        _lines_name(err.value, blocked)
    monkeypatch.undo()
    assert [c.id for c in discover(root, ["cbf", "tmax"])] == [cid]


def test_every_problem_of_a_root_is_listed_at_once(tmp_path):
    root, _ = isles24_case(tmp_path / "root", ctp=False)
    for i in (2, 3):
        write_case(root, f"sub-stroke000{i}", seed=i)
    link_to_itself(root / "derivatives" / "sub-stroke0002")
    dangling_link(root / "derivatives" / "sub-stroke0003")
    with pytest.raises(DataSetError) as err:
        discover(root, ["cbf", "tmax"])
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "sub-stroke0002" in lines[0] and "loop" in lines[0] and "sub-stroke0003" in lines[1]


def test_scl_slope_zero_means_unscaled_as_the_standard_says(tmp_path):
    """NIfTI-1: "if the scl_slope field is nonzero, then each voxel value ... should be scaled"; a zero slope
    is read unscaled (as nibabel, ITK and FSL do), neither refused nor turned into an all-zero image."""
    path = tmp_path / "slope0.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 5, 3), 7, np.int16), np.diag([2.0, 2.0, 5.0, 1.0])), path)
    set_fields(scl_slope=0.0, scl_inter=np.inf)(path)  # the intercept is ignored with a zero slope
    data, _ = load_nifti(path)
    assert data.dtype == np.float32 and (data == 7).all()
    set_fields(scl_slope=0.5, scl_inter=1.0)(path)
    assert (load_nifti(path)[0] == 4.5).all()


def test_valid_files_pass_and_keep_their_shape(tmp_path):
    """The checks refuse only what is wrong: a 4D map with one frame is 3D, a 4D series stays 4D, and a real
    ISLES header (negative qfac, scaled uint16 mask) passes; nothing is read by ``read_image``."""
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    one_frame = tmp_path / "one_frame.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 3, 1), np.float32), affine), one_frame)
    assert load_nifti(one_frame)[0].shape == (4, 5, 3)
    series = tmp_path / "series.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 3, 8, 1), np.int16), affine), series)
    img, shape = read_image(series, 4)
    assert shape == (4, 5, 3, 8) and load_nifti(series, expect_3d=False)[0].shape == (4, 5, 3, 8)
    assert check_header(img, series) == (4, 5, 3, 8)
    scaled = tmp_path / "scaled.nii.gz"
    mask = nib.Nifti1Image(np.ones((4, 5, 3), np.uint16), np.diag([-0.4, 0.4, 2.0, 1.0]))
    mask.header.set_slope_inter(1.5259022e-05, 0.0)
    nib.save(mask, scaled)
    np.testing.assert_allclose(load_nifti(scaled)[0], 1.5259022e-05)


def test_nan_voxels_follow_the_nan_policy(tmp_path):
    root, cid = isles24_case(tmp_path / "root", ctp=False)
    case = discover(root, ["cbf", "tmax"], ids=[cid])[0]
    tmax = nib.load(case.images["tmax"])
    data = np.asarray(tmax.dataobj, dtype=np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, tmax.affine), case.images["tmax"])
    with pytest.raises(DataError, match="has 1 NaN/Inf voxels") as err:
        load_case(case)
    _lines_name(err.value, case.images["tmax"])
    loaded = load_case(case, nan_policy="replace")
    assert loaded.images["tmax"][1, 2, 3] == 0 and any("replaced 1 NaN/Inf" in w for w in loaded.warnings)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=600, env=env)


def _one_error_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_check_command_refuses_a_looping_case_folder_in_one_line(tmp_path):
    root, _ = isles24_case(tmp_path / "root", ctp=False)
    write_case(root, "sub-stroke0002", seed=1)
    link_to_itself(root / "derivatives" / "sub-stroke0002")
    _one_error_line(_run("-m", "strokelab.data.check", str(root)), "sub-stroke0002", "symlink loop")


def test_check_command_lists_hostile_files_without_a_traceback(tmp_path):
    """The check command lists every problem of a readable root (exit 1): one line per hostile file."""
    root, cid = isles24_case(tmp_path / "root", ctp=False)
    write_case(root, "sub-stroke0002", seed=1)
    maps = root / "derivatives" / cid / "ses-01" / "perfusion-maps"
    tmax, cbv = maps / f"{cid}_ses-01_space-ncct_tmax.nii.gz", maps / f"{cid}_ses-01_space-ncct_cbv.nii.gz"
    huge((30000, 30000, 1000))(tmax)
    replace_with(lambda s: np.ones(s, np.complex64))(cbv)
    out = _run("-m", "strokelab.data.check", str(root))
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(f"{cid}: ")]
    assert len(lines) == 2, out.stdout
    assert str(cbv) in lines[0] and "complex" in lines[0] and str(tmax) in lines[1] and "header declares" in lines[1]
    assert "2 cases checked, 1 with problems" in out.stdout

"""The preprocessing cache: entries in plain types read weights-only (nothing in them runs), keyed by the sources'
content, checked against a checksum (a damaged entry is rebuilt with one warning), filled once by processes that
want the same entry at the same time, and a full disk ends in one line with nothing half-written."""

from __future__ import annotations

import errno
import gzip
import io
import logging
import multiprocessing
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import MAPS, write_case

import strokelab.data.cache as cache_mod
import strokelab.data.preprocess as prep_mod
from strokelab.data.cache import CorruptEntry, read_entry, write_entry
from strokelab.data.layouts import discover
from strokelab.data.preprocess import CACHE_VERSION, Preprocessing, cache_cases, load_or_preprocess
from strokelab.errors import DataError, DataSetError


class Payload:
    """Creates ``marker`` when unpickled, as a hostile file would run any command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _case(root: Path, cid: str = "sub-stroke0001"):
    return discover(root, list(MAPS), ids=[cid])[0]


@pytest.fixture
def case(tmp_path):
    write_case(tmp_path / "isles", "sub-stroke0001")
    return _case(tmp_path / "isles")


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Case ids preprocessed (not read from the cache) in this process."""
    seen: list[str] = []
    real = prep_mod.preprocess_loaded
    monkeypatch.setattr(prep_mod, "preprocess_loaded", lambda loaded, *a: seen.append(loaded.case.id) or real(loaded, *a))
    return seen


def assert_same_entry(entry: dict, fresh: dict) -> None:
    """Equal tensors, affines (numpy, as preprocess_loaded gives them), grid and statistics."""
    assert sorted(entry["images"]) == sorted(fresh["images"])
    for name, tensor in fresh["images"].items():
        assert entry["images"][name].dtype == tensor.dtype and torch.equal(entry["images"][name], tensor), name
    for key in ("affine", "native_affine"):
        assert isinstance(entry[key], np.ndarray) and entry[key].dtype == np.float64 and np.array_equal(entry[key], fresh[key])
    assert entry["native_shape"] == fresh["native_shape"] and isinstance(entry["native_shape"], tuple)
    assert entry["stats"] == fresh["stats"] and entry["inputs"] == fresh["inputs"] and entry["case"] == fresh["case"]


def plain_only(value, where="entry") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            plain_only(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            plain_only(v, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool, torch.Tensor), f"{where}: {type(value)}"


def test_entries_are_plain_data_and_callers_get_numpy_affines(case, tmp_path, calls):
    prep = Preprocessing()
    fresh = load_or_preprocess(case, prep, None)
    made = load_or_preprocess(case, prep, tmp_path / "cache")
    again = load_or_preprocess(case, prep, tmp_path / "cache")
    assert calls == [case.id, case.id]  # the cache-less one, then the cached one made once
    assert_same_entry(made, fresh)
    assert_same_entry(again, fresh)
    stored = read_entry(next((tmp_path / "cache").rglob("*.pt")))  # weights-only
    plain_only(stored)
    assert set(stored["sources"]) == {str(p) for p in [*case.images.values(), case.label]}
    assert all(v.startswith("sha256:") for v in stored["sources"].values())
    assert CACHE_VERSION >= 5


def test_a_cache_entry_that_would_run_code_is_not_run(case, tmp_path, caplog, calls):
    """An entry with a valid checksum whose payload would run a command when unpickled: refused and rebuilt."""
    prep = Preprocessing()
    load_or_preprocess(case, prep, tmp_path / "cache")
    path = next((tmp_path / "cache").rglob("*.pt"))
    marker = tmp_path / "payload-ran"
    stored = read_entry(path)
    write_entry(path, {**stored, "stats": Payload(marker)})
    torch.load(io.BytesIO(path.read_bytes().split(b"\n", 1)[1]), weights_only=False)  # the payload works...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CorruptEntry, match="would run code"):  # ...but is never unpickled by the cache
        read_entry(path)
    with caplog.at_level(logging.WARNING, logger="strokelab.data.preprocess"):
        entry = load_or_preprocess(case, prep, tmp_path / "cache")
    assert not marker.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: bad preprocessing cache entry (would run code when loaded: posix.system is not allowed), rebuilding it"
    ]
    assert calls == [case.id, case.id]
    assert_same_entry(entry, load_or_preprocess(case, prep, None))


def _write_stored_gzip(path: Path, img: nib.Nifti1Image) -> None:
    """``img`` as .nii.gz without compression (stored blocks, gzip mtime 0): the file's size depends on the
    voxel count only, so other voxel values give a file of exactly the same size."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=0, mtime=0) as f:
        f.write(img.to_bytes())


def test_a_source_replaced_by_one_of_equal_size_and_mtime_is_noticed(case, tmp_path, calls):
    prep, cbf = Preprocessing(), Path(case.images["cbf"])
    img = nib.load(cbf)
    data = img.get_fdata().astype(np.float32)
    _write_stored_gzip(cbf, nib.Nifti1Image(data, img.affine))
    first = load_or_preprocess(case, prep, tmp_path / "cache")
    before = cbf.stat()
    _write_stored_gzip(cbf, nib.Nifti1Image(data * 2 + 1, img.affine))  # rewritten in place: the same inode
    os.utime(cbf, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = cbf.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    second = load_or_preprocess(case, prep, tmp_path / "cache")
    assert calls == [case.id, case.id]
    assert not torch.equal(first["images"]["cbf"], second["images"]["cbf"])
    assert_same_entry(second, load_or_preprocess(case, prep, None))
    load_or_preprocess(case, prep, tmp_path / "cache")
    assert len(calls) == 3  # the cache-less one above; the new entry is read from the cache


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_entry_is_rebuilt_with_one_warning(case, tmp_path, caplog, calls, damage):
    prep = Preprocessing()
    load_or_preprocess(case, prep, tmp_path / "cache")
    path = next((tmp_path / "cache").rglob("*.pt"))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) * 2 // 3])
    else:
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        path.write_bytes(data)
    with pytest.raises(CorruptEntry, match="truncated" if damage == "truncate" else "checksum mismatch"):
        read_entry(path)
    with caplog.at_level(logging.WARNING, logger="strokelab.data.preprocess"):
        entry = load_or_preprocess(case, prep, tmp_path / "cache")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith(f"{path}: bad preprocessing cache entry (")
    assert messages[0].endswith("rebuilding it") and "\n" not in messages[0]
    assert calls == [case.id, case.id]
    assert_same_entry(entry, load_or_preprocess(case, prep, None))
    read_entry(path)  # intact again


def _fill(root: str, cache: str, log: str, out: str, barrier) -> None:
    """One of two processes that preprocess the same case into the same cache at the same time."""
    real = prep_mod.preprocess_loaded

    def counted(loaded, *args):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the computation open so that, unlocked, the other process would start its own
        return real(loaded, *args)

    prep_mod.preprocess_loaded = counted
    case = _case(Path(root))
    barrier.wait()
    entry = load_or_preprocess(case, Preprocessing(), cache)
    torch.save({"images": entry["images"], "affine": torch.from_numpy(entry["affine"])}, out)


def test_two_processes_filling_one_cache_compute_each_entry_once(case, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    cache, log = tmp_path / "cache", tmp_path / "computed.log"
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    procs = [ctx.Process(target=_fill, args=(str(case.root), str(cache), str(log), str(o), barrier)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().split()) == 1  # computed once; the other process read its entry
    fresh = load_or_preprocess(case, Preprocessing(), None)
    for out in outs:
        got = torch.load(out, weights_only=True)
        assert np.array_equal(got["affine"].numpy(), fresh["affine"])
        assert all(torch.equal(got["images"][k], v) for k, v in fresh["images"].items())
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert files == ["preprocessing.json", f"{case.id}.pt", f"{case.id}.pt.lock"]  # no temporary file left


def _disk_full(tmp: Path, header: bytes, payload: bytes) -> None:
    with tmp.open("wb") as f:
        f.write(header)
        f.write(payload[: len(payload) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_leaves_nothing_half_written_and_ends_in_one_line(case, tmp_path, monkeypatch):
    prep, cache = Preprocessing(), tmp_path / "cache"
    monkeypatch.setattr(cache_mod, "_write_file", _disk_full)
    with pytest.raises(DataError) as err:
        load_or_preprocess(case, prep, cache)
    assert (
        str(err.value) == f"{cache}: disk full while writing the preprocessing cache (free space or set data.cache_dir elsewhere)"
    )
    assert [p.name for p in cache.rglob("*") if p.is_file()] == [f"{case.id}.pt.lock"]  # no entry, no temporary file
    monkeypatch.undo()
    assert_same_entry(load_or_preprocess(case, prep, cache), load_or_preprocess(case, prep, None))


FULL_DISK_TRAIN = """
import errno, os, runpy, sys
import strokelab.data.cache as cache

def full(tmp, header, payload):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

cache._write_file = full
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_train_reports_a_full_disk_in_one_line(tmp_path):
    from test_cli import REPO, TINY, one_error_line

    root = tmp_path / "isles"
    for i in range(10):
        write_case(root, f"sub-stroke{i + 1:04d}", nihss=i, seed=i)
    args = [*TINY, f"data.root={root}", f"paths.root_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(FULL_DISK_TRAIN),
            str(REPO / "train.py"),
            *args,
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    one_error_line(out, f"{tmp_path / 'cache'}: disk full while writing the preprocessing cache", "set data.cache_dir elsewhere")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_worker_processes_report_problems_in_one_line_each(tmp_path):
    """Problems found in ``cache_cases`` workers come back to the parent (a StrokelabError does not unpickle
    on its own: the pool broke instead)."""
    root = tmp_path / "isles"
    for i in range(3):
        write_case(root, f"sub-stroke{i + 1:04d}", seed=i)
    cases = discover(root, list(MAPS))
    for c in cases[:2]:
        Path(c.images["tmax"]).write_bytes(b"not an image")
    with pytest.raises(DataSetError) as err:
        cache_cases(cases, Preprocessing(), tmp_path / "cache", workers=2)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all("tmax" in line for line in lines)
    assert [p.name for p in (tmp_path / "cache").rglob("*.pt")] == [f"{cases[2].id}.pt"]

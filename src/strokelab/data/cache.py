"""Cache files that cannot carry code, say when they are damaged, and are filled once however many processes ask.

What :func:`strokelab.data.preprocess.load_or_preprocess` builds on (it holds no preprocessing knowledge):

* :func:`plain` turns a value into plain types (dict, list, tuple, str, int, float, bool, None, tensors), so an
  entry reads back with ``torch.load(weights_only=True)``: opening a shared or copied cache can never run code.
* :func:`write_entry` / :func:`read_entry`: the file is one header line ``strokelab-cache 1 sha256=<hex>
  bytes=<n>`` followed by the ``torch.save`` bytes of the entry; a truncated or altered entry fails the check and
  :class:`CorruptEntry` says why (the caller rebuilds it). Written atomically (:func:`strokelab.io.atomic_path`);
  a full disk leaves nothing behind and ends in one :class:`~strokelab.errors.DataError` line.
* :func:`file_digest`: the sha256 of a source file's bytes, so an entry is redone when the content changes
  even if size and mtime do not. Memoised within the process by (path, device, inode, size, mtime, ctime): a
  file rewritten in place changes its ctime, which no user call can set back.
* :func:`entry_lock`: an exclusive ``fcntl.flock`` on ``<entry>.lock`` around check-compute-write, so two
  processes that want the same entry (a multirun, DDP ranks, preprocessing workers) compute it once: the
  second waits, then reads the first's entry.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strokelab.errors import DataError
from strokelab.io import atomic_path

MAGIC = b"strokelab-cache 1"
HASH = "sha256"  # with the CPU's SHA extensions about 0.8 GB/s here, faster than blake2b (0.5 GB/s)
CHUNK = 1 << 20  # bytes read at a time while hashing a source file
_DIGESTS: dict[tuple, str] = {}  # (path, dev, inode, size, mtime_ns, ctime_ns) -> digest, this process only
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CacheWriteError(DataError):
    """The cache cannot be written (disk full, no permission): the same for every entry, so said once."""


class CorruptEntry(Exception):
    """A cache file that is truncated, altered or not a cache entry; the message says which."""


def plain(value: Any, where: str = "entry") -> Any:
    """``value`` in types that ``torch.load(weights_only=True)`` reads: numpy arrays become tensors (same
    dtype), numpy scalars Python numbers; dicts, lists and tuples are converted item by item. Anything else
    is a programming error (it would make the file unreadable without running code) and raises TypeError
    naming where it sits."""
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{where}: an object array cannot be stored as plain data")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str or int")
            out[k] = plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: a {type(value).__name__} is not a plain type (dict, list, str, number, tensor)")


def unsafe_reason(exc: BaseException) -> str | None:
    """Why weights-only loading refused a file because loading it would call code (a function or class outside
    torch's allowlist), in a few words; None when ``exc`` is another failure (damaged or not a torch file)."""
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", str(exc))
    return f"{found.group(1)} is not allowed" if found else None


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in chunks; memoised in this process (see the module docstring).
    Raises OSError when the file cannot be read."""
    path = Path(path)
    st = path.stat()
    key = (str(path.absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.new(HASH)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        digest = f"{HASH}:{h.hexdigest()}"
        _DIGESTS[key] = digest
    return digest


def _cache_dir(path: Path) -> Path:
    """The cache folder a user configures (``data.cache_dir``) of a file in it: files sit one level below, in
    the folder of their preprocessing config's key."""
    return path.parent.parent


def write_error(path: Path, exc: OSError) -> CacheWriteError:
    """One line, naming the cache folder, for a write of the cache file ``path`` that failed: disk full, or the
    folder cannot be written."""
    if exc.errno in DISK_FULL:
        return CacheWriteError(
            _cache_dir(path), "disk full while writing the preprocessing cache", "free space or set data.cache_dir elsewhere"
        )
    reason = exc.strerror or type(exc).__name__
    return CacheWriteError(
        _cache_dir(path), f"cannot write the preprocessing cache ({reason})", "make it writable or set data.cache_dir elsewhere"
    )


@contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (created if missing, never removed: removing a lock file that
    another process is about to lock would let a third one in). Raises DataError when it cannot be created."""
    lock = path.with_name(path.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _write_file(tmp: Path, header: bytes, payload: bytes) -> None:
    with tmp.open("wb") as f:
        f.write(header)
        f.write(payload)


def write_entry(path: Path, entry: Any) -> None:
    """Store ``entry`` (plain types, see :func:`plain`) at ``path`` with its checksum, atomically. A failed
    write (disk full, no permission) leaves the previous file or none, and raises one-line DataError."""
    buffer = io.BytesIO()
    torch.save(entry, buffer)
    payload = buffer.getbuffer()
    header = b"%s %s=%s bytes=%d\n" % (MAGIC, HASH.encode(), hashlib.new(HASH, payload).hexdigest().encode(), len(payload))
    try:
        with atomic_path(path) as tmp:
            _write_file(tmp, header, payload)
    except OSError as exc:
        raise write_error(path, exc) from None


def read_entry(path: Path) -> Any:
    """The entry stored at ``path``, checked against its checksum and read weights-only (nothing in the file
    can run). Raises CorruptEntry saying what is wrong, OSError when the file cannot be read at all."""
    data = memoryview(path.read_bytes())
    end = bytes(data[:256]).find(b"\n")
    fields = bytes(data[:end]).split() if end > 0 else []
    if fields[:2] != MAGIC.split():
        raise CorruptEntry("not a strokelab cache entry (no header)")
    try:
        info = dict(f.split(b"=", 1) for f in fields[2:])
        expected, size = info[HASH.encode()].decode(), int(info[b"bytes"])
    except (KeyError, ValueError):
        raise CorruptEntry("damaged header") from None
    payload = data[end + 1 :]
    if len(payload) < size:
        raise CorruptEntry(f"truncated: {len(payload)} of {size} bytes")
    if len(payload) > size:
        raise CorruptEntry(f"{len(payload) - size} bytes too many after its {size} bytes")
    if hashlib.new(HASH, payload).hexdigest() != expected:
        raise CorruptEntry("checksum mismatch: the file was altered after it was written")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a checked file that still does not load is damaged for us
        reason = unsafe_reason(exc)
        if reason is not None:
            raise CorruptEntry(f"would run code when loaded: {reason}") from None
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CorruptEntry(f"unreadable ({type(exc).__name__}: {first[:100]})") from None

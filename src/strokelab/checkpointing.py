"""Checkpoints that survive a kill, training that resumes exactly, and jobs that are done once.

**Atomic checkpoints.** Lightning's ``TorchCheckpointIO`` serialises a checkpoint into memory, writes it to a
temporary file in the system temp folder (``$TMPDIR``) and moves that onto the target. On one filesystem the
move is a rename and the previous ``last.ckpt``/``best.ckpt`` survives a kill; when ``$TMPDIR`` is another
filesystem than the run folder (a tmpfs ``/tmp``, node-local ``/tmp`` with logs on a network drive) the move
copies into the target in place, and a kill during the copy leaves a truncated checkpoint with the previous
one gone (measured: ``torch.load`` then fails with "failed finding central directory"); a killed save also
leaves a checkpoint-sized file in ``$TMPDIR``, nothing is fsynced, and the whole checkpoint is held in memory
twice. ``AtomicCheckpointIO`` writes a temporary file beside the target, fsyncs it, renames it over the
target (``os.replace``) and fsyncs the folder, so the target is always the previous or the new checkpoint,
also after a power cut; temporary files of a killed save are removed by the next successful save.

**Exact resume.** Lightning restores weights, optimisers, schedulers, loop counters and callback states, but
not the random streams (torch, CUDA, numpy, Python) nor the TorchIO patch queue, so a resumed run draws other
patches, flips and dropout masks than the uninterrupted one. ``ResumeState`` stores every process's random
state in each checkpoint and puts it back when the next epoch starts, and restarts the patch queue at the
point where the uninterrupted run starts a new pass over the training subjects: on CPU the resumed run is
then bit for bit the uninterrupted one (``tests/test_resume.py``). It also carries the best checkpoint into a
new run folder, so that ``ckpt_path=...`` into a fresh folder chooses its ``best.ckpt`` among all epochs.

**Jobs done once.** A job (a run, or one job of a multirun) writes ``DONE.json`` into its folder when it
finishes: its overrides and its result. Re-running a job into the same folder (a named run, ``run_name=...``)
returns that stored result instead of training again, and a job whose folder holds an interrupted run of the
same overrides resumes from its ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from strokelab.errors import CheckpointError, ConfigError, DataError
from strokelab.io import atomic_write_text

log = logging.getLogger(__name__)

DONE_NAME = "DONE.json"
LAST_NAME = "last.ckpt"
IDENTITY_IGNORES = frozenset({"ckpt_path"})  # where a job resumed from does not change which job it is


# -- atomic checkpoint files ------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (the directory entry), where the OS allows opening directories."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durably(path: Path, write) -> None:
    """``write(binary file)`` into a new temporary file beside ``path`` (the :func:`temp_pattern` name),
    fsync it, rename it over ``path`` and fsync the folder; on any failure the temporary file is removed and
    ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def temp_pattern(path: str | Path) -> str:
    """The glob of the temporary files ``AtomicCheckpointIO`` writes beside ``path`` (``.last.ckpt.<hex>.tmp``)."""
    path = Path(path)
    return os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that replaces a checkpoint atomically and durably: temporary file in the same
    folder, fsync, ``os.replace``, fsync of the folder. A save interrupted at any point (exception, SIGKILL,
    power cut) leaves the previous checkpoint intact; the next successful save of the same file removes the
    temporary files such interruptions left. Remote paths (``s3://`` ...) go through Lightning's own saving."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)  # Lightning's checks and remote writes
            return
        path = Path(path)
        _write_durably(path, lambda f: torch.save(checkpoint, f))  # streamed: no second copy in memory
        for stale in glob.glob(temp_pattern(path)):  # left by a save that was killed before its rename
            Path(stale).unlink(missing_ok=True)


# -- random streams and the patch queue ------------------------------------------------------------


def collect_rng_state() -> dict[str, Any]:
    """This process's random states (torch, numpy, Python, and CUDA's on this process's device when it uses
    one) as tensors and plain types, so that a checkpoint holding them still loads with
    ``torch.load(weights_only=True)``. Only the current CUDA device: under DDP each process owns one, and
    reading every device's state would open a CUDA context on each GPU from every process."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": gauss},
        "python": {"version": int(version), "state": [int(v) for v in state], "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what ``collect_rng_state`` stored (the CUDA state on this process's current device)."""
    torch.set_rng_state(state["torch"])
    if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    nps = state["numpy"]
    np.random.set_state(("MT19937", nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def training_queue(trainer: Any) -> Any | None:
    """The TorchIO ``Queue`` behind the trainer's training loader, or None (another kind of loader)."""
    import torchio as tio

    loader = getattr(trainer, "train_dataloader", None)
    dataset = getattr(loader, "dataset", None)
    return dataset if isinstance(dataset, tio.Queue) else None


def queue_at_pass_end(queue: Any) -> bool:
    """Whether the queue holds nothing of the next epoch: no patches left, no half-sampled subject, and every
    subject of the current pass drawn. Then its next fill starts a new pass (a new subject order), which a
    resumed run can reproduce; otherwise (``trainer.limit_train_batches``, or patches of a subject split across
    epochs) the next epoch's first patches exist only in the memory of the killed process."""
    return (
        not getattr(queue, "patches_list", [None])
        and getattr(queue, "_incomplete_subject", True) is None
        and getattr(queue, "_num_sampled_subjects", -1) >= queue.num_subjects
    )


def restart_queue_pass(queue: Any) -> None:
    """Put the queue in the state the uninterrupted run has between two passes: empty, and with its subject
    iterator exhausted, so that its next fill draws a new subject order from the (restored) random state."""
    queue.patches_list = []
    queue._incomplete_subject = None
    queue._num_patches_incomplete = 0
    queue._subjects_iterable = iter(())


def _gather(trainer: Any, obj: Any) -> list[Any]:
    """``obj`` of every process, by global rank (all processes reach this: Lightning dumps checkpoints on all)."""
    if getattr(trainer, "world_size", 1) <= 1:
        return [obj]
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(folder)


def carry_checkpoint_state(state: dict[str, Any], new_dir: str, is_zero: bool) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state saved in another folder, moved to ``new_dir``: the checkpoints it ranks
    (``best.ckpt`` ...) are copied there (atomically, by process 0) and its paths point there, so the resumed
    run keeps comparing new epochs with the best of the earlier ones. Lightning would otherwise drop the
    scores and save the first epoch after resuming as the best."""
    old_dir = state.get("dirpath")
    moved: dict[str, str] = {}
    best_k: dict[str, Any] = {}
    for path, score in (state.get("best_k_models") or {}).items():
        if not (_within(path, old_dir) and os.path.isfile(path)):
            continue  # deleted meanwhile: it cannot be chosen any more
        target = os.path.join(new_dir, os.path.basename(path))
        if is_zero and not os.path.exists(target):
            _copy_atomically(Path(path), Path(target))
        moved[path] = target
        best_k[target] = score
    out = dict(state, dirpath=new_dir, best_k_models=best_k)
    for key in ("best_model_path", "kth_best_model_path"):
        out[key] = moved.get(state.get(key) or "", "")
    last = state.get("last_model_path") or ""
    out["last_model_path"] = os.path.join(new_dir, os.path.basename(last)) if last and _within(last, old_dir) else ""
    if out["best_model_path"] == "":
        out["best_model_score"] = None
    return out


def _copy_atomically(src: Path, dst: Path) -> None:
    def copy(fout) -> None:
        with open(src, "rb") as fin:
            while chunk := fin.read(1 << 24):
                fout.write(chunk)

    _write_durably(dst, copy)


class ResumeState(Callback):
    """Makes a run resumed from a checkpoint continue exactly as the uninterrupted run would.

    Saved in every checkpoint: each process's random states and whether its patch queue was between two
    passes, and ``job``, the overrides of the job that wrote it (see ``interrupted_checkpoint``). On resume,
    at the start of the first epoch, each process gets its random states back and its patch queue restarts
    a pass, which is exactly where the uninterrupted run stood (the checkpoint is written after the epoch's
    last random draw, and its next draw is the next epoch's). ``ModelCheckpoint`` states saved in another
    folder are moved to this run's (``carry_checkpoint_state``)."""

    def __init__(self, job: Sequence[str] | None = None):
        self.job = list(job) if job is not None else None
        self._trainer: Any = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:
            return {}
        queue = training_queue(trainer)
        mine = {"rng": collect_rng_state(), "queue_at_pass_end": None if queue is None else queue_at_pass_end(queue)}
        return {"ranks": _gather(trainer, mine), "job": self.job}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        for cb in trainer.callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.dirpath or cb.state_key not in states:
                continue
            saved = states[cb.state_key]
            if saved.get("dirpath") and os.path.realpath(saved["dirpath"]) != os.path.realpath(cb.dirpath):
                log.info("carrying the checkpoint ranking of %s into %s", saved["dirpath"], cb.dirpath)
                states[cb.state_key] = carry_checkpoint_state(saved, cb.dirpath, trainer.is_global_zero)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._pending is None:
            return
        ranks, self._pending = self._pending.get("ranks") or [], None
        if not ranks:
            return
        if len(ranks) != trainer.world_size:
            log.warning(
                "the checkpoint was written by %d processes and is resumed on %d: random streams differ from the "
                "uninterrupted run's",
                len(ranks),
                trainer.world_size,
            )
        mine = ranks[min(trainer.global_rank, len(ranks) - 1)]
        set_rng_state(mine["rng"])
        queue = training_queue(trainer)
        if queue is not None:
            restart_queue_pass(queue)
        # Lightning makes the first epoch's data iterator (and prefetches its first batch) when the fit starts,
        # before this hook, and later epochs' after it. An uninterrupted run's epoch k+1 is a later epoch: where
        # Lightning will not make it again below this hook, make it now, from the restored state.
        fit_loop = trainer.fit_loop
        lightning_iterates = trainer.current_epoch > 0 and not fit_loop.is_resuming and not fit_loop.epoch_loop.restarting
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if not lightning_iterates and fetcher is not None:
            iter(fetcher)
        if queue is not None:
            if mine.get("queue_at_pass_end") is False:
                log.warning(
                    "resumed from a checkpoint written in the middle of a pass of the patch queue (trainer."
                    "limit_train_batches, or data.queue_length not a multiple of data.samples_per_volume): the "
                    "following epochs draw other patches than the uninterrupted run"
                )


# -- jobs: done once, resumed in place ---------------------------------------------------------------


def job_identity(overrides: Sequence[str]) -> list[str]:
    """What makes a job this job: its command-line overrides, sorted, without ``ckpt_path``."""
    return sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in IDENTITY_IGNORES)


def _difference(stored: Sequence[str], current: Sequence[str]) -> str:
    old = sorted(set(stored) - set(current))
    new = sorted(set(current) - set(stored))
    text = f"it has {' '.join(old) or 'nothing else'}, this job {' '.join(new) or 'nothing else'}"
    return text if len(text) <= 300 else text[:297] + "..."


def finished_job(output_dir: str | Path, identity: Sequence[str]) -> dict[str, Any] | None:
    """The ``DONE.json`` record of this job in ``output_dir``, or None when it has not finished there.
    A folder finished by a job with other overrides is refused: training would overwrite its results."""
    path = Path(output_dir) / DONE_NAME
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
        stored = list(done["overrides"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(path, "is not a readable record of a finished job", "delete it to run the job again") from None
    if stored != list(identity):
        raise ConfigError(
            path,
            f"this folder holds a finished job with other overrides ({_difference(stored, identity)})",
            "re-run with that job's overrides, or give another run_name",
        )
    return done


def write_done(
    output_dir: str | Path, identity: Sequence[str], result: float | None, monitor: str, best_checkpoint: str | None
) -> Path:
    """Mark the job in ``output_dir`` finished (atomically): its overrides, its result and best checkpoint."""
    from datetime import datetime

    path = Path(output_dir) / DONE_NAME
    record = {
        "overrides": list(identity),
        "result": result,
        "monitor": monitor,
        "best_checkpoint": best_checkpoint,
        "finished": datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def interrupted_checkpoint(output_dir: str | Path, identity: Sequence[str]) -> Path | None:
    """``output_dir/checkpoints/last.ckpt`` when the folder holds an unfinished run of this job (to resume
    from), None when there is none. A checkpoint of other overrides, or one that cannot say which job wrote
    it, is refused: training from scratch would overwrite it."""
    path = Path(output_dir) / "checkpoints" / LAST_NAME
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: one line, never a traceback
        raise CheckpointError(path, "is unreadable or truncated", "move it away to start this job afresh") from None
    job = ((ckpt.get("callbacks") or {}).get(ResumeState.__qualname__) or {}).get("job")
    if job is None:
        raise CheckpointError(
            path,
            "an interrupted run that does not record its overrides (written before resume support)",
            f"resume it with ckpt_path={path}, or move the folder away",
        )
    if list(job) != list(identity):
        raise ConfigError(
            path,
            f"this folder holds an interrupted job with other overrides ({_difference(job, identity)})",
            "re-run with that job's overrides, or give another run_name",
        )
    return path


def newest_last_checkpoint(log_dir: str | Path, task_name: str) -> Path:
    """``ckpt_path=last``: the most recently written ``checkpoints/last.ckpt`` among the task's runs."""
    pattern = Path(log_dir) / task_name / "runs" / "*" / "checkpoints" / LAST_NAME
    found = [Path(p) for p in glob.glob(str(pattern))]
    if not found:
        raise CheckpointError(
            pattern, "no checkpoint to resume from (ckpt_path=last)", "train once first, or give ckpt_path=PATH"
        )
    return max(found, key=lambda p: p.stat().st_mtime_ns)

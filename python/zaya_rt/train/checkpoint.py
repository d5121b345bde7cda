"""Atomic training checkpoints: each is written into a temporary folder, fsynced and renamed into place, so
a reader finds complete checkpoints only; the last K are kept (SPEC section 7). Sharded tensors go through
torch.distributed.checkpoint (DCP), so a checkpoint written at one world size loads at another."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from typing import Callable

import torch
import torch.distributed.checkpoint as dcp

from zaya_rt.model.checkpoint import save as save_model

_NAME = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-step-"


def _fsync_tree(root: str) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_steps(out_dir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in out_dir (folders `step-NNNNNNNN`), ascending."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(int(m.group(1)) for name in os.listdir(out_dir) if (m := _NAME.match(name)))


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> str:
    return os.path.join(os.fspath(out_dir), f"step-{step:08d}")


def clear_run_dir(out_dir: str | os.PathLike, *names: str) -> None:
    """Deletes a run's checkpoints (`step-NNNNNNNN`), its `final` model and the named files or folders in it
    (its metrics log): what a `--fresh` start removes. Anything else in out_dir stays."""
    for step in checkpoint_steps(out_dir):
        shutil.rmtree(checkpoint_path(out_dir, step))
    for name in ("final", *names):
        path = os.path.join(os.fspath(out_dir), name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def save_final_model(model, out_dir: str | os.PathLike) -> str:
    """Writes the model to out_dir/final in the zaya_rt checkpoint layout, atomically (a temporary folder renamed
    over any earlier one); returns the folder."""
    final = os.path.join(os.fspath(out_dir), "final")
    tmp = os.path.join(os.fspath(out_dir), ".tmp-final")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> str | None:
    """The folder of the newest complete checkpoint, or None. Half-written ones (temporary folders) are never
    returned."""
    steps = checkpoint_steps(out_dir)
    return checkpoint_path(out_dir, steps[-1]) if steps else None


def save_checkpoint(out_dir: str | os.PathLike, step: int, write: Callable[[str], None], keep: int, *,
                    coordinator: bool = True, barrier: Callable[[], None] = lambda: None) -> str:
    """Writes checkpoint `step` atomically and keeps only the newest `keep` checkpoints.

    write(folder) fills a fresh temporary folder; its files are fsynced, the folder is renamed to
    out_dir/step-NNNNNNNN and out_dir is fsynced. Leftover temporary folders of interrupted saves are removed.
    Returns the checkpoint folder. Several processes writing one checkpoint (torch.distributed) all call this:
    the coordinator alone prepares, renames and prunes, barrier() keeps them in step, every one calls write.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be a non-negative int, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"save_checkpoint: keep must be a positive int, got {keep!r}")
    out_dir = os.fspath(out_dir)
    final = checkpoint_path(out_dir, step)
    tmp = os.path.join(out_dir, f"{_TMP_PREFIX}{step:08d}")
    if coordinator:
        os.makedirs(out_dir, exist_ok=True)
        for name in os.listdir(out_dir):
            if name.startswith(_TMP_PREFIX):
                shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        if os.path.exists(final):
            raise ValueError(f"save_checkpoint: {final} already exists")
        os.makedirs(tmp)
    barrier()
    try:
        write(tmp)
        barrier()
        if coordinator:
            _fsync_tree(tmp)
            os.rename(tmp, final)
    except BaseException:
        if coordinator:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if coordinator:
        _fsync_dir(out_dir)
        for old in checkpoint_steps(out_dir)[:-keep]:
            shutil.rmtree(checkpoint_path(out_dir, old))
    barrier()
    return final


def write_sharded(folder: str, tensors: dict[str, torch.Tensor]) -> None:
    """Writes named tensors (plain, or DTensors holding this rank's shard of a global tensor) into folder with
    torch.distributed.checkpoint; collective when a process group exists."""
    with _single_process_quiet():
        dcp.save(tensors, checkpoint_id=folder, no_dist=not torch.distributed.is_initialized())


def read_sharded(folder: str, tensors: dict[str, torch.Tensor]) -> None:
    """Loads a write_sharded checkpoint in place into `tensors` (same names, any sharding and world size); a
    missing name or a shape that differs raises."""
    with _single_process_quiet():
        dcp.load(tensors, checkpoint_id=folder, no_dist=not torch.distributed.is_initialized())


@contextlib.contextmanager
def _single_process_quiet():
    """Silences DCP's warning that a single process (no process group) is meant to save or load alone: it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield

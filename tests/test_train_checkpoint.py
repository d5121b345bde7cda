"""zaya_rt.train atomic checkpoints: temporary folder + fsync + rename, last K kept, half-written ones never
found (also after SIGKILL mid-write)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from zaya_rt.train import checkpoint as ckpt


def writer(payload):
    def write(folder):
        with open(os.path.join(folder, "state.txt"), "w") as f:
            f.write(payload)
    return write


def test_save_keep_last_k(tmp_path):
    for step in (5, 10, 15, 20):
        path = ckpt.save_checkpoint(tmp_path, step, writer(f"s{step}"), keep=2)
        assert open(os.path.join(path, "state.txt")).read() == f"s{step}"
    assert ckpt.checkpoint_steps(tmp_path) == [15, 20]
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_path(tmp_path, 20)
    assert sorted(os.listdir(tmp_path)) == ["step-00000015", "step-00000020"]


def test_failed_write_leaves_nothing(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, writer("one"), keep=3)

    def broken(folder):
        writer("half")(folder)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, broken, keep=3)
    assert ckpt.checkpoint_steps(tmp_path) == [1] and os.listdir(tmp_path) == ["step-00000001"]


def test_empty_and_bad_arguments(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None
    assert ckpt.latest_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match="keep"):
        ckpt.save_checkpoint(tmp_path, 1, writer("x"), keep=0)
    with pytest.raises(ValueError, match="step"):
        ckpt.save_checkpoint(tmp_path, -1, writer("x"), keep=1)
    ckpt.save_checkpoint(tmp_path, 1, writer("x"), keep=1)
    with pytest.raises(ValueError, match="already exists"):
        ckpt.save_checkpoint(tmp_path, 1, writer("x"), keep=1)


CHILD = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("ckpt", sys.argv[1])
ckpt = importlib.util.module_from_spec(spec); spec.loader.exec_module(ckpt)
def slow(folder):
    with open(os.path.join(folder, "state.txt"), "w") as f:
        f.write("partial")
    open(os.path.join(folder, "..", "started"), "w").close()
    time.sleep(60)
ckpt.save_checkpoint(sys.argv[2], 2, slow, keep=3)
"""


def test_sigkill_mid_write_is_never_loaded(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, writer("complete"), keep=3)
    child = subprocess.Popen([sys.executable, "-c", CHILD, ckpt.__file__, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert any(n.startswith(".tmp-step-") for n in os.listdir(tmp_path))  # the half-written save is there
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_path(tmp_path, 1)
    ckpt.save_checkpoint(tmp_path, 3, writer("next"), keep=3)  # and is swept by the next save
    assert not any(n.startswith(".tmp-step-") for n in os.listdir(tmp_path))
    assert ckpt.checkpoint_steps(tmp_path) == [1, 3]

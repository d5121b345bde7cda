"""`zaya-rt train` killed with SIGKILL after a checkpoint and rerun with the same command logs exactly the
uninterrupted run's per-step losses; half-written checkpoints are never loaded; --fresh starts over."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import subprocess_env
from train_helpers import raw_config, runs_corpus, to_toml

STEPS, EVERY = 24, 4


def _command(cfg) -> list[str]:
    return [sys.executable, "-m", "zaya_rt", "train", "--config", str(cfg), "--no-progress"]


def _env() -> dict:
    return subprocess_env(OMP_NUM_THREADS="2")


def _metrics(out_dir) -> list[dict]:
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _sharded(folder, tmp_path) -> dict:
    """A checkpoint's DCP tensors (weights, optimizer states) as one flat dict."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / "flat.pt"
    dcp_to_torch_save(folder, out)
    return torch.load(out, weights_only=False)


def _config(tmp_path, name, data) -> str:
    raw = raw_config(data, tmp_path / name, steps=STEPS, checkpoint_every=EVERY, keep_checkpoints=2,
                     warmup_steps=2, decay_steps=6, grad_accum=2)
    raw["balancer"]["skip_target"] = 0.2
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(to_toml(raw))
    return cfg


def test_sigkill_then_rerun_reproduces_losses_exactly(tmp_path):
    data = tmp_path / "runs.jsonl"
    runs_corpus(data, docs=120, seed=3)
    straight_cfg, killed_cfg = _config(tmp_path, "straight", data), _config(tmp_path, "killed", data)
    subprocess.run(_command(straight_cfg), env=_env(), check=True, capture_output=True, timeout=600)
    straight = [m["loss"] for m in _metrics(tmp_path / "straight")]
    assert len(straight) == STEPS

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_command(killed_cfg), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    # Kill between checkpoints: after step 2 * EVERY + 1 is logged, so the rerun must redo logged steps.
    while len(_metrics(killed_dir)) < 2 * EVERY + 1:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = len(_metrics(killed_dir))
    assert logged < STEPS and not os.path.exists(killed_dir / "final"), "the run finished before it was killed"
    complete = sorted(n for n in os.listdir(killed_dir) if n.startswith("step-"))
    assert complete and complete[-1] >= f"step-{2 * EVERY:08d}"
    # A half-written checkpoint of a later step, as a kill during a save leaves it: never loaded.
    half = killed_dir / f".tmp-step-{STEPS - 1:08d}"
    half.mkdir()
    (half / "trainer.pt").write_bytes(b"\x80\x02truncated")

    rerun = subprocess.run(_command(killed_cfg), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    resumed_at = int(complete[-1].split("-")[1])
    assert f"resuming from {killed_dir / complete[-1]} (step {resumed_at})" in rerun.stderr
    resumed = [m["loss"] for m in _metrics(killed_dir)]
    assert [m["step"] for m in _metrics(killed_dir)] == list(range(1, STEPS + 1))
    assert resumed == straight  # bit-exact, as floats written by json
    assert not half.exists()
    assert sorted(n for n in os.listdir(killed_dir) if n.startswith("step-")) == [
        f"step-{STEPS - EVERY:08d}", f"step-{STEPS:08d}"]
    a = torch.load(killed_dir / f"step-{STEPS:08d}" / "trainer.pt", weights_only=False)
    b = torch.load(tmp_path / "straight" / f"step-{STEPS:08d}" / "trainer.pt", weights_only=False)
    wa = _sharded(killed_dir / f"step-{STEPS:08d}", tmp_path)
    wb = _sharded(tmp_path / "straight" / f"step-{STEPS:08d}", tmp_path)
    assert wa.keys() == wb.keys() and any(k.startswith("model.") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(x, y) for x, y in zip(a["balancer"]["biases"], b["balancer"]["biases"], strict=True))

    # --fresh starts over: no resume message, the same losses again from step 1.
    fresh = subprocess.run(_command(killed_cfg) + ["--fresh"], env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stderr
    assert [m["loss"] for m in _metrics(killed_dir)] == straight


def test_rerun_with_another_config_refuses_to_resume(tmp_path):
    data = tmp_path / "runs.jsonl"
    runs_corpus(data, docs=40, seed=4)
    raw = raw_config(data, tmp_path / "o", steps=2, checkpoint_every=1, warmup_steps=0, decay_steps=0)
    cfg = tmp_path / "run.toml"
    cfg.write_text(to_toml(raw))
    subprocess.run(_command(cfg), env=_env(), check=True, capture_output=True, timeout=600)
    raw["train"]["lr"] = 3e-2
    cfg.write_text(to_toml(raw))
    rerun = subprocess.run(_command(cfg), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 2 and "--fresh" in rerun.stderr

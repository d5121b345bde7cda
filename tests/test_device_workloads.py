"""bench/device_check.sh --dry-run: the device script's workloads (the 2-rank trainer on gloo, the training step
against transformers, RSA decode through the Engine) run their Python on the CPU with tiny shapes, so that the
script cannot rot between GPU runs. Checks the exit status and that every workload printed its result line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def test_device_script_dry_run_runs_every_workload():
    env = subprocess_env()
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "bench/device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "gloo (dry run) FSDP2 vs gloo (dry run) FSDP2+EP2" in out
    assert "train step, 2 tiny (dry run) layers" in out and "tokens/s" in out
    rsa_rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["2", "40"], ["3", "72"])]
    assert len(rsa_rows) == 2 and all(len(r) == 8 for r in rsa_rows), out[-2000:]
    assert "dry run done: trainer passed, workloads ran" in out


def test_device_workloads_refuse_a_real_run_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run([sys.executable, "-m", "zaya_rt.benchmarks.device_workloads", "rsa"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode != 0 and "no GPU visible" in proc.stderr


def test_device_script_rejects_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "bench/device_check.sh"), "--dry"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "usage" in proc.stdout

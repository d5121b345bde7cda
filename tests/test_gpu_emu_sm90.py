"""The sm_90a wgmma attention forward (cuda/attention_sm90.cuh) under host emulation, against the float64
reference: tools/gpu_emu builds the kernel with g++, its PTX (wgmma descriptors, fragments, async groups, quad
shuffles) replaced by tools/gpu_emu/cuda/sm90_ptx.cuh, and runs ragged / GQA 1-8 / d 64, 128 / causal / window
cases in bf16 and fp16. The only check of that kernel's numerics on a machine without an H100/H200."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to build the emulator")
def test_sm90_attention_forward_emulated():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    r = subprocess.run([sys.executable, str(ROOT / "tools/gpu_emu/check_attention_cca.py"), "--only-sm90"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "sm90: 0 failures" in r.stdout
    assert r.stdout.count("ok   sm90") >= 12  # out and lse of every case ran

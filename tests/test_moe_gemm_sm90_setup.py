"""Host-only check of the sm_90a CUTLASS grouped GEMM's per-group setup (cuda/moe_gemm_sm90_setup.h): the rows,
operand offsets and workspace layout that its device setup kernel computes from the offsets, compiled with the
host C++ compiler from tests/cpp/moe_gemm_sm90_setup_test.cpp. No GPU or CUDA toolkit needed."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


@pytest.mark.skipif(_compiler() is None, reason="needs a host C++ compiler")
def test_sm90_group_setup(tmp_path):
    exe = tmp_path / "setup_test"
    src = os.path.join(ROOT, "tests", "cpp", "moe_gemm_sm90_setup_test.cpp")
    subprocess.run([_compiler(), "-std=c++17", "-O1", "-Wall", "-Werror", "-I", ROOT, src, "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr

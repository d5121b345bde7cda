import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from zaya_rt import _C  # noqa: E402

CPU_ISAS = ("base", "avx2", "avx512")


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs a test once per CPU kernel build this machine supports (skips the others)."""
    previous = _C.cpu_isa()
    active = _C.set_cpu_isa(request.param)
    if active != request.param:
        _C.set_cpu_isa(previous)
        pytest.skip(f"CPU lacks {request.param}")
    yield active
    _C.set_cpu_isa(previous)


def tolerance(dtype: torch.dtype) -> float:
    """Max error relative to the output's scale, for a kernel vs the float64 reference."""
    return {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]

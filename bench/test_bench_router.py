"""pytest-benchmark for zaya_router against the unfused PyTorch composition (run: pytest bench --benchmark-only).

Each case benchmarks ours and the peer in the same session under the same group; `zaya-rt bench --ops router`
prints the same cases as one table. On the CPU only the decode sizes run (prefill takes seconds a call there).
"""

import pytest
import torch
from case_params import each_case

from zaya_rt.benchmarks import router_cases
from zaya_rt.benchmarks.router import router_fwd_bwd_cases

CASES = [("cpu", 1), ("cpu", 16)] + [pytest.param("cuda", T, marks=pytest.mark.cuda) for T in (1, 16, 4096, 16384)]


@pytest.mark.parametrize(("device", "tokens"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_router(run_case, device, tokens, dtype, side):
    (case,) = router_cases(device, tokens=(tokens,), dtypes=(dtype,))
    run_case(case, device, side)


@each_case(len(router_fwd_bwd_cases("cpu")))
def test_router_fwd_bwd(run_case, device, index, side):
    """zaya_router forward + backward against ref.zaya_router under autograd (T 2048, D 512 and 2048 on CPU)."""
    run_case(router_fwd_bwd_cases(device)[index], device, side, rounds=3)

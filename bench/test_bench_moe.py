"""pytest-benchmark for moe_experts against its peers (dense chain, transformers' loop, torch._grouped_mm)."""

import pytest

from zaya_rt.benchmarks import moe_cases
from zaya_rt.benchmarks.moe import moe_fwd_bwd_cases

SHAPES = [(4096, 512, 512, 16), (16, 512, 512, 16)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(moe_cases("cpu", shapes=SHAPES))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_moe(run_case, device, index, side):
    case = moe_cases(device, shapes=SHAPES)[index]
    run_case(case, device, side, rounds=5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(moe_fwd_bwd_cases("cpu"))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_moe_fwd_bwd(run_case, device, index, side):
    """moe_experts forward + backward against torch._grouped_mm under autograd (T 2048, D = I = 512, E 16 on CPU)."""
    case = moe_fwd_bwd_cases(device)[index]
    run_case(case, device, side, rounds=3)

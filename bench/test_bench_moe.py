"""pytest-benchmark for moe_experts against its peers (dense chain, transformers' loop, torch._grouped_mm)."""

import pytest

from zaya_rt.benchmarks import moe_cases

SHAPES = [(4096, 512, 512, 16), (16, 512, 512, 16)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(moe_cases("cpu", shapes=SHAPES))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_moe(run_case, device, index, side):
    case = moe_cases(device, shapes=SHAPES)[index]
    run_case(case, device, side, rounds=5)

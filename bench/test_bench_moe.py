"""pytest-benchmark for moe_experts against its peers (dense chain, transformers' loop, torch._grouped_mm)."""

from case_params import each_case

from zaya_rt.benchmarks import moe_cases
from zaya_rt.benchmarks.moe import moe_fwd_bwd_cases

SHAPES = [(4096, 512, 512, 16), (16, 512, 512, 16)]


@each_case(len(moe_cases("cpu", shapes=SHAPES)))
def test_moe(run_case, device, index, side):
    run_case(moe_cases(device, shapes=SHAPES)[index], device, side, rounds=5)


@each_case(len(moe_fwd_bwd_cases("cpu")))
def test_moe_fwd_bwd(run_case, device, index, side):
    """moe_experts forward + backward against torch._grouped_mm under autograd (T 2048, D = I = 512, E 16 on CPU)."""
    run_case(moe_fwd_bwd_cases(device)[index], device, side, rounds=3)

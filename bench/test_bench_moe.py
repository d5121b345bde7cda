"""pytest-benchmark for moe_experts against its peers (dense chain, transformers' loop, torch._grouped_mm)."""

import pytest
import torch

from zaya_rt.benchmarks import moe_cases

SHAPES = [(4096, 512, 512, 16), (16, 512, 512, 16)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(moe_cases("cpu", shapes=SHAPES))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_moe(benchmark, device, index, side):
    case = moe_cases(device, shapes=SHAPES)[index]
    benchmark.group = f"{device} {case.op} {case.shape} {case.dtype} vs {case.peer_name}"
    fn = case.ours if side == "ours" else case.peer
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1) if device == "cpu" else benchmark(
            lambda: (fn(), torch.cuda.synchronize()))

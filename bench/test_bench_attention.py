"""pytest-benchmark for attention_varlen (prefill) and attention_decode against SDPA."""

import pytest
import torch

from zaya_rt.benchmarks import decode_cases, prefill_cases

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DECODE_SHAPES = [(1, 4096), (16, 8192)]


def _cases(device):
    return prefill_cases(device, tokens=(2048,)) + decode_cases(device, shapes=DECODE_SHAPES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(_cases("cpu"))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_attention(benchmark, device, index, side):
    case = _cases(device)[index]
    benchmark.group = f"{device} {case.op} {case.shape} {case.dtype} vs {case.peer_name}"
    fn = case.ours if side == "ours" else case.peer
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=3, warmup_rounds=1) if device == "cpu" else benchmark(
            lambda: (fn(), torch.cuda.synchronize()))

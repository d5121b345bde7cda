"""pytest-benchmark for attention_varlen (prefill) and attention_decode against SDPA."""

import pytest

from zaya_rt.benchmarks import decode_cases, prefill_cases

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DECODE_SHAPES = [(1, 4096), (16, 8192)]


def _cases(device):
    return prefill_cases(device, tokens=(2048,)) + decode_cases(device, shapes=DECODE_SHAPES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(_cases("cpu"))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_attention(run_case, device, index, side):
    case = _cases(device)[index]
    run_case(case, device, side, rounds=3)

"""pytest-benchmark for attention_varlen (prefill, and forward + backward under autograd) and attention_decode
against SDPA."""

import pytest

from zaya_rt.benchmarks import decode_cases, prefill_cases
from zaya_rt.benchmarks.attention import FWD_BWD_SHAPES, attention_fwd_bwd_cases

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


FWD_BWD = [("cpu", i) for i in range(2 * len(FWD_BWD_SHAPES["cpu"]))] + [
    pytest.param("cuda", i, marks=pytest.mark.cuda) for i in range(2 * len(FWD_BWD_SHAPES["cuda"]))
]  # two dtypes per shape


@pytest.mark.parametrize(("device", "index"), FWD_BWD)
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_attention_fwd_bwd(run_case, device, index, side):
    run_case(attention_fwd_bwd_cases(device)[index], device, side, rounds=5)

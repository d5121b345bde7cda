"""pytest-benchmark for attention_varlen (prefill, and forward + backward under autograd) and attention_decode
against SDPA."""

from case_params import each_case

from zaya_rt.benchmarks import decode_cases, prefill_cases
from zaya_rt.benchmarks.attention import FWD_BWD_SHAPES, attention_fwd_bwd_cases

DECODE_SHAPES = [(1, 4096), (16, 8192)]


def _cases(device):
    return prefill_cases(device, tokens=(2048,)) + decode_cases(device, shapes=DECODE_SHAPES)


@each_case(len(_cases("cpu")))
def test_attention(run_case, device, index, side):
    run_case(_cases(device)[index], device, side, rounds=3)


@each_case(2 * len(FWD_BWD_SHAPES["cpu"]), 2 * len(FWD_BWD_SHAPES["cuda"]))  # two dtypes per shape
def test_attention_fwd_bwd(run_case, device, index, side):
    run_case(attention_fwd_bwd_cases(device)[index], device, side, rounds=5)

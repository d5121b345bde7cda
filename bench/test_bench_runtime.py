"""pytest-benchmark for the runtime ops (sampler, page write/gather) against their PyTorch peers."""

import pytest

from zaya_rt.benchmarks.runtime import page_cases, sampling_cases

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _cases(device):
    return sampling_cases(device, batches=(1, 16)) + page_cases(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(sampling_cases("cpu", batches=(1, 16), vocab=8)) + 3))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_runtime_ops(run_case, device, index, side):
    case = _cases(device)[index]
    run_case(case, device, side)

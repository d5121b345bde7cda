"""pytest-benchmark for the runtime ops (sampler, page write/gather) against their PyTorch peers."""

import pytest
import torch

from zaya_rt.benchmarks.runtime import page_cases, sampling_cases

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _cases(device):
    return sampling_cases(device, batches=(1, 16)) + page_cases(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(sampling_cases("cpu", batches=(1, 16), vocab=8)) + 3))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_runtime_ops(benchmark, device, index, side):
    case = _cases(device)[index]
    benchmark.group = f"{device} {case.op}-{case.shape}-{case.dtype}"
    benchmark.extra_info.update(op=case.op, shape=case.shape, dtype=case.dtype, peer=case.peer_name)
    fn = case.ours if side == "ours" else case.peer
    with torch.inference_mode():
        if device == "cuda":
            def timed():
                fn()
                torch.cuda.synchronize()
            benchmark(timed)
        else:
            benchmark(fn)

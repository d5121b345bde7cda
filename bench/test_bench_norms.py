"""pytest-benchmark for the norms ops and their PyTorch eager peers (run: pytest bench --benchmark-only).

Each case benchmarks ours and the peer in the same session under the same group, so the comparison table
pytest-benchmark prints is the ratio. `zaya-rt bench` prints the same cases as one table.
"""

import pytest
import torch

from zaya_rt.benchmarks import norm_cases

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _ids(case):
    return f"{case.op}-{case.shape}-{case.dtype}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(norm_cases("cpu", tokens=(1, 16, 4096)))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_norms(benchmark, device, index, side):
    case = norm_cases(device, tokens=(1, 16, 4096))[index]
    benchmark.group = f"{device} {_ids(case)}"
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

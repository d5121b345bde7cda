"""pytest-benchmark for cca_prep and its unfused PyTorch peer (run: pytest bench --benchmark-only).

Each case benchmarks ours and the peer in the same session under the same group; `zaya-rt bench --ops cca`
prints the same cases as one table.
"""

import pytest
import torch

from zaya_rt.benchmarks import cca_cases

SHAPES = ((1, 2048), (1, 1), (16, 1))


def _ids(case):
    return f"{case.op}-{case.shape}-{case.dtype}"


@pytest.mark.parametrize("index", range(len(cca_cases("cpu", shapes=SHAPES))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_cca_prep(benchmark, index, side):
    case = cca_cases("cpu", shapes=SHAPES)[index]
    benchmark.group = f"cpu {_ids(case)}"
    benchmark.extra_info.update(op=case.op, shape=case.shape, dtype=case.dtype, peer=case.peer_name)
    fn = case.ours if side == "ours" else case.peer
    with torch.inference_mode():
        benchmark(fn)

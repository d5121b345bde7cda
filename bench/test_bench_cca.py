"""pytest-benchmark for cca_prep and its unfused PyTorch peer (run: pytest bench --benchmark-only).

Each case benchmarks ours and the peer in the same session under the same group; `zaya-rt bench --ops cca`
prints the same cases as one table.
"""

import pytest

from zaya_rt.benchmarks import cca_cases

SHAPES = ((1, 2048), (1, 1), (16, 1))


@pytest.mark.parametrize("index", range(len(cca_cases("cpu", shapes=SHAPES))))
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_cca_prep(run_case, index, side):
    case = cca_cases("cpu", shapes=SHAPES)[index]
    run_case(case, "cpu", side)

"""The parametrization of the bench/ tests: every (device, case index, side) of a zaya_rt.benchmarks builder."""

import pytest

SIDES = ("ours", "peer")


def each_case(count: int, cuda_count: int | None = None):
    """pytest.mark.parametrize over (device, index, side): `count` CPU cases and `cuda_count` (default: as many)
    CUDA ones, which carry the `cuda` mark (skipped without a GPU), each timed as "ours" and as "peer"."""
    cuda_count = count if cuda_count is None else cuda_count
    params = [("cpu", i, side) for i in range(count) for side in SIDES]
    params += [pytest.param("cuda", i, side, marks=pytest.mark.cuda) for i in range(cuda_count) for side in SIDES]
    return pytest.mark.parametrize(("device", "index", "side"), params)

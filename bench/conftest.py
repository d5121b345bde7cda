"""Shared pytest-benchmark plumbing: the CUDA skip and the one benchmark body every op family uses."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def run_case(benchmark):
    """Benchmark one side ("ours" or "peer") of a `zaya_rt.benchmarks` case under the case's group.

    Both sides share the group name, so pytest-benchmark's table is the ratio. `rounds` pins the CPU round
    count for cases that take ~0.1 s or more a call; CUDA calls synchronize inside the timed body.
    """

    def run(case, device: str, side: str, rounds: int | None = None) -> None:
        benchmark.group = f"{device} {case.op}-{case.shape}-{case.dtype} vs {case.peer_name}"
        benchmark.extra_info.update(op=case.op, shape=case.shape, dtype=case.dtype, peer=case.peer_name)
        fn = case.ours if side == "ours" else case.peer
        with torch.inference_mode():
            if device == "cuda":
                benchmark(lambda: (fn(), torch.cuda.synchronize()))
            elif rounds is not None:
                benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
            else:
                benchmark(fn)

    return run

"""pytest-benchmark for the runtime ops (sampler, page write/gather) against their PyTorch peers."""

from case_params import each_case

from zaya_rt.benchmarks.runtime import page_cases, sampling_cases



def _cases(device):
    return sampling_cases(device, batches=(1, 16)) + page_cases(device)


@each_case(len(sampling_cases("cpu", batches=(1, 16), vocab=8)) + 3)
def test_runtime_ops(run_case, device, index, side):
    run_case(_cases(device)[index], device, side)

"""pytest-benchmark for the norms ops and their PyTorch eager peers (run: pytest bench --benchmark-only).

Each case benchmarks ours and the peer in the same session under the same group, so the comparison table
pytest-benchmark prints is the ratio. `zaya-rt bench` prints the same cases as one table.
"""

from case_params import each_case

from zaya_rt.benchmarks import norm_cases
from zaya_rt.benchmarks.norms import norm_fwd_bwd_cases



@each_case(len(norm_cases("cpu", tokens=(1, 16, 4096))))
def test_norms(run_case, device, index, side):
    run_case(norm_cases(device, tokens=(1, 16, 4096))[index], device, side)


@each_case(len(norm_fwd_bwd_cases("cpu")))
def test_norms_fwd_bwd(run_case, device, index, side):
    """rms_norm and residual_rms_norm forward + backward against zaya_rt.ref's norms under autograd."""
    run_case(norm_fwd_bwd_cases(device)[index], device, side, rounds=5)

"""Forward + backward benchmark cases per op family (`zaya-rt bench --mode fwd_bwd`): ours (the zaya_rt op and
its backward) against the family's PyTorch autograd peer, timed in the same run.

Each family's case builder lives in its benchmark module under a fixed name, `(device="cpu", shapes=None,
dtypes=(torch.bfloat16, torch.float32)) -> list[Case]`; a build without one reports the family as not available
rather than failing.
"""

from __future__ import annotations

import importlib

from zaya_rt.benchmarks.harness import Case, Result, run_cases

# family -> (module, builder name)
FWD_BWD_BUILDERS = {
    "norms": ("zaya_rt.benchmarks.norms", "norm_fwd_bwd_cases"),
    "moe": ("zaya_rt.benchmarks.moe", "moe_fwd_bwd_cases"),
    "router": ("zaya_rt.benchmarks.router", "router_fwd_bwd_cases"),
    "attention": ("zaya_rt.benchmarks.attention", "attention_fwd_bwd_cases"),
    "cca": ("zaya_rt.benchmarks.cca", "cca_fwd_bwd_cases"),
}


def fwd_bwd_builder(family: str):
    """The case builder of `family` (a FWD_BWD_BUILDERS key), or None when this build has none."""
    module_name, name = FWD_BWD_BUILDERS[family]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, name, None)


def run_fwd_bwd_cases(cases: list[Case], device: str, *, min_time_s: float = 0.2) -> list[Result]:
    """Times ours and the peer of each case with autograd on (the harness's `run_cases` defaults to inference
    mode, where no backward can run), their batches of calls interleaved."""
    return run_cases(cases, device, min_time_s=min_time_s, grad=True)

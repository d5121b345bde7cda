"""A packed training step (ZayaForCausalLM.loss with cu_seqlens, forward + backward) on zaya_rt kernels only:
zaya_rt.model.routes reports, per op, the implementation the op's own rule picks. On the CPU build: the report
for a CUDA build at ZAYA1-8B's shape names no reference fallback; the report matches what a real CPU step calls
(every zaya_rt.ref function watched); a head dim the attention kernels do not take is reported, and seen, as the
reference. Where a GPU exists: a real CUDA step calls no reference function and its profiler op list holds
every zaya_rt kernel op of the forward and the backward.
"""

from __future__ import annotations

import pytest
import torch

import zaya_rt  # noqa: F401  (registers torch.ops.zaya_rt)
from conftest import NEEDS_GPU
from zaya_rt import ref
from zaya_rt.benchmarks.e2e import CONFIG_8B_SHAPED
from zaya_rt.model import ZayaConfig, ZayaForCausalLM
from zaya_rt.model.routes import COMPOSED, KERNEL, REFERENCE, TORCH, UNAVAILABLE, training_step_routes

# zaya_rt.ref functions that kernel paths use as helpers (tables), not as a fallback for an op.
HELPERS = {"rope_inv_freq"}
TINY = dict(vocab_size=61, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            moe_intermediate_size=24, num_experts=4, router_hidden_size=16, num_hidden_layers=2,
            layer_types=["hybrid", "hybrid_sliding"], sliding_window=5, cca_time0=2, cca_time1=2)


def _config(**kw) -> ZayaConfig:
    kw = dict(max_position_embeddings=8192, **kw) if "max_position_embeddings" not in kw else kw
    return ZayaConfig(bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)


@pytest.fixture
def ref_calls(monkeypatch):
    """Names of the zaya_rt.ref functions called (besides HELPERS) while the fixture is active."""
    calls: list[str] = []
    for name in dir(ref):
        fn = getattr(ref, name)
        if callable(fn) and not isinstance(fn, type) and not name.startswith("_") and name not in HELPERS:
            def watched(*a, _fn=fn, _name=name, **k):
                calls.append(_name)
                return _fn(*a, **k)
            monkeypatch.setattr(ref, name, watched)
    return calls


def _step(cfg: ZayaConfig, device: str, dtype: torch.dtype, lens=(7, 1, 12, 4)):
    model = ZayaForCausalLM(cfg).init_random(seed=0, std=0.2).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (sum(lens),), generator=gen).to(device)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    labels = torch.cat([ids[1:], ids.new_full((1,), -100)])
    model.loss(ids, labels, cu_seqlens=cu).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("backend", ["cuda", "hip"])
def test_gpu_training_step_at_8b_shape_takes_no_reference(dtype, backend):
    cfg = _config(**CONFIG_8B_SHAPED, num_hidden_layers=2)
    routes = training_step_routes(cfg, device_type="cuda", dtype=dtype, gpu_backend=backend)
    assert set(routes.values()) <= {KERNEL, COMPOSED, TORCH}, routes
    for op in ("cca_prep", "cca_prep backward", "attention_varlen", "attention_varlen backward", "zaya_router",
               "moe_experts", "rms_norm backward", "residual_rms_norm backward"):
        assert routes[op] == KERNEL, op


def test_without_a_gpu_backend_the_report_names_the_fallbacks():
    routes = training_step_routes(_config(**TINY), device_type="cuda", dtype=torch.bfloat16, gpu_backend="none")
    assert routes["cca_prep backward"] == routes["zaya_router"] == REFERENCE
    assert routes["rms_norm"] == routes["moe_experts backward"] == UNAVAILABLE


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dtype"):
        training_step_routes(_config(**TINY), device_type="cuda", dtype=torch.float64)
    with pytest.raises(ValueError, match="device_type"):
        training_step_routes(_config(**TINY), device_type="xla", dtype=torch.float32)


def test_cpu_step_calls_what_the_report_says(ref_calls):
    cfg = _config(**TINY)
    routes = training_step_routes(cfg, device_type="cpu", dtype=torch.float32)
    assert REFERENCE not in routes.values()
    _step(cfg, "cpu", torch.float32)
    assert ref_calls == []


def test_reference_attention_is_reported_and_seen(ref_calls):
    cfg = _config(**dict(TINY, head_dim=12))  # below the attention kernels' head dims
    routes = training_step_routes(cfg, device_type="cpu", dtype=torch.float32)
    assert routes["attention_varlen"] == routes["attention_varlen backward"] == REFERENCE
    _step(cfg, "cpu", torch.float32)
    assert set(ref_calls) == {"attention_varlen_ref"}


def _needs_gpu(fn):
    for mark in NEEDS_GPU:
        fn = mark(fn)
    return fn


@_needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_step_runs_zaya_rt_kernels_only(ref_calls, dtype):
    cfg = _config(**dict(TINY, head_dim=64, num_attention_heads=4, num_key_value_heads=2))
    assert set(training_step_routes(cfg, device_type="cuda", dtype=dtype).values()) <= {KERNEL, COMPOSED, TORCH}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _step(cfg, "cuda", dtype)
        torch.cuda.synchronize()
    assert ref_calls == []
    names = {e.name for e in prof.events()}
    for op in ("zaya_rt::cca_prep", "zaya_rt::cca_prep_backward", "zaya_rt::attention_varlen",
               "zaya_rt::attention_varlen_backward", "zaya_rt::zaya_router", "zaya_rt::moe_experts",
               "zaya_rt::grouped_gemm", "zaya_rt::rms_norm_backward", "zaya_rt::residual_rms_norm_backward"):
        assert op in names, f"{op} not in the profiler's op list"

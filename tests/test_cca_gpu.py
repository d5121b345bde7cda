"""GPU CCA prep forward (CUDA or HIP build of zaya_rt._C) vs the float64 reference and the CPU kernel: ragged
packed sequences (empty and single-token ones), with and without state, GQA 1/2/4, partial RoPE, fp32 weights
with 16-bit activations, int32/int64 positions; the backward (which differentiates the reference on GPU);
CUDA-graph capture. Runs only where torch sees a GPU and _C has a GPU backend.
"""

import pytest
import torch

import zaya_rt
from conftest import NEEDS_GPU, tolerance
from zaya_rt import ref
from zaya_rt.benchmarks.harness import capture_cuda_graph

pytestmark = NEEDS_GPU

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEV = "cuda"


def _case(lens, hq, hk, d, k0, k1, dtype, w_dtype, state, pos_dtype, gen):
    T, B = sum(lens), len(lens)
    C, V, K = (hq + hk) * d, hk * d // 2, (k0 - 1) + (k1 - 1)
    r = lambda *s, m=1.0: (torch.randn(*s, generator=gen) * m)  # noqa: E731
    args = dict(
        qp=r(T, hq * d).to(dtype), kp=r(T, hk * d).to(dtype), v_cur=r(T, V).to(dtype), v_del=r(T, V).to(dtype),
        conv0_w=r(C, 1, k0, m=0.5).to(w_dtype), conv0_b=r(C, m=0.1).to(w_dtype),
        conv1_w=r(C, d, k1, m=d ** -0.5).to(w_dtype), conv1_b=r(C, m=0.1).to(w_dtype),
        temp=(torch.rand(hk, generator=gen) + 0.5).to(w_dtype),
        positions=torch.cat([torch.arange(L) + 5 * b for b, L in enumerate(lens)]).to(pos_dtype),
        cu_seqlens=torch.tensor([0, *lens], dtype=torch.int32).cumsum(0).to(torch.int32),
        conv_state=r(B, C, K).to(dtype) if state else None, v_state=r(B, V).to(dtype) if state else None,
    )
    return args


CASES = [
    ([5, 0, 1, 40], 8, 2, 64, 2, 2, 32, True),
    ([300], 4, 4, 128, 2, 2, 64, False),
    ([3, 17], 8, 1, 128, 3, 2, 128, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("w_f32", [False, True])
def test_forward_matches_reference_and_cpu(dtype, case, w_f32):
    lens, hq, hk, d, k0, k1, rd, state = case
    gen = torch.Generator().manual_seed(len(lens) + d)
    a = _case(lens, hq, hk, d, k0, k1, dtype, torch.float32 if w_f32 else dtype, state, torch.int64, gen)
    kw = dict(num_q_heads=hq, num_kv_heads=hk, rope_dims=rd, rope_theta=1e4)
    gpu = zaya_rt.ops.cca_prep(**{n: None if t is None else t.to(DEV) for n, t in a.items()}, **kw)
    cpu = zaya_rt.ops.cca_prep(**a, **kw)
    a64 = {n: (t.double() if t is not None and t.is_floating_point() else t) for n, t in a.items()}
    want = ref.cca_prep(**a64, **kw, norm_eps=torch.finfo(dtype).eps)
    for name, g, c, w in zip(("q", "k", "v", "conv_state", "v_state"), gpu, cpu, want):
        g, c, w = g.cpu().double(), c.double(), w.reshape(c.shape)
        scale = max(w.abs().max().item(), 1e-6) if w.numel() else 1.0
        e_gpu = (g - w).abs().max().item() if w.numel() else 0.0
        e_cpu = (c - w).abs().max().item() if w.numel() else 0.0
        assert e_gpu <= 2 * e_cpu + tolerance(dtype) * scale, f"{name}: GPU error {e_gpu:.3g}, CPU kernel {e_cpu:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_float64_reference(dtype, case):
    lens, hq, hk, d, k0, k1, rd, state = case
    gen = torch.Generator().manual_seed(11 * len(lens) + d)
    a = _case(lens, hq, hk, d, k0, k1, dtype, dtype, state, torch.int64, gen)
    kw = dict(num_q_heads=hq, num_kv_heads=hk, rope_dims=rd, rope_theta=1e4)
    assert zaya_rt.ops.cca.route("cuda", dtype) == "kernel"
    float_names = [n for n, t in a.items() if t is not None and t.is_floating_point()]
    leaves = {n: (t.to(DEV).requires_grad_() if n in float_names else (None if t is None else t.to(DEV)))
              for n, t in a.items()}
    out = zaya_rt.ops.cca_prep(**leaves, **kw)
    grads = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in out]
    torch.autograd.backward(list(out), [g.to(DEV) for g in grads])
    l64 = {n: (t.double().requires_grad_() if n in float_names else t) for n, t in a.items()}
    want = ref.cca_prep(**l64, **kw, norm_eps=torch.finfo(dtype).eps)
    torch.autograd.backward([w.reshape(o.shape) for w, o in zip(want, out)], [g.double() for g in grads])
    for n in float_names:
        g, w = leaves[n].grad.cpu().double(), l64[n].grad
        scale = max(w.abs().max().item(), 1e-6)
        assert (g - w).abs().max().item() <= 4 * tolerance(dtype) * scale + 1e-5 * scale, n


def test_backward_runs_on_gpu():
    gen = torch.Generator().manual_seed(3)
    a = _case([4, 9], 4, 2, 32, 2, 2, 16, torch.float32, torch.float32, True, torch.int32, gen)
    kw = dict(num_q_heads=4, num_kv_heads=2, rope_dims=16, rope_theta=1e4)
    leaves = {n: t.to(DEV).requires_grad_() if t is not None and t.is_floating_point() else
              (None if t is None else t.to(DEV)) for n, t in a.items()}
    out = zaya_rt.ops.cca_prep(**leaves, **kw)
    loss = sum((o.float() ** 2).sum() for o in out[:3])
    loss.backward()
    cpu_leaves = {n: t.requires_grad_() if t is not None and t.is_floating_point() else t for n, t in a.items()}
    out_c = zaya_rt.ops.cca_prep(**cpu_leaves, **kw)
    sum((o.float() ** 2).sum() for o in out_c[:3]).backward()
    for n in ("qp", "kp", "conv1_w", "temp", "conv_state"):
        torch.testing.assert_close(leaves[n].grad.cpu(), cpu_leaves[n].grad, rtol=1e-4, atol=1e-4)


def test_forward_cuda_graph_capture():
    gen = torch.Generator().manual_seed(4)
    a = _case([1, 1, 1], 8, 2, 128, 2, 2, 64, torch.bfloat16, torch.bfloat16, True, torch.int64, gen)
    kw = dict(num_q_heads=8, num_kv_heads=2, rope_dims=64, rope_theta=1e4)
    d_args = {n: None if t is None else t.to(DEV) for n, t in a.items()}
    graph, out = capture_cuda_graph(lambda: zaya_rt.ops.cca_prep(**d_args, **kw))
    graph.replay()
    torch.cuda.synchronize()
    cpu = zaya_rt.ops.cca_prep(**a, **kw)
    for g, c in zip(out, cpu):
        torch.testing.assert_close(g.cpu().float(), c.float(), rtol=2e-2, atol=2e-2)


def test_backward_cuda_graph_capture():
    """The fused backward has no host sync or allocation of its own: it captures, and a replay equals eager."""
    gen = torch.Generator().manual_seed(6)
    a = _case([1, 0, 7, 3], 8, 2, 128, 2, 2, 64, torch.bfloat16, torch.bfloat16, True, torch.int64, gen)
    d = {n: None if t is None else t.to(DEV) for n, t in a.items()}
    T, Hk = a["qp"].shape[0], 2
    gq = torch.randn(T, 8, 128, generator=gen).to(DEV, torch.bfloat16)
    gk = torch.randn(T, Hk, 128, generator=gen).to(DEV, torch.bfloat16)
    gv = torch.randn(T, Hk, 128, generator=gen).to(DEV, torch.bfloat16)
    args = (gq, gk, gv, None, None, d["qp"], d["kp"], d["v_cur"], d["conv0_w"], d["conv0_b"], d["conv1_w"],
            d["conv1_b"], d["temp"], d["positions"], d["cu_seqlens"], d["conv_state"], d["v_state"], 8, 2, 64, 1e4)
    eager = torch.ops.zaya_rt.cca_prep_backward(*args)
    graph, out = capture_cuda_graph(lambda: torch.ops.zaya_rt.cca_prep_backward(*args))
    for o in out:
        o.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for g, e in zip(out, eager):
        torch.testing.assert_close(g, e, rtol=0, atol=0)

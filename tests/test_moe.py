"""MoE ops vs the float64 reference: grouped GEMM and the fused expert block, forward and gradients, with
empty experts, all-skipped batches, top-k > 1, odd sizes, non-contiguous inputs and every CPU ISA.

Tolerance (flash-attention's rule, conftest.assert_close_to_peer): the kernel's max error against float64 is at
most twice that of the reference run in the kernel's dtype (PyTorch's own matmuls), plus one ulp of the output's
scale."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zaya_rt
from conftest import assert_close_to_peer
from zaya_rt import ref

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _leaves(tensors, dtype=None):
    """Detached copies (in dtype, default their own) that collect gradients."""
    return [t.detach().to(dtype or t.dtype).requires_grad_() for t in tensors]


def _offsets(sizes):
    return torch.tensor(sizes, dtype=torch.int32).cumsum(0).to(torch.int32)


@st.composite
def grouped_case(draw):
    groups = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.sampled_from([0, 0, 1, 2, 3, 5, 13, 40]), min_size=groups, max_size=groups))
    tail = draw(st.sampled_from([0, 0, 3]))
    return sizes, tail, draw(st.sampled_from([1, 7, 32, 33, 70])), draw(st.sampled_from([1, 2, 31, 64, 100]))


@settings(max_examples=30, deadline=None)
@given(case=grouped_case(), dtype=st.sampled_from(DTYPES), noncontig=st.booleans(), seed=st.integers(0, 9999))
def test_grouped_gemm_matches_reference(case, dtype, noncontig, seed):
    sizes, tail, N, K = case
    gen = torch.Generator().manual_seed(seed)
    M = sum(sizes) + tail
    if noncontig:
        a = torch.randn(K, M, generator=gen).to(dtype).T  # column-major rows
        b = torch.randn(len(sizes), K, N, generator=gen).to(dtype).transpose(1, 2)
    else:
        a = torch.randn(M, K, generator=gen).to(dtype)
        b = torch.randn(len(sizes), N, K, generator=gen).to(dtype)
    offsets = _offsets(sizes)
    a.requires_grad_()
    b.requires_grad_()
    out = zaya_rt.ops.grouped_gemm(a, b, offsets)
    a64, b64 = _leaves((a, b), torch.float64)
    want = ref.grouped_gemm(a64, b64, offsets)
    a_peer, b_peer = _leaves((a, b))
    peer = ref.grouped_gemm(a_peer, b_peer, offsets)
    assert out.shape == (M, N) and out.dtype == dtype
    assert_close_to_peer(out, want, peer, "out")
    if M:
        assert torch.all(out[sum(sizes):] == 0)
    grad = torch.randn(M, N, generator=gen).to(dtype)
    out.backward(grad)
    want.backward(grad.double())
    peer.backward(grad)
    assert_close_to_peer(a.grad, a64.grad, a_peer.grad, "grad_a")
    assert_close_to_peer(b.grad, b64.grad, b_peer.grad, "grad_b")


def _experts_inputs(T, D, I, E, top_k, dtype, gen, *, route="random", noncontig=False):
    hidden = torch.randn(T, D, generator=gen)
    if noncontig:
        hidden = torch.randn(T, 2 * D, generator=gen)[:, ::2]
    hidden = hidden.to(dtype)
    w1 = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(dtype)
    w2 = (torch.randn(E, D, I, generator=gen) / I**0.5).to(dtype)
    shape = (T,) if top_k == 1 else (T, top_k)
    if route == "random":
        index = torch.randint(0, E + 1, shape, generator=gen)
    elif route == "one_expert":
        index = torch.full(shape, E - 1)
    else:  # all skipped
        index = torch.full(shape, E)
    gate = torch.rand(shape, generator=gen)
    return hidden, index, gate, w1, w2


@settings(max_examples=30, deadline=None)
@given(
    T=st.sampled_from([0, 1, 2, 5, 16, 77]),
    D=st.sampled_from([8, 33, 64]),
    I=st.sampled_from([8, 24, 40, 64]),
    E=st.sampled_from([1, 3, 8]),
    top_k=st.sampled_from([1, 1, 2, 3]),
    dtype=st.sampled_from(DTYPES),
    route=st.sampled_from(["random", "random", "one_expert", "skipped"]),
    noncontig=st.booleans(),
    seed=st.integers(0, 9999),
)
def test_moe_experts_matches_reference(T, D, I, E, top_k, dtype, route, noncontig, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden, index, gate, w1, w2 = _experts_inputs(T, D, I, E, top_k, dtype, gen, route=route, noncontig=noncontig)
    leaves = [t.requires_grad_() for t in (hidden, gate, w1, w2)]
    out = zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2)
    refs, peers = _leaves(leaves, torch.float64), _leaves(leaves)
    want = ref.moe_experts(refs[0], index, refs[1], refs[2], refs[3])
    peer = ref.moe_experts(peers[0], index, peers[1], peers[2], peers[3])
    assert out.shape == hidden.shape and out.dtype == dtype
    assert_close_to_peer(out, want, peer, "out")
    if route == "skipped":
        assert torch.all(out == 0)
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    out.backward(grad)
    if want.grad_fn is None:  # nothing routed to an expert: every gradient is zero
        for got in leaves:
            assert got.grad is None or torch.all(got.grad == 0)
        return
    want.backward(grad.double())
    peer.backward(grad)
    for name, got, r, p in zip(("hidden", "gate", "gate_up_proj", "down_proj"), leaves, refs, peers):
        want_grad = r.grad if r.grad is not None else torch.zeros_like(r)
        peer_grad = p.grad if p.grad is not None else torch.zeros_like(p)
        scale = _gate_grad_terms(refs, index, grad) if name == "gate" else None
        assert_close_to_peer(got.grad, want_grad, peer_grad, f"grad_{name}", scale=scale, dtype=dtype)


def _gate_grad_terms(refs, index, grad) -> float:
    """max over slots of sum_d |grad_td y_td|, y the slot's expert output: the size of the terms that cancel in
    the gate's gradient (a small gradient is no yardstick for its own error)."""
    hidden, _, w1, w2 = (t.detach() for t in refs)
    slots = index.reshape(index.shape[0], -1)
    ones = torch.ones(slots.shape[0], dtype=torch.float64)
    terms = [(grad.double().abs() * ref.moe_experts(hidden, slots[:, s], ones, w1, w2).abs()).sum(-1)
             for s in range(slots.shape[1])]
    return max(max(t.max().item() for t in terms), 1e-6)


@pytest.fixture(params=[0, 1], ids=["bf16-via-fp32-fma", "bf16-dot"])
def bf16_path(request):
    """Runs a test with each way the CPU kernels can compute bf16 GEMMs (vdpbf16ps, or fp32 FMAs)."""
    zaya_rt._C.set_cpu_bf16_dot(request.param)
    yield request.param
    zaya_rt._C.set_cpu_bf16_dot(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 3, 300])
def test_moe_experts_every_isa(cpu_isa, bf16_path, dtype, T):
    gen = torch.Generator().manual_seed(T)
    hidden, index, gate, w1, w2 = _experts_inputs(T, 96, 80, 4, 1, dtype, gen)
    want = ref.moe_experts(hidden.double(), index, gate.double(), w1.double(), w2.double())
    peer = ref.moe_experts(hidden, index, gate, w1, w2)
    assert_close_to_peer(zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2), want, peer, cpu_isa)
    a = torch.randn(T, 96, generator=gen).to(dtype)
    b = torch.randn(3, 50, 96, generator=gen).to(dtype)
    offsets = torch.tensor([T // 3, T // 3, T], dtype=torch.int32)
    want = ref.grouped_gemm(a.double(), b.double(), offsets)
    peer = ref.grouped_gemm(a, b, offsets)
    assert_close_to_peer(zaya_rt.ops.grouped_gemm(a, b, offsets), want, peer, f"{cpu_isa} grouped")


def test_matches_transformers_eager_experts():
    hf = pytest.importorskip("transformers.models.zaya.modeling_zaya")
    from hf_helpers import hf_config

    cfg = hf_config(num_experts=6, hidden_size=40, moe_intermediate_size=28)
    experts = hf.ZayaExperts(cfg)
    with torch.no_grad():
        experts.gate_up_proj.normal_(0, 0.2)
        experts.down_proj.normal_(0, 0.2)
    T = 50
    x = torch.randn(T, 40)
    choice = torch.randint(0, 7, (T, 1))
    probs = torch.rand(T, 1)
    # transformers masks skipped slots to expert 0 with weight 0 before its experts run.
    skip = choice == 6
    want = experts(x, choice.masked_fill(skip, 0), probs.masked_fill(skip, 0))
    got = zaya_rt.ops.moe_experts(x, choice[:, 0], probs[:, 0], experts.gate_up_proj, experts.down_proj)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dispatch_sorts_stably_with_skips_last():
    index = torch.tensor([[2, 0], [3, 2], [0, 0], [1, 3]])
    offsets, sorted_slots, slot_rows = zaya_rt.ops.moe_dispatch(index, 3)
    assert offsets.tolist() == [3, 4, 6]
    assert sorted_slots.tolist() == [1, 4, 5, 6, 0, 3, 2, 7]
    assert slot_rows.tolist() == [4, 0, -1, 5, 1, 2, 3, -1]

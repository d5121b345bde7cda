"""Attention ops vs the float64 reference: packed ragged prefill (chunked prefill Lq < Lk, sliding windows, GQA
ratios 1-8, d 32-256, fp32/bf16/fp16, strided q/k/v), its gradients, and paged decode with shuffled and shared
pages whose unused slots are poisoned with NaN, on every CPU ISA.

Tolerance rule (flash-attention's, conftest.assert_close_to_peer): the kernel's max error against the float64
reference may be at most twice that of the same-precision PyTorch composition (`ref.attention_varlen_ref` run in
the input dtype: scores in that dtype, fp32 softmax), plus a floor of one ulp (16 for float32) of the output's
scale for cases where the composition happens to be exact."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zaya_rt
from conftest import assert_close_to_peer
from zaya_rt import ref
from zaya_rt.ref.attention import varlen_allowed

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LENGTHS = (0, 1, 2, 5, 17, 64, 65, 130, 300)


def _cu(lengths):
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(torch.int32)


def _assert_close(got, want, peer, dtype, what, extra=0.0):
    """got vs the float64 want within twice peer's error (+ the floor, + extra: a rounding allowance the caller
    derives)."""
    assert got.dtype == dtype
    assert_close_to_peer(got, want, peer, what, extra=extra)


def _inputs(lq, lk, hq, hk, d, dtype, gen, layout):
    """q [Tq, Hq, d], k/v [Tk, Hk, d] in one of three layouts: contiguous, slices of one packed tensor
    (q|k|v along heads, as a fused projection gives), or head-major storage viewed token-major."""
    tq, tk = sum(lq), sum(lk)
    if layout == "packed" and lq == lk:
        qkv = torch.randn(tq, hq + 2 * hk, d, generator=gen).to(dtype)
        return qkv[:, :hq], qkv[:, hq : hq + hk], qkv[:, hq + hk :]
    if layout == "head_major":
        q = torch.randn(hq, tq, d, generator=gen).to(dtype).transpose(0, 1)
        kv = torch.randn(2, hk, tk, d, generator=gen).to(dtype).transpose(1, 2)
        return q, kv[0], kv[1]
    q = torch.randn(tq, hq, d, generator=gen).to(dtype)
    return q, torch.randn(tk, hk, d, generator=gen).to(dtype), torch.randn(tk, hk, d, generator=gen).to(dtype)


@st.composite
def varlen_case(draw, max_len=300):
    b = draw(st.integers(1, 4))
    lk = [min(max_len, draw(st.sampled_from(LENGTHS))) for _ in range(b)]
    chunked = draw(st.booleans())
    lq = [draw(st.integers(0, x)) if chunked else x for x in lk]
    hk = draw(st.sampled_from([1, 2]))
    ratio = draw(st.sampled_from([1, 2, 4, 8]))
    return dict(
        lq=lq, lk=lk, hk=hk, hq=hk * ratio, d=draw(st.sampled_from([32, 64, 128])),
        causal=draw(st.booleans()), window=draw(st.sampled_from([None, None, 1, 3, 16, 100])),
        layout=draw(st.sampled_from(["contiguous", "packed", "head_major"])),
    )


@settings(max_examples=25, deadline=None)
@given(case=varlen_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 9999))
def test_varlen_forward_matches_reference(case, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _inputs(case["lq"], case["lk"], case["hq"], case["hk"], case["d"], dtype, gen, case["layout"])
    cq, ck = _cu(case["lq"]), _cu(case["lk"])
    kw = dict(causal=case["causal"], window=case["window"])
    out, lse = zaya_rt.ops.attention_varlen(q, k, v, cq, ck, return_lse=True, **kw)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (q.shape[1], q.shape[0])
    want = ref.attention_varlen_ref(q.double(), k.double(), v.double(), cq, ck, **kw)
    peer = ref.attention_varlen_ref(q, k, v, cq, ck, **kw)
    _assert_close(out, want, peer, dtype, "out")
    want_lse = ref.attention_varlen_lse_ref(q.double(), k.double(), cq, ck, **kw)
    seen = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse), seen)
    if seen.any():
        # lse of the dtype-rounded inputs: fp32 score arithmetic only.
        assert (lse.double() - want_lse)[seen].abs().max().item() <= 1e-5 * max(1.0, want_lse[seen].abs().max().item())
    assert torch.all(out[(~seen).T] == 0)


@settings(max_examples=12, deadline=None)
@given(case=varlen_case(max_len=130), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 9999))
def test_varlen_backward_matches_reference(case, dtype, seed):
    _check_backward(case, dtype, seed)


# Edges of the tiled backward (8-query strips, 64-query tiles, 64-key blocks, 32-column register tiles): one
# token, lengths around 8 and 64, empty sequences inside a batch (no queries, or queries without keys), head dims
# that are not a multiple of 16 or 32, windows narrower than a strip or a block, chunked prefill, non-causal.
BACKWARD_EDGES = {
    "one_token": dict(lq=[1], lk=[1], hq=2, hk=1, d=32),
    "strip_edges": dict(lq=[7, 0, 8, 9], lk=[7, 0, 8, 9], hq=4, hk=2, d=64),
    "block_edges_d40": dict(lq=[63, 64, 65], lk=[63, 64, 65], hq=8, hk=2, d=40),
    "window3_d72": dict(lq=[129, 0], lk=[129, 0], hq=4, hk=1, d=72, window=3),
    "window_below_block": dict(lq=[200], lk=[200], hq=2, hk=2, d=64, window=50),
    "chunked_window": dict(lq=[70, 5], lk=[150, 5], hq=4, hk=2, d=64, window=70),
    "chunked_noncausal": dict(lq=[66, 1], lk=[131, 1], hq=8, hk=1, d=128, causal=False),
    "no_queries_or_keys": dict(lq=[0, 3, 0, 4], lk=[5, 3, 70, 0], hq=2, hk=1, d=32),
    "long_ragged": dict(lq=[300, 257], lk=[300, 257], hq=8, hk=2, d=64, layout="packed"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(BACKWARD_EDGES))
def test_varlen_backward_tile_edges(name, dtype):
    case = dict(causal=True, window=None, layout="head_major") | BACKWARD_EDGES[name]
    _check_backward(case, dtype, seed=len(name))


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_varlen_backward_key_ranges_across_threads(threads):
    """With fewer (sequence, kv head) items than about two per thread, an item's key blocks run as parallel ranges
    whose dQ shares are summed at the end; every thread count must give the reference's gradients."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        case = dict(lq=[300], lk=[300], hq=4, hk=1, d=64, causal=True, window=None, layout="contiguous")
        _check_backward(case, torch.float32, seed=threads)
        case = dict(lq=[200, 3], lk=[330, 3], hq=2, hk=1, d=32, causal=False, window=None, layout="head_major")
        _check_backward(case, torch.bfloat16, seed=threads)
    finally:
        torch.set_num_threads(previous)


def _check_backward(case, dtype, seed):
    """dq, dk, dv of attention_varlen against the float64 reference (same-precision rule)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _inputs(case["lq"], case["lk"], case["hq"], case["hk"], case["d"], dtype, gen, case["layout"])
    cq, ck = _cu(case["lq"]), _cu(case["lk"])
    kw = dict(causal=case["causal"], window=case["window"])
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = zaya_rt.ops.attention_varlen(*leaves, cq, ck, **kw)
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    out.backward(grad)
    wants = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref.attention_varlen_ref(*wants, cq, ck, **kw).backward(grad.double())
    peers = [t.detach().requires_grad_() for t in (q, k, v)]
    ref.attention_varlen_ref(*peers, cq, ck, **kw).backward(grad)
    for name, got, want, peer in zip(("dq", "dk", "dv"), leaves, wants, peers):
        assert got.grad.shape == got.shape and got.grad.dtype == dtype
        extra = _delta_rounding(k, out, grad, dtype) if name == "dq" else 0.0
        _assert_close(got.grad, want.grad, peer.grad, dtype, name, extra)


def _delta_rounding(k, out, grad, dtype) -> float:
    """What rounding the output to dtype can move dq by: the backward's delta_i = sum_c dO_ic O_ic uses the
    stored (rounded) output, as flash attention's does, and dq_i = scale * sum_j P_ij (dP_ij - delta_i) k_j, so
    |d dq_i| <= scale * (eps / 2) * sum_c |dO_ic O_ic| * max |k| (sum_j P_ij = 1). It matters where dP - delta cancels
    (few keys, peaked P) and dq is small next to its terms."""
    if out.numel() == 0 or k.numel() == 0:
        return 0.0
    row = (grad.double() * out.detach().double()).abs().sum(-1).max().item()
    return torch.finfo(dtype).eps / 2 * k.shape[-1] ** -0.5 * row * k.double().abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dim_256_and_long_sequence(dtype):
    gen = torch.Generator().manual_seed(1)
    lq = lk = [333]
    q, k, v = _inputs(lq, lk, 4, 2, 256, dtype, gen, "contiguous")
    cq = _cu(lq)
    out = zaya_rt.ops.attention_varlen(q, k, v, cq, cq)
    want = ref.attention_varlen_ref(q.double(), k.double(), v.double(), cq, cq)
    _assert_close(out, want, ref.attention_varlen_ref(q, k, v, cq, cq), dtype, "out")


def test_queries_without_keys_give_zero_and_zero_grads():
    """Lq > Lk under the bottom-right causal convention: the first Lq - Lk queries see nothing."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(7, 2, 32, generator=gen, requires_grad=True)
    k = torch.randn(3, 1, 32, generator=gen, requires_grad=True)
    v = torch.randn(3, 1, 32, generator=gen, requires_grad=True)
    out, lse = zaya_rt.ops.attention_varlen(q, k, v, _cu([7]), _cu([3]), return_lse=True)
    assert torch.all(out[:4] == 0) and torch.all(lse[:, :4] == float("-inf"))
    assert torch.isfinite(lse[:, 4:]).all() and out[4:].abs().sum() > 0
    out.sum().backward()
    assert torch.all(q.grad[:4] == 0) and torch.isfinite(q.grad).all()


def test_window_matches_transformers_sliding_window_mask():
    masking = pytest.importorskip("transformers.masking_utils")
    for window in (1, 3, 8):
        fn = masking.sliding_window_causal_mask_function(window)
        i, j = torch.arange(20)[:, None], torch.arange(20)[None, :]
        want = fn(torch.tensor(0), torch.tensor(0), i, j).expand(20, 20)
        assert torch.equal(varlen_allowed(20, 20, True, window), want)


def test_every_cpu_isa(cpu_isa):
    gen = torch.Generator().manual_seed(3)
    for dtype in DTYPES:
        lq, lk = [40, 0, 70], [90, 3, 70]
        q, k, v = _inputs(lq, lk, 4, 2, 64, dtype, gen, "head_major")
        cq, ck = _cu(lq), _cu(lk)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = zaya_rt.ops.attention_varlen(*leaves, cq, ck, window=33)
        want = ref.attention_varlen_ref(*(t.double() for t in (q, k, v)), cq, ck, window=33)
        _assert_close(out, want, ref.attention_varlen_ref(q, k, v, cq, ck, window=33), dtype, f"out {cpu_isa}")
        out.float().square().sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in leaves)
        _decode_case(gen, dtype, [2, 77, 300], n=2, page=16, hq=4, hk=2, d=64, window=None)


@pytest.mark.parametrize("mode", [0, 1])
def test_bf16_dot_and_fma_paths_agree_with_reference(mode):
    previous = zaya_rt._C.cpu_bf16_dot()
    zaya_rt._C.set_cpu_bf16_dot(mode)
    try:
        gen = torch.Generator().manual_seed(4)
        lq = lk = [130, 9]
        q, k, v = _inputs(lq, lk, 8, 2, 128, torch.bfloat16, gen, "packed")
        cq = _cu(lq)
        out = zaya_rt.ops.attention_varlen(q, k, v, cq, cq)
        want = ref.attention_varlen_ref(q.double(), k.double(), v.double(), cq, cq)
        _assert_close(out, want, ref.attention_varlen_ref(q, k, v, cq, cq), torch.bfloat16, "out")
    finally:
        zaya_rt._C.set_cpu_bf16_dot(previous)


# ---- decode -------------------------------------------------------------------------------------------------


def _paged_cache(lengths, page, hk, d, dtype, gen, *, shared_prefix_pages=0, spare_pages=3):
    """A cache whose pages are handed out in shuffled order; sequences may share their first pages (a common
    prefix). Every slot no sequence owns below its length is NaN, so reading past seq_lens shows."""
    B = len(lengths)
    width = max(-(-n // page) for n in lengths) + 1
    P = B * width + spare_pages
    k_cache = torch.full((P, page, hk, d), float("nan"), dtype=dtype)
    v_cache = torch.full((P, page, hk, d), float("nan"), dtype=dtype)
    ids = torch.randperm(P, generator=gen).to(torch.int32)
    table = ids[: B * width].view(B, width).clone()
    table[1:, :shared_prefix_pages] = table[0, :shared_prefix_pages]
    for b, n in enumerate(lengths):
        for t in range(n):
            p, s = int(table[b, t // page]), t % page
            if b > 0 and t // page < shared_prefix_pages:
                continue  # written by sequence 0
            k_cache[p, s] = torch.randn(hk, d, generator=gen).to(dtype)
            v_cache[p, s] = torch.randn(hk, d, generator=gen).to(dtype)
    return k_cache, v_cache, table, torch.tensor(lengths, dtype=torch.int32)


def _decode_case(gen, dtype, lengths, *, n, page, hq, hk, d, window, shared=0):
    k_cache, v_cache, table, lens = _paged_cache(lengths, page, hk, d, dtype, gen, shared_prefix_pages=shared)
    q = torch.randn(len(lengths), n, hq, d, generator=gen).to(dtype)
    out = zaya_rt.ops.attention_decode(q, k_cache, v_cache, table, lens, window=window)
    assert out.shape == q.shape and out.dtype == dtype
    want = ref.attention_decode_ref(q.double(), k_cache.double(), v_cache.double(), table, lens, window=window)
    peer = ref.attention_decode_ref(q, k_cache, v_cache, table, lens, window=window)
    _assert_close(out, want, peer, dtype, "decode out")
    # Equal to prefill attention of the same tokens (chunked-prefill form: n queries against L keys).
    for b, L in enumerate(lengths):
        if L == 0:
            assert torch.all(out[b] == 0)
            continue
        t = torch.arange(L)
        kb = k_cache[table[b].long()[t // page], t % page]
        vb = v_cache[table[b].long()[t // page], t % page]
        pre = zaya_rt.ops.attention_varlen(q[b], kb, vb, _cu([n]), _cu([L]), window=window)
        _assert_close(out[b], want[b], pre, dtype, "decode vs prefill")
    return out


@st.composite
def decode_case(draw):
    n = draw(st.sampled_from([1, 1, 2, 5]))
    lengths = [draw(st.sampled_from([0, n, n + 1, 17, 64, 100, 700, 2000])) for _ in range(draw(st.integers(1, 4)))]
    hk = draw(st.sampled_from([1, 2]))
    return dict(lengths=lengths, n=n, page=draw(st.sampled_from([1, 4, 16, 64])), hk=hk,
                hq=hk * draw(st.sampled_from([1, 2, 4, 8])), d=draw(st.sampled_from([32, 64, 128])),
                window=draw(st.sampled_from([None, None, 1, 7, 300])))


@settings(max_examples=20, deadline=None)
@given(case=decode_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 9999))
def test_decode_matches_reference_and_prefill(case, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    _decode_case(gen, dtype, case["lengths"], n=case["n"], page=case["page"], hq=case["hq"], hk=case["hk"],
                 d=case["d"], window=case["window"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_with_shared_prefix_pages(dtype):
    """Several traces of one prompt share its pages (section 5 prefix sharing); each then has its own tail."""
    gen = torch.Generator().manual_seed(5)
    _decode_case(gen, dtype, [100, 70, 129, 64], n=1, page=16, hq=8, hk=2, d=128, window=None, shared=4)
    _decode_case(gen, dtype, [40, 33], n=3, page=8, hq=4, hk=4, d=64, window=9, shared=4)


def test_decode_long_context_splits():
    """Contexts long enough that each (sequence, kv head) is split several ways and merged by lse."""
    gen = torch.Generator().manual_seed(6)
    _decode_case(gen, torch.bfloat16, [5000], n=1, page=64, hq=8, hk=2, d=128, window=None)
    _decode_case(gen, torch.float32, [4097, 4], n=4, page=32, hq=2, hk=1, d=32, window=1000)

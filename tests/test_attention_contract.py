"""Attention ops as library citizens: opcheck, gradcheck, torch.compile(fullgraph=True) forward and backward
without graph breaks, and clear errors for bad input."""

import pytest
import torch

import zaya_rt
from zaya_rt.ops import attention as attention_ops
from zaya_rt.ops._lib import set_workspace


def _cu(lengths):
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(torch.int32)


def _varlen(dtype=torch.float32, lq=(5, 0, 9), lk=(7, 2, 9), hq=4, hk=2, d=32, grad=False):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(sum(lq), hq, d, generator=gen).to(dtype)
    k = torch.randn(sum(lk), hk, d, generator=gen).to(dtype)
    v = torch.randn(sum(lk), hk, d, generator=gen).to(dtype)
    if grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v, _cu(lq), _cu(lk)


def _decode(dtype=torch.float32, B=2, n=2, hq=4, hk=2, d=32, page=4, P=9, width=4):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(B, n, hq, d, generator=gen).to(dtype)
    k_cache = torch.randn(P, page, hk, d, generator=gen).to(dtype)
    v_cache = torch.randn(P, page, hk, d, generator=gen).to(dtype)
    table = torch.randperm(P, generator=gen)[: B * width].view(B, width).to(torch.int32)
    lens = torch.tensor([13, 2][:B] + [5] * max(0, B - 2), dtype=torch.int32)
    return q, k_cache, v_cache, table, lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [0, 3])
def test_opcheck_attention_varlen(dtype, window):
    args = (*_varlen(dtype, grad=True), True, window, 0.2)
    torch.library.opcheck(torch.ops.zaya_rt.attention_varlen, args)
    q, k, v, cq, ck = _varlen(dtype)
    out, lse = torch.ops.zaya_rt.attention_varlen(q, k, v, cq, ck, True, window, 0.2)
    torch.library.opcheck(torch.ops.zaya_rt.attention_varlen_backward,
                          (torch.randn_like(out), q, k, v, out, lse, cq, ck, True, window, 0.2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_attention_decode(dtype):
    torch.library.opcheck(torch.ops.zaya_rt.attention_decode, (*_decode(dtype), 0.3, 0))
    torch.library.opcheck(torch.ops.zaya_rt.attention_decode, (*_decode(dtype), 0.3, 5))


@pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 2)])
def test_gradcheck_float64(causal, window):
    """float64 runs the reference composition (the fp32/bf16/fp16 kernels' gradients are checked against it in
    tests/test_attention.py); this checks the op's autograd wiring end to end."""
    q, k, v, cq, ck = _varlen(torch.float64, lq=(3, 2), lk=(4, 2), hq=2, hk=1, d=32, grad=True)
    torch.autograd.gradcheck(
        lambda q, k, v: zaya_rt.ops.attention_varlen(q, k, v, cq, ck, causal=causal, window=window), (q, k, v),
        fast_mode=True,
    )


def test_compile_fullgraph_forward_and_backward_without_graph_break():
    def block(q, k, v, cq, ck, dec_args):
        out = zaya_rt.ops.attention_varlen(q, k, v, cq, ck, window=4)
        dec = zaya_rt.ops.attention_decode(*dec_args)
        return out.square().sum() + dec.sum()

    args = _varlen(grad=True)
    dec_args = _decode()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(*args, dec_args)
    got.backward()
    grads = [t.grad.clone() for t in args[:3]]
    for t in args[:3]:
        t.grad = None
    want = block(*args, dec_args)
    want.backward()
    torch.testing.assert_close(got, want)
    for g, t in zip(grads, args[:3]):
        torch.testing.assert_close(g, t.grad)


def test_return_lse_is_not_differentiable_but_out_is():
    q, k, v, cq, ck = _varlen(grad=True)
    out, lse = zaya_rt.ops.attention_varlen(q, k, v, cq, ck, return_lse=True)
    assert out.requires_grad and not lse.requires_grad


# ---- bad input ----------------------------------------------------------------------------------------------

I32 = torch.int32


def _bad_varlen(**change):
    names = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k")
    args = dict(zip(names, _varlen()))
    kwargs = {key: change.pop(key) for key in ("causal", "window", "scale") if key in change}
    args.update(change)
    return tuple(args[n] for n in names), kwargs


BAD_VARLEN = {
    "q 2-D": (_bad_varlen(q=torch.randn(14, 128)), ValueError, "q must have 3"),
    "q int": (_bad_varlen(q=torch.ones(14, 4, 32, dtype=I32)), TypeError, "q has dtype int32"),
    "q list": (_bad_varlen(q=[[0.0]]), TypeError, "q must be a torch.Tensor"),
    "k dtype": (_bad_varlen(k=torch.randn(18, 2, 32, dtype=torch.bfloat16)), TypeError, "k has dtype"),
    "v dtype": (_bad_varlen(v=torch.randn(18, 2, 32, dtype=torch.float16)), TypeError, "v has dtype"),
    "k 4-D": (_bad_varlen(k=torch.randn(18, 2, 32, 1)), ValueError, "k must have 3"),
    "v shape": (_bad_varlen(v=torch.randn(17, 2, 32)), ValueError, "v has shape"),
    "heads ratio": (_bad_varlen(k=torch.randn(18, 3, 32), v=torch.randn(18, 3, 32)), ValueError, "multiple of kv heads"),
    "head_dim mismatch": (_bad_varlen(k=torch.randn(18, 2, 40), v=torch.randn(18, 2, 40)), ValueError, "head_dim 32"),
    "head_dim small": (_bad_varlen(q=torch.randn(14, 4, 16), k=torch.randn(18, 2, 16), v=torch.randn(18, 2, 16)),
                       ValueError, r"multiple of 8 in \[32, 256\]"),
    "head_dim odd": (_bad_varlen(q=torch.randn(14, 4, 36), k=torch.randn(18, 2, 36), v=torch.randn(18, 2, 36)),
                     ValueError, "multiple of 8"),
    "head_dim big": (_bad_varlen(q=torch.randn(1, 1, 264), k=torch.randn(1, 1, 264), v=torch.randn(1, 1, 264),
                                 cu_seqlens_q=_cu([1]), cu_seqlens_k=_cu([1])), ValueError, "multiple of 8"),
    "no kv heads": (_bad_varlen(k=torch.randn(18, 0, 32), v=torch.randn(18, 0, 32)), ValueError, "at least one"),
    "cu int64": (_bad_varlen(cu_seqlens_q=_cu([5, 0, 9]).long()), TypeError, "cu_seqlens_q has dtype int64"),
    "cu float": (_bad_varlen(cu_seqlens_k=_cu([7, 2, 9]).float()), TypeError, "cu_seqlens_k has dtype float32"),
    "cu 2-D": (_bad_varlen(cu_seqlens_q=_cu([5, 0, 9])[None]), ValueError, "cu_seqlens_q must have 1"),
    "cu lengths differ": (_bad_varlen(cu_seqlens_k=_cu([16, 2])), ValueError, r"must both be \[B \+ 1\]"),
    "cu empty": (_bad_varlen(cu_seqlens_q=torch.zeros(0, dtype=I32), cu_seqlens_k=torch.zeros(0, dtype=I32)),
                 ValueError, r"\[B \+ 1\]"),
    "cu not from 0": (_bad_varlen(cu_seqlens_q=torch.tensor([1, 5, 5, 14], dtype=I32)), ValueError,
                      r"cu_seqlens_q\[0\] must be 0"),
    "cu decreasing": (_bad_varlen(cu_seqlens_k=torch.tensor([0, 9, 7, 18], dtype=I32)), ValueError, "non-decreasing"),
    "cu last != T": (_bad_varlen(cu_seqlens_q=torch.tensor([0, 5, 5, 13], dtype=I32)), ValueError,
                     r"must equal the token count 14"),
    "cu past T": (_bad_varlen(cu_seqlens_k=torch.tensor([0, 7, 9, 30], dtype=I32)), ValueError, "token count 18"),
    "meta k": (_bad_varlen(k=torch.randn(18, 2, 32, device="meta")), ValueError, "one device"),
    "window zero": (_bad_varlen(window=0), ValueError, "window must be a positive int or None"),
    "window negative": (_bad_varlen(window=-3), ValueError, "window must be"),
    "window float": (_bad_varlen(window=2.5), ValueError, "window must be"),
    "scale string": (_bad_varlen(scale="big"), ValueError, "scale must be"),
    "scale nan": (_bad_varlen(scale=float("nan")), ValueError, "scale must be a finite"),
    "causal int": (_bad_varlen(causal=1), TypeError, "causal must be a bool"),
}


@pytest.mark.parametrize("case", sorted(BAD_VARLEN))
def test_attention_varlen_rejects_bad_input(case):
    (args, kwargs), exc, pattern = BAD_VARLEN[case]
    with pytest.raises(exc, match=pattern):
        zaya_rt.ops.attention_varlen(*args, **kwargs)


def _bad_decode(**change):
    names = ("q", "k_cache", "v_cache", "block_table", "seq_lens")
    args = dict(zip(names, _decode()))
    kwargs = {key: change.pop(key) for key in ("window", "scale") if key in change}
    args.update(change)
    return tuple(args[n] for n in names), kwargs


BAD_DECODE = {
    "q 3-D": (_bad_decode(q=torch.randn(2, 4, 32)), ValueError, "q must have 4"),
    "q int": (_bad_decode(q=torch.ones(2, 2, 4, 32, dtype=I32)), TypeError, "q has dtype int32"),
    "q tuple": (_bad_decode(q=(1, 2)), TypeError, "q must be a torch.Tensor"),
    "k_cache dtype": (_bad_decode(k_cache=torch.randn(9, 4, 2, 32, dtype=torch.bfloat16)), TypeError, "k_cache has dtype"),
    "v_cache dtype": (_bad_decode(v_cache=torch.randn(9, 4, 2, 32, dtype=torch.float16)), TypeError, "v_cache has dtype"),
    "k_cache 3-D": (_bad_decode(k_cache=torch.randn(9, 4, 64)), ValueError, "k_cache must have 4"),
    "v_cache shape": (_bad_decode(v_cache=torch.randn(8, 4, 2, 32)), ValueError, "v_cache has shape"),
    "heads ratio": (_bad_decode(k_cache=torch.randn(9, 4, 3, 32), v_cache=torch.randn(9, 4, 3, 32)), ValueError,
                    "multiple of kv heads"),
    "head_dim mismatch": (_bad_decode(k_cache=torch.randn(9, 4, 2, 64), v_cache=torch.randn(9, 4, 2, 64)),
                          ValueError, "head_dim 32"),
    "head_dim small": (_bad_decode(q=torch.randn(2, 2, 4, 8), k_cache=torch.randn(9, 4, 2, 8),
                                   v_cache=torch.randn(9, 4, 2, 8)), ValueError, "multiple of 8"),
    "no queries": (_bad_decode(q=torch.randn(2, 0, 4, 32)), ValueError, "at least one query token"),
    "page not pow2": (_bad_decode(k_cache=torch.randn(9, 3, 2, 32), v_cache=torch.randn(9, 3, 2, 32)), ValueError,
                      "power of two"),
    "no pages": (_bad_decode(k_cache=torch.randn(0, 4, 2, 32), v_cache=torch.randn(0, 4, 2, 32)), ValueError,
                 "no pages"),
    "table int64": (_bad_decode(block_table=torch.zeros(2, 4, dtype=torch.int64)), TypeError,
                    "block_table has dtype int64"),
    "table 1-D": (_bad_decode(block_table=torch.zeros(8, dtype=I32)), ValueError, "block_table must have 2"),
    "table rows": (_bad_decode(block_table=torch.zeros(3, 4, dtype=I32)), ValueError, "must have B=2 rows"),
    "seq_lens int64": (_bad_decode(seq_lens=torch.tensor([3, 2])), TypeError, "seq_lens has dtype int64"),
    "seq_lens rows": (_bad_decode(seq_lens=torch.tensor([3, 2, 2], dtype=I32)), ValueError, "must have B=2 rows"),
    "seq_len past table": (_bad_decode(seq_lens=torch.tensor([17, 2], dtype=I32)), ValueError,
                           r"seq_lens\[0\] = 17 must be 0 \(inactive\) or in \[2, 16\]"),
    "seq_len below n": (_bad_decode(seq_lens=torch.tensor([13, 1], dtype=I32)), ValueError, r"seq_lens\[1\] = 1"),
    "seq_len negative": (_bad_decode(seq_lens=torch.tensor([-4, 2], dtype=I32)), ValueError, r"seq_lens\[0\] = -4"),
    "page id too big": (_bad_decode(block_table=torch.tensor([[0, 1, 9, 2], [3, 4, 5, 6]], dtype=I32)), ValueError,
                        r"block_table\[0, 2\] = 9 is not a page of the cache \(0..8\)"),
    "page id negative": (_bad_decode(block_table=torch.tensor([[0, 1, 2, 3], [-1, 4, 5, 6]], dtype=I32)), ValueError,
                         r"block_table\[1, 0\] = -1"),
    "meta table": (_bad_decode(block_table=torch.zeros(2, 4, dtype=I32, device="meta")), ValueError, "one device"),
    "window zero": (_bad_decode(window=0), ValueError, "window must be a positive int or None"),
    "scale inf": (_bad_decode(scale=float("inf")), ValueError, "scale must be a finite"),
}


@pytest.mark.parametrize("case", sorted(BAD_DECODE))
def test_attention_decode_rejects_bad_input(case):
    (args, kwargs), exc, pattern = BAD_DECODE[case]
    with pytest.raises(exc, match=pattern):
        zaya_rt.ops.attention_decode(*args, **kwargs)


def test_decode_ignores_table_entries_past_the_sequence():
    """Page ids past a sequence's pages may be anything (here out of range): they are never read."""
    q, k_cache, v_cache, table, lens = _decode()
    table[1, 1:] = 12345
    want = zaya_rt.ref.attention_decode_ref(q.double(), k_cache.double(), v_cache.double(), table.clamp(max=8), lens)
    got = zaya_rt.ops.attention_decode(q, k_cache, v_cache, table, lens)
    assert (got.double() - want).abs().max() < 1e-5


def test_kernel_checks_cu_seqlens_too():
    """The C++ dispatch re-checks host offsets, so a direct _C call with bad offsets raises, never crashes."""
    q, k, v, cq, ck = _varlen()
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[1], q.shape[0])
    bad = torch.tensor([0, 5, 3, 14], dtype=I32)
    ws = torch.empty(1 << 20, dtype=torch.uint8)
    p = attention_ops.attention_varlen_fwd_params(q, k, v, bad, ck, out, lse, True, 0, 0.2)
    with pytest.raises(ValueError, match="non-decreasing"):
        zaya_rt._C.attention_varlen_fwd(set_workspace(p, ws), 0, 0, 0)


def test_decode_with_a_zero_width_block_table_and_inactive_rows_gives_zeros():
    q, k_cache, v_cache, _, _ = _decode()
    table, lens = torch.zeros(2, 0, dtype=torch.int32), torch.zeros(2, dtype=torch.int32)
    out = zaya_rt.ops.attention_decode(q, k_cache, v_cache, table, lens)
    assert out.shape == q.shape and not out.any()
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 13"):  # an active row cannot fit a zero-width table
        zaya_rt.ops.attention_decode(q, k_cache, v_cache, table, torch.tensor([13, 0], dtype=torch.int32))


@pytest.mark.parametrize("window", [2**31, 2**63, 10**30])
def test_windows_past_every_position_mask_nothing(window):
    """Any window of 2**31 - 1 keys or more (positions are int32) is no window, even past int64."""
    q, k, v, cu_q, cu_k = _varlen()
    want = zaya_rt.ops.attention_varlen(q, k, v, cu_q, cu_k, causal=True)
    torch.testing.assert_close(zaya_rt.ops.attention_varlen(q, k, v, cu_q, cu_k, causal=True, window=window), want,
                               rtol=0, atol=0)
    q, k_cache, v_cache, table, lens = _decode()
    torch.testing.assert_close(zaya_rt.ops.attention_decode(q, k_cache, v_cache, table, lens, window=window),
                               zaya_rt.ops.attention_decode(q, k_cache, v_cache, table, lens), rtol=0, atol=0)

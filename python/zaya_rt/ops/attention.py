"""Attention family (SPEC section 4): packed variable-length prefill with autograd, and paged decode.

Legend: B sequences, Tq / Tk packed query / key tokens, Hq query heads, Hk kv heads (Hq % Hk == 0; query head h
reads kv head h // (Hq // Hk)), d head dim, P cache pages, n query tokens per decoding sequence.
Ops (namespace `torch.ops.zaya_rt`):
  attention_varlen(q[Tq, Hq, d], k[Tk, Hk, d], v[Tk, Hk, d], cu_seqlens_q[B+1], cu_seqlens_k[B+1], causal, window,
                   scale) -> (out[Tq, Hq, d], lse[Hq, Tq] fp32)                   (autograd for q, k, v)
  attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal, window, scale)
                   -> (dq, dk, dv)
  attention_decode(q[B, n, Hq, d], k_cache[P, page, Hk, d], v_cache, block_table[B, max_pages], seq_lens[B],
                   scale, window) -> out[B, n, Hq, d]
`window` 0 means no window in the op schemas; the Python functions take None. cu_seqlens, block_table and
seq_lens stay on the tensors' device and are only read on the host when that device is the CPU (the checks of
their values are CPU-only; on GPU they are the caller's contract).
"""

from __future__ import annotations

import torch

from zaya_rt import _C
from zaya_rt import ref
from zaya_rt.ops._lib import (
    DTYPE_CODES, check_same_device, check_tensor, lib, register_autograd, register_kernels, run_kernel,
)

ATTN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64 runs the reference

lib.define(
    "attention_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, bool causal, "
    "int window, float scale) -> (Tensor, Tensor)"
)
lib.define(
    "attention_varlen_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor cu_seqlens_q, Tensor cu_seqlens_k, bool causal, int window, float scale) -> (Tensor, Tensor, Tensor)"
)
lib.define(
    "attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens, float scale, "
    "int window) -> Tensor"
)


def _unit_inner(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def kernel_takes_head_dim(head_dim: int) -> bool:
    """True when zaya_rt's attention kernels take this head dim (a multiple of 8 in [32, 256]; the rule lives in
    csrc/dispatch_attention.cpp, which also raises for a head dim it does not take)."""
    return _C.attention_takes_head_dim(head_dim)


def _check_heads(op: str, hq: int, hk: int, d: int, d_k: int) -> None:
    if hk < 1 or hq < 1:
        raise ValueError(f"zaya_rt.{op}: need at least one query head and one kv head, got Hq={hq}, Hk={hk}")
    if hq % hk:
        raise ValueError(f"zaya_rt.{op}: query heads ({hq}) must be a multiple of kv heads ({hk})")
    if d != d_k:
        raise ValueError(f"zaya_rt.{op}: q has head_dim {d} but k/v have {d_k}")


def _check_scalars(op: str, causal, window, scale) -> None:
    if not isinstance(causal, bool):
        raise TypeError(f"zaya_rt.{op}: causal must be a bool, got {type(causal).__name__}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"zaya_rt.{op}: window must be a positive int or None, got {window!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale or abs(scale) == float("inf"):
        raise ValueError(f"zaya_rt.{op}: scale must be a finite number, got {scale!r}")


# ---- the kernels' arguments (csrc/bindings_attention.cpp), field by field ----------------------------------------


def _set_varlen_fields(p, q, k, v, cu_q, cu_k, causal: bool, window: int, scale: float) -> None:
    """The fields AttnVarlenFwdParams and AttnVarlenBwdParams share."""
    p.q, (p.q_token_stride, p.q_head_stride) = q.data_ptr(), q.stride()[:2]
    p.k, (p.k_token_stride, p.k_head_stride) = k.data_ptr(), k.stride()[:2]
    p.v, (p.v_token_stride, p.v_head_stride) = v.data_ptr(), v.stride()[:2]
    p.cu_seqlens_q, p.cu_seqlens_k = cu_q.data_ptr(), cu_k.data_ptr()
    p.dtype, p.batch = DTYPE_CODES[q.dtype], cu_q.shape[0] - 1
    (p.total_q, p.num_heads_q, p.head_dim), (p.total_k, p.num_heads_k, _) = q.shape, k.shape
    p.max_seqlen_q, p.max_seqlen_k = 0, 0  # unknown: the kernels size their grids from the totals
    p.causal, p.window, p.scale = causal, window, float(scale)
    p.workspace, p.workspace_bytes = 0, 0


def attention_varlen_fwd_params(q, k, v, cu_q, cu_k, out, lse, causal: bool, window: int,
                                scale: float) -> _C.AttnVarlenFwdParams:
    """q [Tq, Hq, d], k/v [Tk, Hk, d] (unit inner stride), cu_q/cu_k [B + 1] int32 contiguous, out [Tq, Hq, d]
    (unit inner stride), lse [Hq, Tq] fp32 (unit inner stride); window 0 = none. No workspace yet."""
    p = _C.AttnVarlenFwdParams()
    _set_varlen_fields(p, q, k, v, cu_q, cu_k, causal, window, scale)
    p.out, (p.out_token_stride, p.out_head_stride) = out.data_ptr(), out.stride()[:2]
    p.lse, p.lse_head_stride = lse.data_ptr(), lse.stride(0)
    return p


def attention_varlen_bwd_params(q, k, v, out, dout, lse, cu_q, cu_k, dq, dk, dv, causal: bool, window: int,
                                scale: float) -> _C.AttnVarlenBwdParams:
    """q/out/dout/dq [Tq, Hq, d], k/v/dk/dv [Tk, Hk, d] (unit inner stride), lse [Hq, Tq] fp32, cu_q/cu_k
    [B + 1] int32 contiguous; window 0 = none. No workspace yet."""
    p = _C.AttnVarlenBwdParams()
    _set_varlen_fields(p, q, k, v, cu_q, cu_k, causal, window, scale)
    p.out, (p.out_token_stride, p.out_head_stride) = out.data_ptr(), out.stride()[:2]
    p.dout, (p.dout_token_stride, p.dout_head_stride) = dout.data_ptr(), dout.stride()[:2]
    p.lse, p.lse_head_stride = lse.data_ptr(), lse.stride(0)
    p.dq, (p.dq_token_stride, p.dq_head_stride) = dq.data_ptr(), dq.stride()[:2]
    p.dk, (p.dk_token_stride, p.dk_head_stride) = dk.data_ptr(), dk.stride()[:2]
    p.dv, (p.dv_token_stride, p.dv_head_stride) = dv.data_ptr(), dv.stride()[:2]
    return p


def attention_decode_params(q, k_cache, v_cache, block_table, seq_lens, out, window: int, scale: float,
                            num_splits: int = 0) -> _C.AttnPagedDecodeParams:
    """q and out [B, n, Hq, d], k_cache/v_cache [P, page_size, Hk, d] (unit inner stride), block_table
    [B, max_pages] int32 (unit inner stride), seq_lens [B] int32 contiguous; window 0 = none; num_splits 0 =
    the backend's choice. No workspace yet."""
    p = _C.AttnPagedDecodeParams()
    p.q, (p.q_batch_stride, p.q_token_stride, p.q_head_stride) = q.data_ptr(), q.stride()[:3]
    p.k_cache, (p.k_page_stride, p.k_slot_stride, p.k_head_stride) = k_cache.data_ptr(), k_cache.stride()[:3]
    p.v_cache, (p.v_page_stride, p.v_slot_stride, p.v_head_stride) = v_cache.data_ptr(), v_cache.stride()[:3]
    p.block_table, p.block_table_stride = block_table.data_ptr(), block_table.stride(0)
    p.seq_lens = seq_lens.data_ptr()
    p.out, (p.out_batch_stride, p.out_token_stride, p.out_head_stride) = out.data_ptr(), out.stride()[:3]
    p.dtype = DTYPE_CODES[q.dtype]
    p.batch, p.num_queries, p.num_heads_q, p.head_dim = q.shape
    p.num_pages, p.page_size, p.num_heads_k, _ = k_cache.shape
    p.max_pages = block_table.shape[1]
    p.window, p.scale, p.num_splits = window, float(scale), num_splits
    p.workspace, p.workspace_bytes = 0, 0
    return p


# ---- attention_varlen ---------------------------------------------------------------------------------------


def _check_qkv(op, ndim, q, k_name, k, v_name, v):
    """q, k and v are float tensors of rank ndim in q's dtype, and v has k's shape."""
    check_tensor(op, "q", q, dtypes=ATTN_DTYPES, ndim=ndim)
    check_tensor(op, k_name, k, dtypes=ATTN_DTYPES, ndim=ndim)
    check_tensor(op, v_name, v, dtypes=ATTN_DTYPES, ndim=ndim)
    for name, t in ((k_name, k), (v_name, v)):
        if t.dtype != q.dtype:
            raise TypeError(f"zaya_rt.{op}: {name} has dtype {t.dtype}, q has {q.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"zaya_rt.{op}: {v_name} has shape {tuple(v.shape)}, {k_name} has {tuple(k.shape)}")


def _check_varlen(op, q, k, v, cu_q, cu_k, causal, window, scale):
    _check_qkv(op, 3, q, "k", k, "v", v)
    check_tensor(op, "cu_seqlens_q", cu_q, dtypes=(torch.int32,), ndim=1)
    check_tensor(op, "cu_seqlens_k", cu_k, dtypes=(torch.int32,), ndim=1)
    _check_heads(op, q.shape[1], k.shape[1], q.shape[2], k.shape[2])
    if cu_q.shape[0] < 1 or cu_q.shape != cu_k.shape:
        raise ValueError(f"zaya_rt.{op}: cu_seqlens_q {tuple(cu_q.shape)} and cu_seqlens_k {tuple(cu_k.shape)} "
                         "must both be [B + 1]")
    check_same_device(op, q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    _check_scalars(op, causal, window, scale)


def _check_cu_values(op: str, name: str, cu: torch.Tensor, total: int) -> None:
    # Reading the offsets costs a host sync on GPU, so only CPU inputs are checked.
    if cu.device.type != "cpu":
        return
    if int(cu[0]) != 0:
        raise ValueError(f"zaya_rt.{op}: {name}[0] must be 0, got {int(cu[0])}")
    if cu.shape[0] > 1 and bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"zaya_rt.{op}: {name} must be non-decreasing, got {cu.tolist()}")
    if int(cu[-1]) != total:
        raise ValueError(f"zaya_rt.{op}: {name}[-1] must equal the token count {total}, got {int(cu[-1])}")


def _varlen_float64(q, k, v, cu_q, cu_k, causal, window, scale):
    w = window or None
    out = ref.attention_varlen_ref(q, k, v, cu_q, cu_k, causal=causal, window=w, scale=scale)
    lse = ref.attention_varlen_lse_ref(q, k, cu_q, cu_k, causal=causal, window=w, scale=scale).float()
    return out, lse


def _attention_varlen_impl(q, k, v, cu_q, cu_k, causal, window, scale):
    op = "attention_varlen"
    _check_varlen(op, q, k, v, cu_q, cu_k, causal, window, scale)
    if q.dtype == torch.float64:  # the C++ dispatch checks the offsets of the kernel path
        _check_cu_values(op, "cu_seqlens_q", cu_q, q.shape[0])
        _check_cu_values(op, "cu_seqlens_k", cu_k, k.shape[0])
        return _varlen_float64(q, k, v, cu_q, cu_k, causal, window, scale)
    q, k, v = _unit_inner(q), _unit_inner(k), _unit_inner(v)
    cu_q, cu_k = cu_q.contiguous(), cu_k.contiguous()
    Tq, Hq, d = q.shape
    out = torch.empty((Tq, Hq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((Hq, Tq), dtype=torch.float32, device=q.device)
    p = attention_varlen_fwd_params(q, k, v, cu_q, cu_k, out, lse, causal, window, scale)
    run_kernel(_C.attention_varlen_fwd, _C.attention_varlen_fwd_workspace, p, q)
    return out, lse


def _attention_varlen_fake(q, k, v, cu_q, cu_k, causal, window, scale):
    _check_varlen("attention_varlen", q, k, v, cu_q, cu_k, causal, window, scale)
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _check_backward(dout, q, k, v, out, lse, cu_q, cu_k, causal, window, scale):
    op = "attention_varlen_backward"
    _check_varlen(op, q, k, v, cu_q, cu_k, causal, window, scale)
    check_tensor(op, "dout", dout, dtypes=ATTN_DTYPES, ndim=3)
    check_tensor(op, "out", out, dtypes=ATTN_DTYPES, ndim=3)
    check_tensor(op, "lse", lse, dtypes=(torch.float32,), ndim=2)
    if dout.shape != q.shape or out.shape != q.shape or dout.dtype != q.dtype or out.dtype != q.dtype:
        raise ValueError(f"zaya_rt.{op}: dout and out must match q {tuple(q.shape)} {q.dtype}")
    if lse.shape != (q.shape[1], q.shape[0]):
        raise ValueError(f"zaya_rt.{op}: lse must be [Hq, Tq] = {(q.shape[1], q.shape[0])}, got {tuple(lse.shape)}")
    check_same_device(op, dout=dout, q=q, out=out, lse=lse)


def _backward_float64(dout, q, k, v, cu_q, cu_k, causal, window, scale):
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = ref.attention_varlen_ref(*leaves, cu_q, cu_k, causal=causal, window=window or None, scale=scale)
        return torch.autograd.grad(out, leaves, dout, allow_unused=True)


def _attention_varlen_backward_impl(dout, q, k, v, out, lse, cu_q, cu_k, causal, window, scale):
    _check_backward(dout, q, k, v, out, lse, cu_q, cu_k, causal, window, scale)
    if q.dtype == torch.float64:
        return tuple(g.contiguous() for g in _backward_float64(dout, q, k, v, cu_q, cu_k, causal, window, scale))
    q, k, v, out, dout = (_unit_inner(t) for t in (q, k, v, out, dout))
    lse, cu_q, cu_k = lse.contiguous(), cu_q.contiguous(), cu_k.contiguous()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=q.dtype, device=q.device)
    dv = torch.empty(k.shape, dtype=q.dtype, device=q.device)
    p = attention_varlen_bwd_params(q, k, v, out, dout, lse, cu_q, cu_k, dq, dk, dv, causal, window, scale)
    run_kernel(_C.attention_varlen_bwd, _C.attention_varlen_bwd_workspace, p, q)
    return dq, dk, dv


def _attention_varlen_backward_fake(dout, q, k, v, out, lse, cu_q, cu_k, causal, window, scale):
    _check_backward(dout, q, k, v, out, lse, cu_q, cu_k, causal, window, scale)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _varlen_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, causal, window, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.mark_non_differentiable(lse)
    ctx.attrs = (causal, window, scale)


def _varlen_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    causal, window, scale = ctx.attrs
    dq, dk, dv = torch.ops.zaya_rt.attention_varlen_backward(
        grad_out.to(q.dtype), q, k, v, out, lse, cu_q, cu_k, causal, window, scale
    )
    return dq, dk, dv, None, None, None, None, None


# ---- attention_decode ---------------------------------------------------------------------------------------


def _check_decode(q, k_cache, v_cache, block_table, seq_lens, scale, window):
    op = "attention_decode"
    _check_qkv(op, 4, q, "k_cache", k_cache, "v_cache", v_cache)
    check_tensor(op, "block_table", block_table, dtypes=(torch.int32,), ndim=2)
    check_tensor(op, "seq_lens", seq_lens, dtypes=(torch.int32,), ndim=1)
    B, n = q.shape[:2]
    P, page = k_cache.shape[:2]
    _check_heads(op, q.shape[2], k_cache.shape[2], q.shape[3], k_cache.shape[3])
    if n < 1:
        raise ValueError(f"zaya_rt.{op}: need at least one query token per sequence, q is {tuple(q.shape)}")
    if page < 1 or page & (page - 1):
        raise ValueError(f"zaya_rt.{op}: page_size (k_cache.shape[1]) must be a power of two, got {page}")
    if P < 1:
        raise ValueError(f"zaya_rt.{op}: the cache has no pages")
    if block_table.shape[0] != B or seq_lens.shape[0] != B:
        raise ValueError(f"zaya_rt.{op}: block_table {tuple(block_table.shape)} and seq_lens {tuple(seq_lens.shape)} "
                         f"must have B={B} rows")
    check_same_device(op, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens)
    _check_scalars(op, True, window, scale)


def _check_decode_values(q, k_cache, block_table, seq_lens):
    # Host-resident values only (a GPU check would sync).
    if seq_lens.device.type != "cpu" or seq_lens.numel() == 0:
        return
    n, (P, page), width = q.shape[1], k_cache.shape[:2], block_table.shape[1]
    lens = seq_lens.long()
    bad = (lens != 0) & ((lens < n) | (lens > width * page))
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(f"zaya_rt.attention_decode: seq_lens[{b}] = {int(lens[b])} must be 0 (inactive) or in "
                         f"[{n}, {width * page}] (query tokens .. block_table width x page_size)")
    used = torch.arange(width)[None, :] * page < lens[:, None]
    ids = block_table.long()
    wrong = used & ((ids < 0) | (ids >= P))
    if bool(wrong.any()):
        b, j = (int(x) for x in wrong.nonzero()[0])
        raise ValueError(f"zaya_rt.attention_decode: block_table[{b}, {j}] = {int(ids[b, j])} is not a page of the "
                         f"cache (0..{P - 1})")


def _attention_decode_impl(q, k_cache, v_cache, block_table, seq_lens, scale, window):
    _check_decode(q, k_cache, v_cache, block_table, seq_lens, scale, window)
    if q.dtype == torch.float64:  # the C++ dispatch checks the values of the kernel path
        _check_decode_values(q, k_cache, block_table, seq_lens)
        return ref.attention_decode_ref(q, k_cache, v_cache, block_table, seq_lens, scale=scale, window=window or None)
    q, k_cache, v_cache = _unit_inner(q), _unit_inner(k_cache), _unit_inner(v_cache)
    block_table, seq_lens = _unit_inner(block_table), seq_lens.contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    p = attention_decode_params(q, k_cache, v_cache, block_table, seq_lens, out, window, scale)
    run_kernel(_C.attention_decode, _C.attention_decode_workspace, p, q)
    return out


def _attention_decode_fake(q, k_cache, v_cache, block_table, seq_lens, scale, window):
    _check_decode(q, k_cache, v_cache, block_table, seq_lens, scale, window)
    return q.new_empty(q.shape)


register_kernels("attention_varlen", _attention_varlen_impl, _attention_varlen_fake)
register_kernels("attention_varlen_backward", _attention_varlen_backward_impl, _attention_varlen_backward_fake)
register_kernels("attention_decode", _attention_decode_impl, _attention_decode_fake)
register_autograd("attention_varlen", _varlen_setup, _varlen_backward)


_WINDOW_ALL = 2**31 - 1


def _window_arg(op: str, window) -> int:
    if window is None:
        return 0
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"zaya_rt.{op}: window must be a positive int or None, got {window!r}")
    # Positions are int32, so every window of 2**31 - 1 keys or more masks nothing: one int32 value stands for
    # them all (the op schemas take an int64, the GPU kernels an int32).
    return min(window, _WINDOW_ALL)


def _scale_arg(op: str, scale, d: int) -> float:
    if scale is None:
        return d**-0.5 if d > 0 else 1.0  # a zero head_dim is rejected by the op's checks
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"zaya_rt.{op}: scale must be a finite number or None, got {scale!r}")
    return float(scale)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, *, causal: bool = True, window: int | None = None,
                     scale: float | None = None, return_lse: bool = False):
    """Flash-style attention over packed variable-length sequences (fp32 scores, softmax and accumulation).

    q [Tq, Hq, d], k/v [Tk, Hk, d]: one dtype (float32/bfloat16/float16; float64 runs the reference), unit
    stride along d, other strides arbitrary; Hq % Hk == 0; d a multiple of 8 in [32, 256]. cu_seqlens_q/k:
    int32 [B + 1] on q's device, 0 = cu[0] <= ... <= cu[B] = Tq (Tk). Query i of sequence b (Lq queries,
    Lk keys) sits at position pos = Lk - Lq + i (bottom-right aligned, flash-attention's convention) and
    sees key j when j <= pos (causal) and pos - j < window: `window` counts the keys a query sees, itself
    included, which is transformers' Zaya "hybrid_sliding" mask (`kv_idx > q_idx - sliding_window` on top
    of the causal mask, masking_utils.sliding_window_overlay) and flash-attention's window_size=(window-1, 0).
    scale defaults to d**-0.5. A query that sees no key outputs 0 (lse -inf).

    Returns out [Tq, Hq, d] in q's dtype, and with return_lse also lse [Hq, Tq] float32 (natural log; not
    differentiable). Differentiable in q, k and v (dk/dv summed over each GQA group).
    """
    op = "attention_varlen"
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v, cu_seqlens_q, cu_seqlens_k)):
        _check_varlen(op, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, 0, 1.0)
    if not isinstance(causal, bool):
        raise TypeError(f"zaya_rt.{op}: causal must be a bool, got {type(causal).__name__}")
    w = _window_arg(op, window)
    s = _scale_arg(op, scale, q.shape[-1])
    out, lse = torch.ops.zaya_rt.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, w, s)
    return (out, lse) if return_lse else out


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, *, scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """Attention of the last n tokens of each sequence against a paged KV cache (forward only).

    q [B, n, Hq, d]: query tokens at positions seq_lens[b] - n .. seq_lens[b] - 1, causal among themselves.
    k_cache/v_cache [P, page_size, Hk, d] in q's dtype (page_size a power of two), unit stride along d.
    block_table [B, max_pages] int32: page ids of each sequence in order (entries past its pages are ignored).
    seq_lens [B] int32: context length including the n new tokens (whose K/V are already in the cache), in
    [n, max_pages * page_size], or 0 for an inactive row (its output is 0). Nothing past seq_lens is read.
    On CPU, out-of-range seq_lens and page ids raise ValueError; on GPU they are the caller's contract.
    window and scale as in `attention_varlen`. Returns [B, n, Hq, d] in q's dtype.
    """
    op = "attention_decode"
    if not all(isinstance(t, torch.Tensor) for t in (q, k_cache, v_cache, block_table, seq_lens)):
        _check_decode(q, k_cache, v_cache, block_table, seq_lens, 1.0, 0)
    w = _window_arg(op, window)
    s = _scale_arg(op, scale, q.shape[-1])
    return torch.ops.zaya_rt.attention_decode(q, k_cache, v_cache, block_table, seq_lens, s, w)

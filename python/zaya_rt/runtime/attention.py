"""Attention over packed sequences and over the paged cache, with the contracts of the attention ops that the
CCA-attention issue adds to zaya_rt.ops. Until those ops are in this branch these are shims (masked
softmax attention through PyTorch's SDPA after gathering the pages); they call the ops as soon as they exist.

  attention_varlen(q [Tq, Hq, d], k [Tk, Hk, d], v, cu_seqlens_q [B+1] int32, cu_seqlens_k [B+1] int32, *,
                   causal=True, window=None, scale=None) -> [Tq, Hq, d]
      bottom-right aligned causal: query i of sequence b sits at position Lk_b - Lq_b + i; with a window W,
      key j is allowed iff pos_q - j < W.
  attention_decode(q [B, n, Hq, d], k_cache [P, S, Hk, d], v_cache, block_table [B, M] int32,
                   seq_lens [B] int32 (the n new tokens included, already written), *, scale=None, window=None)
      -> [B, n, Hq, d]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zaya_rt import ops, ref


def _op(name: str, q: torch.Tensor):
    """The zaya_rt op, when it exists and takes q's dtype and head dim (multiples of 8 in [32, 256])."""
    d = q.shape[-1]
    if q.dtype == torch.float64 or not (32 <= d <= 256 and d % 8 == 0):
        return None
    return getattr(ops, name, None)


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal: bool = True, window: int | None = None,
                     scale: float | None = None) -> torch.Tensor:
    op = _op("attention_varlen", q)
    if op is not None:
        return op(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal, window=window, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = q.new_empty(q.shape)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        lq, lk = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        if lq == 0:
            continue
        qpos = torch.arange(lk - lq, lk, device=q.device)[:, None]
        kpos = torch.arange(lk, device=q.device)[None]
        allowed = kpos <= qpos if causal else torch.ones(lq, lk, dtype=torch.bool, device=q.device)
        if window is not None:
            allowed = allowed & (qpos - kpos < window)
        out[cq[b] : cq[b + 1]] = _masked(
            q[None, cq[b] : cq[b + 1]], k[None, ck[b] : ck[b + 1]], v[None, ck[b] : ck[b + 1]], allowed[None], scale
        )[0]
    return out


def attention_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale: float | None = None,
                     window: int | None = None) -> torch.Tensor:
    op = _op("attention_decode", q)
    if op is not None:
        return op(q, k_cache, v_cache, block_table, seq_lens, scale=scale, window=window)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, n = q.shape[:2]
    span = block_table.shape[1] * k_cache.shape[1]
    if window is not None:
        span = min(span, window + n - 1)  # keys older than the window are never read
    k = ops.gather_tail(k_cache, block_table, seq_lens, span)
    v = ops.gather_tail(v_cache, block_table, seq_lens, span)
    lens = seq_lens.long()[:, None, None]
    kpos = lens - span + torch.arange(span, device=q.device)[None, None]   # [B, 1, span]
    qpos = lens - n + torch.arange(n, device=q.device)[None, :, None]      # [B, n, 1]
    allowed = (kpos >= 0) & (kpos <= qpos)
    if window is not None:
        allowed &= qpos - kpos < window
    return _masked(q, k, v, allowed, scale)


def _masked(q, k, v, allowed, scale: float) -> torch.Tensor:
    """q [B, n, Hq, d], k/v [B, S, Hk, d], allowed [B, n, S] (every query allows at least one key)."""
    if q.dtype == torch.float64:
        return ref.attention(q, k, v, allowed, scale)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=allowed[:, None], scale=scale, enable_gqa=True)
    return out.transpose(1, 2)

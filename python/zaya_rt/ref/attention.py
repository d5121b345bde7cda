"""Reference GQA softmax attention with an explicit boolean mask, and the packed varlen and paged decode
compositions built on it (the oracle of zaya_rt.ops.attention_varlen / attention_decode)."""

from __future__ import annotations

import torch


def attention(
    q_BTHd: torch.Tensor, k_BSKd: torch.Tensor, v_BSKd: torch.Tensor, allowed_BTS: torch.Tensor, scale: float
) -> torch.Tensor:
    """q [B, T, Hq, d], k/v [B, S, Hk, d], allowed [B, T, S] (True = query may attend to key).

    Softmax in fp32 (fp64 for fp64 inputs). Queries with no allowed key give 0. Returns [B, T, Hq, d].
    """
    B, T, Hq, d = q_BTHd.shape
    Hk = k_BSKd.shape[2]
    q = q_BTHd.view(B, T, Hk, Hq // Hk, d)
    scores = torch.einsum("btkgd,bskd->bkgts", q, k_BSKd) * scale
    mask = allowed_BTS[:, None, None]
    sdt = torch.promote_types(scores.dtype, torch.float32)
    scores = scores.to(sdt).masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(mask.any(dim=-1, keepdim=True), probs, 0.0).to(q.dtype)
    out = torch.einsum("bkgts,bskd->btkgd", probs, v_BSKd)
    return out.reshape(B, T, Hq, d)


def varlen_allowed(
    lq: int, lk: int, causal: bool, window: int | None, device: torch.device | None = None
) -> torch.Tensor:
    """[lq, lk] mask of one sequence: query i sits at position lk - lq + i (bottom-right aligned); key j is
    allowed when j <= pos (causal) and pos - j < window (window = keys seen, the query's own included)."""
    pos = torch.arange(lq, device=device)[:, None] + (lk - lq)
    j = torch.arange(lk, device=device)[None, :]
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= pos
    if window is not None:
        allowed &= pos - j < window
    return allowed


def attention_varlen_ref(q_THd: torch.Tensor, k_SKd: torch.Tensor, v_SKd: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, *, causal: bool = True, window: int | None = None,
                         scale: float | None = None) -> torch.Tensor:
    """Packed variable-length attention through `attention`, one sequence at a time. q [Tq, Hq, d],
    k/v [Tk, Hk, d], cu_seqlens [B + 1]. Returns [Tq, Hq, d] in q's dtype."""
    scale = q_THd.shape[-1] ** -0.5 if scale is None else scale
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = []
    for b in range(len(cq) - 1):
        q = q_THd[cq[b] : cq[b + 1]][None]
        k, v = k_SKd[ck[b] : ck[b + 1]][None], v_SKd[ck[b] : ck[b + 1]][None]
        allowed = varlen_allowed(q.shape[1], k.shape[1], causal, window, q.device)[None]
        outs.append(attention(q, k, v, allowed, scale)[0])
    return torch.cat(outs) if outs else q_THd.new_empty(q_THd.shape)


def attention_decode_ref(
    q_BnHd: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Paged decode through `attention`: gathers each sequence's K/V from its pages (cache [P, page, Hk, d],
    block_table [B, max_pages], seq_lens [B] including the n new tokens); its n queries are its last n positions.
    A sequence with seq_lens 0 gives zeros. Returns [B, n, Hq, d]."""
    B, n = q_BnHd.shape[:2]
    page = k_cache.shape[1]
    scale = q_BnHd.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros_like(q_BnHd)
    for b in range(B):
        L = int(seq_lens[b])
        if L == 0:
            continue
        tokens = torch.arange(L, device=q_BnHd.device)
        pages = block_table[b].long()[tokens // page]
        k = k_cache[pages, tokens % page][None]
        v = v_cache[pages, tokens % page][None]
        allowed = varlen_allowed(n, L, True, window, q_BnHd.device)[None]
        out[b] = attention(q_BnHd[b : b + 1], k, v, allowed, scale)[0]
    return out


def attention_varlen_lse_ref(q_THd: torch.Tensor, k_SKd: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, *, causal: bool = True, window: int | None = None,
                             scale: float | None = None) -> torch.Tensor:
    """Natural-log log-sum-exp of the scaled allowed scores, [Hq, Tq] (-inf for a query that sees no key),
    computed in q's dtype promoted to at least float32."""
    scale = q_THd.shape[-1] ** -0.5 if scale is None else scale
    Hq, Hk = q_THd.shape[1], k_SKd.shape[1]
    sdt = torch.promote_types(q_THd.dtype, torch.float32)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    lse = torch.full((Hq, q_THd.shape[0]), float("-inf"), dtype=sdt, device=q_THd.device)
    for b in range(len(cq) - 1):
        q = q_THd[cq[b] : cq[b + 1]].to(sdt)
        k = k_SKd[ck[b] : ck[b + 1]].to(sdt).repeat_interleave(Hq // Hk, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) * scale
        allowed = varlen_allowed(q.shape[0], k.shape[0], causal, window, q.device)
        lse[:, cq[b] : cq[b + 1]] = scores.masked_fill(~allowed, float("-inf")).logsumexp(-1)
    return lse

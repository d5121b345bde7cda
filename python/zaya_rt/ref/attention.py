"""Reference GQA softmax attention with an explicit boolean mask."""

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

"""Reference CCA projection (SPEC section 3, steps 2-4): convolved q/k with residual paths, shifted values,
L2 qk norm with key temperature, partial rotary embedding.

Layout legend: B batch, T new tokens, D hidden, Hq/Hk query/key heads, d head dim, C = (Hq + Hk) * d conv
channels, K = (k0 - 1) + (k1 - 1) conv state columns, rd rotary dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cca_project(
    x_BTD: torch.Tensor,
    q_w: torch.Tensor,
    q_b: torch.Tensor | None,
    k_w: torch.Tensor,
    k_b: torch.Tensor | None,
    v_cur_w: torch.Tensor,
    v_cur_b: torch.Tensor | None,
    v_del_w: torch.Tensor,
    v_del_b: torch.Tensor | None,
    conv0_w: torch.Tensor,
    conv0_b: torch.Tensor,
    conv1_w: torch.Tensor,
    conv1_b: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    conv_state_BCK: torch.Tensor | None = None,
    v_state_BV: torch.Tensor | None = None,
):
    """CCA q/k/v from x [B, T, D] (padding rows already zeroed).

    conv0_w [C, 1, k0] (depthwise), conv1_w [C, C / (Hq + Hk), k1] (one group per head).
    conv_state [B, C, K] and v_state [B, Hk*d/2] continue an earlier chunk (None = sequence start).
    Returns q [B, T, Hq, d], k [B, T, Hk, d], v [B, T, Hk, d], conv_state [B, C, K], v_state [B, Hk*d/2].
    """
    B, T, D = x_BTD.shape
    qp = F.linear(x_BTD, q_w, q_b)
    kp = F.linear(x_BTD, k_w, k_b)
    d = qp.shape[-1] // num_q_heads
    group = num_q_heads // num_kv_heads
    k_rep = kp.view(B, T, num_kv_heads, 1, d).expand(B, T, num_kv_heads, group, d).reshape(B, T, num_q_heads, d)
    q_res = (qp.view(B, T, num_q_heads, d) + k_rep) * 0.5
    k_res = q_res.view(B, T, num_kv_heads, group, d).mean(dim=-2)

    K = (conv0_w.shape[-1] - 1) + (conv1_w.shape[-1] - 1)
    qk_BCT = torch.cat([qp, kp], dim=-1).transpose(1, 2)
    if conv_state_BCK is None:
        qk_BCT = F.pad(qk_BCT, (K, 0))
    else:
        qk_BCT = torch.cat([conv_state_BCK.to(qk_BCT.dtype), qk_BCT], dim=-1)
    new_conv_state = qk_BCT[..., qk_BCT.shape[-1] - K :]
    conv = F.conv1d(qk_BCT, conv0_w, conv0_b, groups=qk_BCT.shape[1])
    conv = F.conv1d(conv, conv1_w, conv1_b, groups=num_q_heads + num_kv_heads).transpose(1, 2)
    q = conv[..., : num_q_heads * d].reshape(B, T, num_q_heads, d) + q_res
    k = conv[..., num_q_heads * d :].reshape(B, T, num_kv_heads, d) + k_res

    v_cur = F.linear(x_BTD, v_cur_w, v_cur_b)
    v_del = F.linear(x_BTD, v_del_w, v_del_b)
    if v_state_BV is None:
        prev = F.linear(x_BTD.new_zeros(B, 1, D), v_del_w, v_del_b)
    else:
        prev = v_state_BV.to(v_del.dtype).unsqueeze(1)
    v_shift = torch.cat([prev, v_del[:, :-1]], dim=1)
    v = torch.cat([v_cur, v_shift], dim=-1).view(B, T, num_kv_heads, d)
    return q, k, v, new_conv_state, v_del[:, -1]


def qk_norm(q: torch.Tensor, k: torch.Tensor, temp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [..., Hq, d], k [..., Hk, d], temp [Hk]: both to L2 norm sqrt(d) (norm clamped at the dtype's eps),
    then k times its head's temperature."""
    d = q.shape[-1]
    eps = torch.finfo(q.dtype).eps
    q = q * (d**0.5 / q.norm(p=2, dim=-1, keepdim=True).clamp_min(eps))
    k = k * (d**0.5 / k.norm(p=2, dim=-1, keepdim=True).clamp_min(eps))
    return q, k * temp[:, None]


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, partial_rotary_factor: float, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., rd] for integer positions [...], rd = int(head_dim * partial_rotary_factor).
    Frequencies in fp32 (fp64 when dtype is fp64), then cast to dtype."""
    rd = int(head_dim * partial_rotary_factor)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, rd, 2, dtype=torch.float32).to(cdt) / rd))
    freqs = positions[..., None].to(cdt) * inv_freq.to(positions.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first rd channels of x [B, T, H, d]; cos/sin [B or 1, T, rd]."""
    rd = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x1, x2 = x_rot[..., : rd // 2], x_rot[..., rd // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)

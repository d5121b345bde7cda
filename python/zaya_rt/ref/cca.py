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
    q, k, new_conv_state = cca_conv_qk(
        qp, kp, conv0_w, conv0_b, conv1_w, conv1_b, num_q_heads, num_kv_heads, conv_state_BCK
    )
    d = qp.shape[-1] // num_q_heads
    v_cur = F.linear(x_BTD, v_cur_w, v_cur_b)
    v_del = F.linear(x_BTD, v_del_w, v_del_b)
    if v_state_BV is None:
        prev = F.linear(x_BTD.new_zeros(B, 1, D), v_del_w, v_del_b)
    else:
        prev = v_state_BV.to(v_del.dtype).unsqueeze(1)
    v_shift = torch.cat([prev, v_del[:, :-1]], dim=1)
    v = torch.cat([v_cur, v_shift], dim=-1).view(B, T, num_kv_heads, d)
    return q, k, v, new_conv_state, v_del[:, -1]


def cca_conv_qk(qp: torch.Tensor, kp: torch.Tensor, conv0_w: torch.Tensor, conv0_b: torch.Tensor,
                conv1_w: torch.Tensor, conv1_b: torch.Tensor, num_q_heads: int, num_kv_heads: int,
                conv_state_BCK: torch.Tensor | None = None):
    """Convolved q/k with their residual paths from the projections qp [B, T, Hq*d], kp [B, T, Hk*d].

    Returns q [B, T, Hq, d], k [B, T, Hk, d] (before qk norm) and the new conv state [B, C, K]
    (the last K pre-conv columns; conv_state None = zeros)."""
    B, T, _ = qp.shape
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
    return q, k, new_conv_state


def qk_norm(
    q: torch.Tensor, k: torch.Tensor, temp: torch.Tensor, eps: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [..., Hq, d], k [..., Hk, d], temp [Hk]: both to L2 norm sqrt(d) (norm clamped at eps, by default
    the dtype's eps), then k times its head's temperature."""
    d = q.shape[-1]
    eps = torch.finfo(q.dtype).eps if eps is None else eps
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
    inv_freq = rope_inv_freq(rd, theta, dtype)
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


def rope_inv_freq(rope_dims: int, theta: float, dtype: torch.dtype) -> torch.Tensor:
    """Inverse frequencies [rope_dims / 2] as transformers computes them: fp32 (fp64 when dtype is fp64)."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    return 1.0 / (theta ** (torch.arange(0, rope_dims, 2, dtype=torch.float32).to(cdt) / rope_dims))


def cca_prep(
    qp: torch.Tensor,
    kp: torch.Tensor,
    v_cur: torch.Tensor,
    v_del: torch.Tensor,
    conv0_w: torch.Tensor,
    conv0_b: torch.Tensor,
    conv1_w: torch.Tensor,
    conv1_b: torch.Tensor,
    temp: torch.Tensor,
    positions: torch.Tensor,
    cu_seqlens: torch.Tensor,
    conv_state: torch.Tensor | None = None,
    v_state: torch.Tensor | None = None,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    rope_dims: int,
    rope_theta: float,
    norm_eps: float | None = None,
):
    """Reference of `zaya_rt.ops.cca_prep` on packed sequences (cu_seqlens [B+1]), one sequence at a time.

    qp [T, Hq*d], kp [T, Hk*d], v_cur/v_del [T, Hk*d/2]; conv_state [B, C, K] / v_state [B, Hk*d/2] (None =
    zeros). Returns q [T, Hq, d], k [T, Hk, d] (after qk norm, temperature and RoPE on the first rope_dims
    channels at `positions`), v [T, Hk, d], conv_state_out [B, C, K], v_state_out [B, Hk*d/2]. Works in the
    inputs' dtype; norm_eps defaults to that dtype's eps.
    """
    T = qp.shape[0]
    Hq, Hk = num_q_heads, num_kv_heads
    d = qp.shape[1] // Hq
    C, V = (Hq + Hk) * d, v_cur.shape[1]
    K = (conv0_w.shape[-1] - 1) + (conv1_w.shape[-1] - 1)
    dtype = qp.dtype
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = rope_inv_freq(rope_dims, rope_theta, dtype).to(qp.device)
    cu = [int(c) for c in cu_seqlens.tolist()]
    qs, ks, vs, states, v_states = [], [], [], [], []
    for b in range(len(cu) - 1):
        s, e = cu[b], cu[b + 1]
        cs_in = conv_state[b : b + 1] if conv_state is not None else qp.new_zeros(1, C, K)
        vs_in = v_state[b : b + 1].to(dtype) if v_state is not None else qp.new_zeros(1, V)
        if e == s:
            states.append(cs_in.to(dtype))
            v_states.append(vs_in)
            continue
        q, k, new_state = cca_conv_qk(
            qp[None, s:e], kp[None, s:e], conv0_w, conv0_b, conv1_w, conv1_b, Hq, Hk, cs_in
        )
        q, k = qk_norm(q, k, temp, norm_eps)
        freqs = positions[s:e].to(cdt)[:, None] * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(dtype)[None], emb.sin().to(dtype)[None]
        qs.append(partial_rope(q, cos, sin)[0])
        ks.append(partial_rope(k, cos, sin)[0])
        v_shift = torch.cat([vs_in, v_del[s : e - 1]], dim=0)
        vs.append(torch.cat([v_cur[s:e], v_shift], dim=-1).view(e - s, Hk, d))
        states.append(new_state)
        v_states.append(v_del[e - 1 : e])
    empty = qp.new_zeros(0, Hq, d), qp.new_zeros(0, Hk, d), qp.new_zeros(0, Hk, d)
    q = torch.cat(qs) if qs else empty[0]
    k = torch.cat(ks) if ks else empty[1]
    v = torch.cat(vs) if vs else empty[2]
    conv_state_out = torch.cat(states) if states else qp.new_zeros(0, C, K)
    v_state_out = torch.cat(v_states) if v_states else qp.new_zeros(0, V)
    return q, k, v, conv_state_out, v_state_out

"""CCA preparation over a packed batch, with the contract of the `zaya_rt.ops.cca_prep` op that the CCA issue
adds; until that op is in this branch, `cca_prep` here is a reference shim on zaya_rt.ref pieces.

  cca_prep(qp [T, Hq*d], kp [T, Hk*d], v_cur [T, Hk*d/2], v_del [T, Hk*d/2], conv0_w, conv0_b, conv1_w, conv1_b,
           temp [Hk], positions [T], cu_seqlens [B+1] int32, conv_state [B, C, K], v_state [B, Hk*d/2], *,
           num_q_heads, num_kv_heads, rope_dims, rope_theta)
      -> q [T, Hq, d], k [T, Hk, d], v [T, Hk, d], conv_state_out [B, C, K], v_state_out [B, Hk*d/2]
  Sequence b owns tokens cu_seqlens[b] .. cu_seqlens[b+1]-1 and continues from conv_state[b] / v_state[b]
  (a new sequence starts from zeros and from v_del's bias). C = (Hq + Hk) * d, K = (k0 - 1) + (k1 - 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zaya_rt import ops, ref


def rope_cos_sin(positions: torch.Tensor, rope_dims: int, theta: float, dtype: torch.dtype):
    """cos, sin [T, rope_dims] for integer positions [T] (transformers' default rotary frequencies)."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dims, 2, dtype=torch.float32).to(cdt) / rope_dims))
    freqs = positions[:, None].to(cdt) * inv_freq.to(positions.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def cca_prep(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
             v_state, *, num_q_heads: int, num_kv_heads: int, rope_dims: int, rope_theta: float):
    op = getattr(ops, "cca_prep", None)
    if op is not None:
        return op(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens,
                  conv_state, v_state, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, rope_dims=rope_dims,
                  rope_theta=rope_theta)
    T = qp.shape[0]
    B, C, K = conv_state.shape
    hq, hk = num_q_heads, num_kv_heads
    d = qp.shape[1] // hq
    lens, seq, local, n_max = _packing(cu_seqlens, T)

    qk = torch.cat([qp, kp], dim=-1)
    padded = qk.new_zeros(B, K + n_max, C)
    padded[:, :K] = conv_state.transpose(1, 2).to(qk.dtype)
    padded[seq, K + local] = qk
    conv = _two_stage_conv(padded.float(), conv0_w.float(), conv0_b.float(), conv1_w.float(), conv1_b.float(),
                           hq + hk)                                   # [B, n_max, C], fp32
    conv_tok = conv[seq, local].to(qk.dtype)                           # [T, C]
    tail = lens[:, None] + torch.arange(K, device=qp.device)[None]
    conv_state_out = padded.gather(1, tail[..., None].expand(B, K, C)).transpose(1, 2)

    group = hq // hk
    k_rep = kp.view(T, hk, 1, d).expand(T, hk, group, d).reshape(T, hq, d)
    q_res = (qp.view(T, hq, d) + k_rep) * 0.5
    k_res = q_res.view(T, hk, group, d).mean(dim=-2)
    q = conv_tok[:, : hq * d].reshape(T, hq, d) + q_res
    k = conv_tok[:, hq * d :].reshape(T, hk, d) + k_res
    q, k = ref.qk_norm(q, k, temp)
    cos, sin = rope_cos_sin(positions, rope_dims, rope_theta, q.dtype)
    q = ref.partial_rope(q[None], cos[None], sin[None])[0]
    k = ref.partial_rope(k[None], cos[None], sin[None])[0]

    shifted = torch.cat([v_del.new_zeros(1, v_del.shape[1]), v_del[:-1]])
    prev = torch.where((local == 0)[:, None], v_state.to(v_del.dtype)[seq], shifted)
    v = torch.cat([v_cur, prev], dim=-1).view(T, hk, d)
    last = (cu_seqlens[1:].long() - 1).clamp_min(0)
    v_state_out = torch.where((lens > 0)[:, None], v_del[last], v_state.to(v_del.dtype))
    return q, k, v, conv_state_out, v_state_out


_last_packing: list = [None, None]


def _packing(cu_seqlens: torch.Tensor, T: int):
    """(lens [B], sequence of each token [T], index inside its sequence [T], longest chunk); remembered for
    the last cu_seqlens tensor, which every layer of a step shares."""
    if _last_packing[0] is cu_seqlens:
        return _last_packing[1]
    B = cu_seqlens.shape[0] - 1
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(B, device=cu_seqlens.device), lens, output_size=T)
    local = torch.arange(T, device=cu_seqlens.device) - cu_seqlens.long()[seq]
    n_max = int(lens.max()) if B else 0
    _last_packing[:] = [cu_seqlens, (lens, seq, local, n_max)]
    return _last_packing[1]


def _two_stage_conv(x_BTC, conv0_w, conv0_b, conv1_w, conv1_b, groups: int) -> torch.Tensor:
    """Depthwise conv (kernel k0) then grouped conv (kernel k1, `groups` groups) along T of x [B, T, C], no
    padding: [B, T - (k0-1) - (k1-1), C]. Written as shifted multiply-adds and one small GEMM per tap, which
    is far cheaper than F.conv1d at decode sizes on the CPU."""
    B, T, C = x_BTC.shape
    k0, k1 = conv0_w.shape[-1], conv1_w.shape[-1]
    T0 = T - k0 + 1
    y = conv0_b
    for j in range(k0):
        y = y + conv0_w[:, 0, j] * x_BTC[:, j : j + T0]
    g = C // groups
    T1 = T0 - k1 + 1
    w = conv1_w.view(groups, g, g, k1)
    yh = y.view(B, T0, groups, g)
    out = conv1_b.view(groups, g)
    for j in range(k1):
        out = out + torch.einsum("btgi,goi->btgo", yh[:, j : j + T1], w[..., j])
    return out.reshape(B, T1, C)


def boundary_states(qp, kp, v_del, conv_state, starts: list[int], state_rows: list[int], ends: list[int]):
    """CCA state after `ends[r]` tokens of a chunk: conv [R, C, K] and v [R, Hk*d/2].

    Request r reads the chunk of sequence `state_rows[r]` (its tokens start at packed row `starts[r]`, its state
    before the chunk is conv_state[state_rows[r]]); ends[r] >= 1 tokens of that chunk lie before the boundary.
    """
    B, C, K = conv_state.shape
    T = qp.shape[0]
    table = torch.cat([torch.cat([qp, kp], dim=-1), conv_state.transpose(1, 2).reshape(B * K, C).to(qp.dtype)])
    rows = []
    for start, b, end in zip(starts, state_rows, ends):
        for i in range(K):
            local = end - K + i
            rows.append(start + local if local >= 0 else T + b * K + (K + local))
    index = torch.tensor(rows, dtype=torch.long, device=qp.device)
    conv = table.index_select(0, index).view(len(ends), K, C).transpose(1, 2)
    v_rows = torch.tensor([s + e - 1 for s, e in zip(starts, ends)], dtype=torch.long, device=qp.device)
    return conv, v_del.index_select(0, v_rows)

"""What one forward pass of the layer math in `modeling.py` runs with: where the tokens sit, which kernels
compute, and how per-layer state is read and written.

The layers work on flat token rows [N, ...]. A `ForwardContext` carries the packing (positions, cu_seqlens:
the CCA conv and value shift restart at every boundary), the padding mask, a kernel set and a state adapter:

- `OpsKernels` (the default): checked, differentiable `zaya_rt.ops` through the modules themselves. The
  runtime injects its own set (direct CPU `_C` calls with cached weights) with the same methods.
- A state adapter gives each attention layer its incoming CCA state, stores its K/V and outgoing CCA state,
  and attends. `RowsState` serves the model's own forms (packed documents or batch rows, with or without the
  contiguous `ZayaCache`); the runtime's paged cache has its adapter in `zaya_rt.runtime.runner`.
Legend: N token rows, B sequences (batch rows or packed documents), T tokens per batch row, S keys, D hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zaya_rt import ops, ref
from zaya_rt.model.cache import ZayaCache


class OpsKernels:
    """The default kernel set: each module's own forward (zaya_rt.ops with autograd; ref where no kernel takes
    the shape). Inputs and outputs are flat rows [N, ...]."""

    def embed(self, model, input_ids_N: torch.Tensor):
        """(h [N, D] fp32, the first layer's input_layernorm(h)) of `model` (a ZayaModel), see ZayaModel.embed."""
        h = model.embed(input_ids_N)
        return h, model.layers[0].input_layernorm(h)

    def qkv(self, proj, x_ND: torch.Tensor):
        """(qp [N, Hq*d], kp [N, Hk*d], v_cur [N, Hk*d/2], v_del [N, Hk*d/2])."""
        return proj.q_proj(x_ND), proj.k_proj(x_ND), proj.v_proj_current(x_ND), proj.v_proj_delayed(x_ND)

    def cca(self, attn, qp, kp, v_cur, v_del, positions_N, cu_seqlens, conv_state, v_state):
        """`ops.cca_prep` of `attn` (a ZayaAttention): (q [N, Hq, d], k, v [N, Hk, d], conv_state [B, C, K],
        v_state [B, Hk*d/2]); None states start every sequence fresh."""
        proj = attn.qkv_proj
        return ops.cca_prep(
            qp, kp, v_cur, v_del, proj.conv_qk_depthwise.weight, proj.conv_qk_depthwise.bias,
            proj.conv_qk_grouped.weight, proj.conv_qk_grouped.bias, attn.qk_norm.temp, positions_N, cu_seqlens,
            conv_state, v_state, num_q_heads=proj.num_q_heads, num_kv_heads=proj.num_kv_heads,
            rope_dims=attn.rope_dims, rope_theta=attn.rope_theta,
        )

    def linear(self, module, x_ND: torch.Tensor) -> torch.Tensor:
        return module(x_ND)

    def residual_norm(self, scaling, norm, y_ND: torch.Tensor, h_ND: torch.Tensor):
        """(r fp32, norm(r)) of `scaling` (a ZayaResidualScaling) and `norm`."""
        return scaling.fused_with_norm(y_ND, h_ND, norm)

    def router(self, gate, x_ND: torch.Tensor, z_prev: torch.Tensor | None):
        """(logits [N, E+1], gate [N], choice [N], z [N, R]) of `gate` (a ZayaRouter)."""
        return gate(x_ND, z_prev)

    def experts(self, experts, x_ND: torch.Tensor, choice_N: torch.Tensor, gate_N: torch.Tensor) -> torch.Tensor:
        return experts(x_ND, choice_N, gate_N)


OPS_KERNELS = OpsKernels()


@dataclass
class ForwardContext:
    """positions [N] int64; cu_seqlens [B+1] int32 (sequence b owns rows cu[b]..cu[b+1]-1); conv_mask [N] bool
    (False: a padding row, zeroed before the CCA projection) or None; kernels (an OpsKernels-like set);
    state (an adapter with cca_state / store / attend, as RowsState); routed_experts [N, L] int or None: router
    replay, the expert (E = skip) each row must use in each layer instead of the router's own choice."""

    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    conv_mask: torch.Tensor | None
    kernels: Any
    state: Any
    routed_experts: torch.Tensor | None = None


class RowsState:
    """State adapter of the model's own forward forms.

    B sequences of T rows each (batch rows; with `cache`, continuing after `past` cached tokens), or packed
    documents (no cache; `cu_seqlens` any). `allowed` maps each window to an explicit [B, T, S] mask where
    padding makes one necessary (None otherwise)."""

    def __init__(self, cu_seqlens: torch.Tensor, *, batch: int = 1, tokens: int = 0, cache: ZayaCache | None = None,
                 past: int = 0, allowed: dict | None = None) -> None:
        self.cu_seqlens, self.B, self.T = cu_seqlens, batch, tokens
        self.cache, self.past, self.allowed = cache, past, allowed

    def cca_state(self, attn):
        """(conv_state [B, C, K], v_state [B, Hk*d/2]) before this call's tokens, or (None, None): fresh."""
        if self.cache is None or self.past == 0:
            return None, None
        lc = self.cache.layers[attn.layer_idx]
        return lc.conv_state, lc.v_state

    def store(self, attn, k_NKd, v_NKd, conv_state, v_state, pre) -> None:
        """Keeps this call's K/V and the outgoing CCA state (pre = (qp, kp, v_del, conv_state in): unused here)."""
        if self.cache is None:
            return
        lc, past, T = self.cache.layers[attn.layer_idx], self.past, self.T
        lc.k[:, past : past + T] = k_NKd.view(self.B, T, *k_NKd.shape[1:])
        lc.v[:, past : past + T] = v_NKd.view(self.B, T, *v_NKd.shape[1:])
        lc.conv_state.copy_(conv_state)
        lc.v_state.copy_(v_state)

    def attend(self, attn, q_NHd, k_NKd, v_NKd) -> torch.Tensor:
        """Causal (windowed) GQA attention of the rows q [N, Hq, d] -> [N, Hq, d]."""
        scale, window = attn.head_dim**-0.5, attn.window
        allowed = None if self.allowed is None else self.allowed[window]
        if allowed is None and self.past == 0:  # whole sequences: packed causal attention
            if attn.kernel_attention:
                return ops.attention_varlen(q_NHd, k_NKd, v_NKd, self.cu_seqlens, self.cu_seqlens, causal=True,
                                            window=window, scale=scale)
            return ref.attention_varlen_ref(q_NHd, k_NKd, v_NKd, self.cu_seqlens, self.cu_seqlens, causal=True,
                                            window=window, scale=scale)
        B, T = self.B, self.T
        q = q_NHd.view(B, T, *q_NHd.shape[1:])
        lc = self.cache.layers[attn.layer_idx] if self.cache is not None else None
        if allowed is None and attn.kernel_attention:  # the T new tokens of each row against its cached pages
            k_pages, v_pages, block_table = lc.pages()
            seq_lens = torch.full((B,), self.past + T, dtype=torch.int32, device=q.device)
            out = ops.attention_decode(q, k_pages, v_pages, block_table, seq_lens, scale=scale, window=window)
            return out.view(q_NHd.shape)
        if lc is not None:
            k, v = lc.k[:, : self.past + T], lc.v[:, : self.past + T]
        else:
            k, v = k_NKd.view(B, T, *k_NKd.shape[1:]), v_NKd.view(B, T, *v_NKd.shape[1:])
        if allowed is None:
            allowed = allowed_mask(torch.ones(B, self.past + T, dtype=torch.bool, device=q.device), self.past, T,
                                   window)
        return ref.attention(q, k, v, allowed, scale).reshape(q_NHd.shape)


def allowed_mask(valid_BS: torch.Tensor, past: int, T: int, window: int | None) -> torch.Tensor:
    """[B, T, S]: causal, within the sliding window if any, and only real keys (valid_BS [B, S] bool)."""
    S = valid_BS.shape[1]
    q_pos = torch.arange(past, past + T, device=valid_BS.device)[:, None]
    k_pos = torch.arange(S, device=valid_BS.device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (k_pos > q_pos - window)
    return allowed[None] & valid_BS[:, None, :]

"""The runtime's kernel sets for the layer math of `zaya_rt.model.modeling` (same methods as
`zaya_rt.model.context.OpsKernels`).

Both prepare each layer's weights once (call `build` again after the weights change): the q/k/v projections are
concatenated into one GEMM. `DirectKernels` (CPU) calls `_C` straight through `runtime.direct` on cached
pointers; `FusedOpsKernels` (other devices, or when direct calls are off) keeps the checked `zaya_rt.ops`.
Legend: T rows, D hidden, B sequences.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from zaya_rt import ref
from zaya_rt.model.context import OpsKernels
from zaya_rt.runtime import direct


def _fused_qkv(proj) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int, int, int]]:
    """(weight [Hq*d + Hk*d + Hk*d, D], bias or None, output widths) of a ZayaCCAProjection's four linears."""
    linears = (proj.q_proj, proj.k_proj, proj.v_proj_current, proj.v_proj_delayed)
    bias = torch.cat([m.bias for m in linears]) if proj.q_proj.bias is not None else None
    return torch.cat([m.weight for m in linears]), bias, tuple(m.weight.shape[0] for m in linears)


class FusedOpsKernels(OpsKernels):
    """`OpsKernels` with each layer's q/k/v projections as one GEMM."""

    def __init__(self, model) -> None:
        self._qkv = {}
        with torch.no_grad():
            for layer in model.model.layers:
                proj = layer.self_attn.qkv_proj
                self._qkv[proj] = _fused_qkv(proj)

    def qkv(self, proj, x_TD):
        w, b, splits = self._qkv[proj]
        return torch.split(F.linear(x_TD, w, b), splits, dim=-1)


class DirectKernels:
    """Direct `_C` calls (CPU, float32/bfloat16/float16) on weights prepared once; one shared workspace."""

    def __init__(self, model, ws: direct.Workspace) -> None:
        cfg = model.config
        self._qkv, self._cca, self._linear, self._residual = {}, {}, {}, {}
        self._router, self._experts = {}, {}
        layers = model.model.layers
        with torch.no_grad():
            for i, layer in enumerate(layers):
                attn, mlp = layer.self_attn, layer.mlp
                proj = attn.qkv_proj
                w, b, splits = _fused_qkv(proj)
                self._qkv[proj] = (direct.Linear(w, b, ws), splits)
                # the CCA conv runs in fp32 (SPEC section 3 numerics); its weights are cast once
                self._cca[attn] = direct.CcaPrep(
                    proj.conv_qk_depthwise.weight.float(), proj.conv_qk_depthwise.bias.float(),
                    proj.conv_qk_grouped.weight.float(), proj.conv_qk_grouped.bias.float(), attn.qk_norm.temp.float(),
                    num_q_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                    head_dim=cfg.head_dim, rope_dims=attn.rope_dims,
                    inv_freq=ref.rope_inv_freq(attn.rope_dims, float(attn.rope_theta), torch.float32), ws=ws)
                self._linear[attn.o_proj] = direct.Linear(attn.o_proj.weight, attn.o_proj.bias, ws)
                next_norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else model.model.norm
                self._residual[layer.post_attention_residual_scale] = direct.ResidualNorm(
                    layer.post_attention_residual_scale, layer.post_attention_layernorm)
                self._residual[layer.post_mlp_residual_scale] = direct.ResidualNorm(
                    layer.post_mlp_residual_scale, next_norm)
                self._router[mlp.gate] = direct.Router(mlp.gate, ws)
                self._experts[mlp.experts] = direct.Experts(mlp.experts, ws)
            self._linear[model.lm_head] = direct.Linear(model.lm_head.weight, model.lm_head.bias, ws,
                                                         reuse_out=False)  # the step's logits outlive it
            # ZayaModel.embed is the residual scaling of the embedding rows with no residual: (y + b) * s + 0
            body = model.model
            zero = torch.zeros_like(body.input_hidden_states_bias)
            self._embed = direct.ResidualNorm(
                SimpleNamespace(hidden_states_bias=body.input_hidden_states_bias,
                                hidden_states_scale=body.input_hidden_states_scale, residual_bias=zero,
                                residual_scale=zero), layers[0].input_layernorm)
            self._embed_weight = body.embed_tokens.weight.detach()
            self._zero_rows = torch.zeros(0, cfg.hidden_size, dtype=torch.float32)

    def embed(self, model, input_ids_N):
        T = input_ids_N.shape[0]
        if T > direct.REUSE_MAX_ROWS:
            zeros = torch.zeros(T, self._zero_rows.shape[1], dtype=torch.float32)
        else:
            if self._zero_rows.shape[0] < T:
                self._zero_rows = torch.zeros(direct.REUSE_MAX_ROWS, self._zero_rows.shape[1], dtype=torch.float32)
            zeros = self._zero_rows[:T]
        return self._embed(self._embed_weight.index_select(0, input_ids_N), zeros)

    def qkv(self, proj, x_TD):
        linear, splits = self._qkv[proj]
        return linear(x_TD).split(splits, -1)

    def cca(self, attn, qp, kp, v_cur, v_del, positions_T, cu_seqlens, conv_state, v_state):
        conv_out, v_out = torch.empty_like(conv_state), torch.empty_like(v_state)
        q, k, v = self._cca[attn](qp, kp, v_cur, v_del, positions_T, cu_seqlens, conv_state, v_state, conv_out, v_out)
        return q, k, v, conv_out, v_out

    def linear(self, module, x_TD):
        return self._linear[module](x_TD)

    def residual_norm(self, scaling, norm, y_TD, h_TD):
        # each scaling is fused with one norm, fixed when the kernels were built
        return self._residual[scaling](y_TD, h_TD)

    def router(self, gate, x_TD, z_prev):
        return self._router[gate](x_TD, z_prev)

    def experts(self, experts, x_TD, choice_T, gate_T):
        return self._experts[experts](x_TD, choice_T, gate_T)

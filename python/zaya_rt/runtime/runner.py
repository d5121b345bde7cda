"""Runs ZayaForCausalLM's layers over a packed batch against the paged cache.

A step's batch concatenates the new tokens of every scheduled sequence (T rows in total). Dense parts (norms,
projections, router, experts, head) run once over all T rows; CCA preparation continues each sequence from
its state slot; attention reads the paged cache: sequences decoding one token go through one
`attention_decode` call, fresh prompts (nothing cached yet) through one `attention_varlen` call, and prompt
chunks that continue cached pages through `attention_decode` with their chunk as the query block.
Legend: T packed tokens, B sequences, L layers, D hidden, C conv channels, K conv state columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from zaya_rt import ops, ref
from zaya_rt.runtime import attention, cca, direct
from zaya_rt.runtime.kv_cache import PagedKVCache


@dataclass
class StepBatch:
    """One engine step, built on the host by the scheduler; tensors live on the model's device."""

    input_ids: torch.Tensor      # [T] int64
    positions: torch.Tensor      # [T] int64
    cu_seqlens: torch.Tensor     # [B+1] int32
    slot_mapping: torch.Tensor   # [T] int32: page * S + offset of each token's K/V
    block_table: torch.Tensor    # [B, M] int32
    seq_lens: torch.Tensor       # [B] int32: context length after this step
    state_slots: torch.Tensor    # [B] int64: rows of the cache's CCA state
    sample_rows: torch.Tensor    # [R] int64: packed rows whose logits are returned
    lens: list[int]              # host copies of the per-sequence chunk lengths ...
    starts: list[int]            # ... and packed start rows
    fresh: list[bool]            # sequence has nothing cached before this chunk
    snapshots: list[tuple[int, int]] = field(default_factory=list)  # (sequence, tokens of its chunk before a page end)


@dataclass
class _LayerWeights:
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    splits: tuple[int, int, int, int]
    conv0_w: torch.Tensor
    conv0_b: torch.Tensor
    conv1_w: torch.Tensor
    conv1_b: torch.Tensor
    temp: torch.Tensor
    rope_dims: int
    rope_theta: float
    window: int | None


@dataclass
class _LayerKernels:
    qkv: Callable            # x [T, D] -> [T, (Hq + Hk) * d + Hk * d]
    cca: Callable            # (qp, kp, v_cur, v_del, positions, cu_seqlens, conv_in, v_in, conv_out, v_out) -> q, k, v
    o_proj: Callable
    attn_residual: Callable  # (y, h) -> (r, post_attention_layernorm(r))
    mlp_residual: Callable   # (y, r) -> (h_next, next layer's input_layernorm (or final norm)(h_next))
    router: Callable         # (x, z_prev) -> (logits, gate, choice, z)
    experts: Callable        # (x, choice, gate) -> y
    kv_write: Callable
    attention_decode: Callable | None  # pure decode steps; None: through runtime.attention
    skip_class: int | None   # E when skipped tokens pass their input through (skip_passthrough), else None


_DIRECT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ModelRunner:
    """Executes `model` (a zaya_rt ZayaForCausalLM) step by step over the paged `cache`.

    The q/k/v projection weights of each layer are concatenated once here, the CCA conv weights cast to fp32,
    and the kernels keep the addresses of the rest: call `refresh_weights()` after changing the model's
    parameters (it bumps `weight_version`, which drops captured CUDA graphs of decode steps). On the CPU the
    layers call `_C` directly (`runtime.direct`); `direct_calls=False` takes the checked `zaya_rt.ops` path
    everywhere.
    """

    def __init__(self, model, cache: PagedKVCache, *, direct_calls: bool | None = None) -> None:
        self.model, self.cache, self.config = model, cache, model.config
        self._ws = direct.Workspace()
        self._direct_calls = direct_calls
        self.weight_version = 0
        self.refresh_weights()

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Re-reads the model's weights (concatenations, casts, kernel addresses); captured graphs go stale."""
        cfg = self.config
        self.weight_version += 1
        self.layers = []
        for i, layer in enumerate(self.model.model.layers):
            proj = layer.self_attn.qkv_proj
            linears = (proj.q_proj, proj.k_proj, proj.v_proj_current, proj.v_proj_delayed)
            bias = None
            if proj.q_proj.bias is not None:
                bias = torch.cat([m.bias for m in linears])
            rope_dims = int(cfg.head_dim * cfg.partial_rotary_factor(cfg.layer_types[i]))
            self.layers.append(_LayerWeights(
                qkv_w=torch.cat([m.weight for m in linears]), qkv_b=bias,
                splits=tuple(m.weight.shape[0] for m in linears),
                # the CCA conv runs in fp32 (SPEC section 3 numerics); cast its weights once
                conv0_w=proj.conv_qk_depthwise.weight.float(), conv0_b=proj.conv_qk_depthwise.bias.float(),
                conv1_w=proj.conv_qk_grouped.weight.float(), conv1_b=proj.conv_qk_grouped.bias.float(),
                temp=layer.self_attn.qk_norm.temp.float(), rope_dims=rope_dims,
                rope_theta=cfg.rope_theta(cfg.layer_types[i]), window=cfg.window(i),
            ))
        dtype = self.model.lm_head.weight.dtype
        self.direct = self.model.lm_head.weight.device.type == "cpu" and dtype in _DIRECT_DTYPES
        if self._direct_calls is not None:
            self.direct = self.direct and self._direct_calls
        self.kernels = [self._layer_kernels(i, w) for i, w in enumerate(self.layers)]
        self.lm_head = (direct.Linear(self.model.lm_head.weight, self.model.lm_head.bias, self._ws) if self.direct
                        else self.model.lm_head)

    def _layer_kernels(self, i: int, w: _LayerWeights) -> _LayerKernels:
        """The callables layer i runs: direct `_C` calls on the CPU, `zaya_rt.ops` elsewhere."""
        cfg, layers = self.config, self.model.model.layers
        layer = layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        next_norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.model.model.norm
        skip_class = mlp.gate.num_experts if mlp.skip_passthrough else None
        if not self.direct:
            def cca_ops(qp, kp, v_cur, v_del, positions, cu_seqlens, conv_in, v_in, conv_out, v_out):
                q, k, v, conv_state, v_state = cca.cca_prep(
                    qp, kp, v_cur, v_del, w.conv0_w, w.conv0_b, w.conv1_w, w.conv1_b, w.temp, positions, cu_seqlens,
                    conv_in, v_in, num_q_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                    rope_dims=w.rope_dims, rope_theta=w.rope_theta)
                conv_out.copy_(conv_state)
                v_out.copy_(v_state)
                return q, k, v

            return _LayerKernels(
                qkv=lambda x: F.linear(x, w.qkv_w, w.qkv_b), cca=cca_ops, o_proj=attn.o_proj,
                attn_residual=lambda y, h: layer.post_attention_residual_scale.fused_with_norm(
                    y, h, layer.post_attention_layernorm),
                mlp_residual=lambda y, h: layer.post_mlp_residual_scale.fused_with_norm(y, h, next_norm),
                router=mlp.gate, experts=mlp.experts, kv_write=ops.kv_write, attention_decode=None,
                skip_class=skip_class,
            )
        ws = self._ws
        decode = None
        if 32 <= cfg.head_dim <= 256 and cfg.head_dim % 8 == 0:
            scale = cfg.head_dim**-0.5
            decode = lambda q, kp, vp, bt, lens: direct.attention_decode(q, kp, vp, bt, lens, scale, w.window, ws)  # noqa: E731
        return _LayerKernels(
            qkv=direct.Linear(w.qkv_w, w.qkv_b, ws),
            cca=direct.CcaPrep(w.conv0_w, w.conv0_b, w.conv1_w, w.conv1_b, w.temp,
                               num_q_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                               head_dim=cfg.head_dim, rope_dims=w.rope_dims,
                               inv_freq=ref.rope_inv_freq(w.rope_dims, float(w.rope_theta), torch.float32), ws=ws),
            o_proj=direct.Linear(attn.o_proj.weight, attn.o_proj.bias, ws),
            attn_residual=direct.ResidualNorm(layer.post_attention_residual_scale, layer.post_attention_layernorm),
            mlp_residual=direct.ResidualNorm(layer.post_mlp_residual_scale, next_norm),
            router=direct.Router(mlp.gate, ws),
            experts=direct.Experts(mlp.experts, ws), kv_write=direct.kv_write, attention_decode=decode,
            skip_class=skip_class,
        )

    @torch.no_grad()
    def initial_v_state(self) -> torch.Tensor:
        """[L, Hk*d/2]: the delayed value before a sequence's first token (v_del of a zero input = its bias)."""
        rows = []
        for layer in self.model.model.layers:
            lin = layer.self_attn.qkv_proj.v_proj_delayed
            rows.append(lin.bias.float() if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0]).float())
        return torch.stack(rows)

    @torch.no_grad()
    def forward(self, batch: StepBatch):
        """Logits [R, vocab] of batch.sample_rows, and the CCA snapshots [(conv [L, C, K], v [L, Hk*d/2])]
        requested in batch.snapshots. Writes K/V to the pages and the CCA states to the slots."""
        model = self.model.model
        cache = self.cache
        conv_all = cache.conv_state.index_select(1, batch.state_slots)  # [L, B, C, K]
        v_all = cache.v_state.index_select(1, batch.state_slots)
        conv_out, v_out = torch.empty_like(conv_all), torch.empty_like(v_all)
        snaps_conv, snaps_v = [], []
        groups = _attention_groups(batch)

        h = (model.embed_tokens(batch.input_ids).float() + model.input_hidden_states_bias.float()) * (
            model.input_hidden_states_scale.float())
        x = model.layers[0].input_layernorm(h)
        z = None
        per_layer = zip(self.layers, self.kernels, conv_all.unbind(0), v_all.unbind(0), conv_out.unbind(0),
                        v_out.unbind(0), cache.k_pages.unbind(0), cache.v_pages.unbind(0))
        for i, (w, kern, conv_in, v_in, conv_next, v_next, k_pages, v_pages) in enumerate(per_layer):
            qkv = kern.qkv(x)
            qp, kp, v_cur, v_del = torch.split(qkv, w.splits, dim=-1)
            q, k, v = kern.cca(qp, kp, v_cur, v_del, batch.positions, batch.cu_seqlens, conv_in, v_in, conv_next,
                               v_next)
            if batch.snapshots:
                seqs = [s for s, _ in batch.snapshots]
                sc, sv = cca.boundary_states(qp, kp, v_del, conv_in, [batch.starts[s] for s in seqs], seqs,
                                             [e for _, e in batch.snapshots])
                snaps_conv.append(sc)
                snaps_v.append(sv)
            kern.kv_write(k, v, k_pages, v_pages, batch.slot_mapping)
            attn = self._attention(i, q, k, v, batch, groups, k_pages, v_pages)
            attn = kern.o_proj(attn.reshape(attn.shape[0], -1))
            r, x2 = kern.attn_residual(attn, h)
            logits, gate, choice, z = kern.router(x2, z)
            y = kern.experts(x2, choice, gate)
            if kern.skip_class is not None:
                p_skip = torch.softmax(logits, dim=-1)[:, -1]
                y = y + torch.where(choice == kern.skip_class, p_skip, 0).to(y.dtype)[:, None] * x2
            h, x = kern.mlp_residual(y, r)
        cache.conv_state.index_copy_(1, batch.state_slots, conv_out.float())
        cache.v_state.index_copy_(1, batch.state_slots, v_out.float())
        logits = self.lm_head(x.index_select(0, batch.sample_rows))
        snapshots = []
        if batch.snapshots:
            conv_s, v_s = torch.stack(snaps_conv, 1).float(), torch.stack(snaps_v, 1).float()  # [R, L, ...]
            snapshots = [(conv_s[r], v_s[r]) for r in range(len(batch.snapshots))]
        return logits, snapshots

    def _attention(self, i: int, q, k, v, batch: StepBatch, groups, k_pages, v_pages) -> torch.Tensor:
        """Attention of the step's rows q [T, Hq, d] (k, v [T, Hk, d] already written to layer i's pages)."""
        window = self.layers[i].window
        pure_decode, decode_seqs, decode_rows, fresh_seqs, chunk_seqs = groups
        if pure_decode:
            if self.kernels[i].attention_decode is not None:
                return self.kernels[i].attention_decode(q, k_pages, v_pages, batch.block_table, batch.seq_lens)
            return attention.attention_decode(
                q[:, None], k_pages, v_pages, batch.block_table, batch.seq_lens, window=window,
            )[:, 0]
        out = q.new_empty(q.shape)
        if decode_seqs is not None:
            out[decode_rows] = attention.attention_decode(
                q.index_select(0, decode_rows)[:, None], k_pages, v_pages,
                batch.block_table.index_select(0, decode_seqs), batch.seq_lens.index_select(0, decode_seqs),
                window=window,
            )[:, 0]
        if fresh_seqs:
            rows = torch.cat([torch.arange(batch.starts[s], batch.starts[s] + batch.lens[s]) for s in fresh_seqs])
            rows = rows.to(q.device)
            cu = torch.tensor([0, *_cumsum([batch.lens[s] for s in fresh_seqs])], dtype=torch.int32, device=q.device)
            qs, ks, vs = q.index_select(0, rows), k.index_select(0, rows), v.index_select(0, rows)
            out[rows] = attention.attention_varlen(qs, ks, vs, cu, cu, causal=True, window=window)
        for s in chunk_seqs:
            a, n = batch.starts[s], batch.lens[s]
            out[a : a + n] = attention.attention_decode(
                q[None, a : a + n], k_pages, v_pages, batch.block_table[s : s + 1], batch.seq_lens[s : s + 1],
                window=window,
            )[0]
        return out


def _cumsum(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def _attention_groups(batch: StepBatch):
    """(pure decode step, decode sequence ids [n] tensor or None, their packed rows, fresh prompt sequences,
    continued chunks). A pure decode step (every sequence adds one token to cached pages) builds no index
    tensors, so nothing is copied from the host inside a step that a CUDA graph captures."""
    decode = [s for s, n in enumerate(batch.lens) if n == 1 and not batch.fresh[s]]
    fresh = [s for s, n in enumerate(batch.lens) if n > 0 and batch.fresh[s]]
    chunks = [s for s, n in enumerate(batch.lens) if n > 1 and not batch.fresh[s]]
    if len(decode) == len(batch.lens):
        return True, None, None, fresh, chunks
    if not decode:
        return False, None, None, fresh, chunks
    device = batch.input_ids.device
    seqs = torch.tensor(decode, dtype=torch.long, device=device)
    rows = torch.tensor([batch.starts[s] for s in decode], dtype=torch.long, device=device)
    return False, seqs, rows, fresh, chunks

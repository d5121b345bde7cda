"""Runs ZayaForCausalLM's layers over a packed batch against the paged cache.

A step's batch concatenates the new tokens of every scheduled sequence (T rows in total). Dense parts (norms,
projections, router, experts, head) run once over all T rows; CCA preparation continues each sequence from
its state slot; attention reads the paged cache: sequences decoding one token go through one
`attention_decode` call, fresh prompts (nothing cached yet) through one `attention_varlen` call, and prompt
chunks that continue cached pages through `attention_decode` with their chunk as the query block.
Legend: T packed tokens, B sequences, L layers, D hidden, C conv channels, K conv state columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from zaya_rt import ops
from zaya_rt.runtime import attention, cca
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


class ModelRunner:
    """Executes `model` (a zaya_rt ZayaForCausalLM) step by step over the paged `cache`.

    The q/k/v projection weights of each layer are concatenated once here; call `refresh_weights()` after
    changing the model's parameters.
    """

    def __init__(self, model, cache: PagedKVCache) -> None:
        self.model, self.cache, self.config = model, cache, model.config
        self.refresh_weights()

    @torch.no_grad()
    def refresh_weights(self) -> None:
        cfg = self.config
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
        for i, layer in enumerate(model.layers):
            w = self.layers[i]
            qkv = F.linear(x, w.qkv_w, w.qkv_b)
            qp, kp, v_cur, v_del = torch.split(qkv, w.splits, dim=-1)
            q, k, v, conv_state, v_state = cca.cca_prep(
                qp, kp, v_cur, v_del, w.conv0_w, w.conv0_b, w.conv1_w, w.conv1_b, w.temp, batch.positions,
                batch.cu_seqlens, conv_all[i], v_all[i], num_q_heads=self.config.num_attention_heads,
                num_kv_heads=self.config.num_key_value_heads, rope_dims=w.rope_dims, rope_theta=w.rope_theta,
            )
            conv_out[i], v_out[i] = conv_state, v_state
            if batch.snapshots:
                seqs = [s for s, _ in batch.snapshots]
                sc, sv = cca.boundary_states(qp, kp, v_del, conv_all[i], [batch.starts[s] for s in seqs], seqs,
                                             [e for _, e in batch.snapshots])
                snaps_conv.append(sc)
                snaps_v.append(sv)
            ops.kv_write(k, v, cache.k_pages[i], cache.v_pages[i], batch.slot_mapping)
            attn = self._attention(i, q, k, v, batch, groups)
            attn = layer.self_attn.o_proj(attn.reshape(attn.shape[0], -1))
            r, x2 = layer.post_attention_residual_scale.fused_with_norm(attn, h, layer.post_attention_layernorm)
            y, z = layer.mlp(x2[None], None if z is None else z[None])
            y, z = y[0], z[0]
            next_norm = model.layers[i + 1].input_layernorm if i + 1 < len(model.layers) else model.norm
            h, x = layer.post_mlp_residual_scale.fused_with_norm(y, r, next_norm)
        cache.conv_state.index_copy_(1, batch.state_slots, conv_out.float())
        cache.v_state.index_copy_(1, batch.state_slots, v_out.float())
        logits = self.model.lm_head(x.index_select(0, batch.sample_rows))
        snapshots = []
        if batch.snapshots:
            conv_s, v_s = torch.stack(snaps_conv, 1).float(), torch.stack(snaps_v, 1).float()  # [R, L, ...]
            snapshots = [(conv_s[r], v_s[r]) for r in range(len(batch.snapshots))]
        return logits, snapshots

    def _attention(self, i: int, q, k, v, batch: StepBatch, groups) -> torch.Tensor:
        w, cache = self.layers[i], self.cache
        out = q.new_empty(q.shape)
        decode_seqs, decode_rows, fresh_seqs, chunk_seqs = groups
        if decode_seqs is not None and decode_rows.shape[0] == q.shape[0]:  # a pure decode step
            return attention.attention_decode(
                q[:, None], cache.k_pages[i], cache.v_pages[i], batch.block_table, batch.seq_lens, window=w.window,
            )[:, 0]
        if decode_seqs is not None:
            out[decode_rows] = attention.attention_decode(
                q.index_select(0, decode_rows)[:, None], cache.k_pages[i], cache.v_pages[i],
                batch.block_table.index_select(0, decode_seqs), batch.seq_lens.index_select(0, decode_seqs),
                window=w.window,
            )[:, 0]
        if fresh_seqs:
            rows = torch.cat([torch.arange(batch.starts[s], batch.starts[s] + batch.lens[s]) for s in fresh_seqs])
            rows = rows.to(q.device)
            cu = torch.tensor([0, *_cumsum([batch.lens[s] for s in fresh_seqs])], dtype=torch.int32, device=q.device)
            qs, ks, vs = q.index_select(0, rows), k.index_select(0, rows), v.index_select(0, rows)
            out[rows] = attention.attention_varlen(qs, ks, vs, cu, cu, causal=True, window=w.window)
        for s in chunk_seqs:
            a, n = batch.starts[s], batch.lens[s]
            out[a : a + n] = attention.attention_decode(
                q[None, a : a + n], cache.k_pages[i], cache.v_pages[i], batch.block_table[s : s + 1],
                batch.seq_lens[s : s + 1], window=w.window,
            )[0]
        return out


def _cumsum(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def _attention_groups(batch: StepBatch):
    """(decode sequence ids [n] tensor or None, their packed rows, fresh prompt sequences, continued chunks)."""
    decode = [s for s, n in enumerate(batch.lens) if n == 1 and not batch.fresh[s]]
    fresh = [s for s, n in enumerate(batch.lens) if n > 0 and batch.fresh[s]]
    chunks = [s for s, n in enumerate(batch.lens) if n > 1 and not batch.fresh[s]]
    device = batch.input_ids.device
    if not decode:
        return None, None, fresh, chunks
    seqs = torch.tensor(decode, dtype=torch.long, device=device)
    rows = torch.tensor([batch.starts[s] for s in decode], dtype=torch.long, device=device)
    return seqs, rows, fresh, chunks

"""Runs ZayaForCausalLM's layer math (`zaya_rt.model.modeling`) over a packed batch against the paged cache.

A step's batch concatenates the new tokens of every scheduled sequence (T rows in total). The runner builds a
`ForwardContext` for the step, with its kernel set (`runtime.kernels`: direct `_C` calls on the CPU) and the
`PagedState` adapter, and calls the model's layer stack. The adapter continues each sequence's CCA state from
its slot, writes K/V to the pages and attends: sequences decoding one token through one `attention_decode`
call, fresh prompts (nothing cached yet) through one `attention_varlen` call, and prompt chunks that continue
cached pages through `attention_decode` with their chunk as the query block.
Legend: T packed tokens, B sequences, L layers, D hidden, C conv channels, K conv state columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zaya_rt import ops, ref
from zaya_rt.model.context import ForwardContext
from zaya_rt.runtime import direct
from zaya_rt.runtime.cca_snapshots import boundary_states
from zaya_rt.runtime.kernels import DirectKernels, FusedOpsKernels
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


DIRECT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the CPU's direct `_C` calls


class ModelRunner:
    """Executes `model` (a zaya_rt ZayaForCausalLM) step by step over the paged `cache`.

    The kernel set prepares the weights once (fused q/k/v projections, fp32 CCA conv weights, the addresses of
    the rest): call `refresh_weights()` after changing the model's parameters (it bumps `weight_version`, which
    drops captured CUDA graphs of decode steps). On the CPU the layers call `_C` directly (`runtime.direct`);
    `direct_calls=False` takes the checked `zaya_rt.ops` path everywhere.
    """

    def __init__(self, model, cache: PagedKVCache, *, direct_calls: bool | None = None) -> None:
        self.model, self.cache, self.config = model, cache, model.config
        self._ws = direct.Workspace()
        self._direct_calls = direct_calls
        self.weight_version = 0
        self.last_routes = None
        self.refresh_weights()

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Re-reads the model's weights (concatenations, casts, kernel addresses); captured graphs go stale."""
        self.weight_version += 1
        dtype = self.model.lm_head.weight.dtype
        self.direct = self.model.lm_head.weight.device.type == "cpu" and dtype in DIRECT_DTYPES
        if self._direct_calls is not None:
            self.direct = self.direct and self._direct_calls
        if self.direct:
            self.kernels = DirectKernels(self.model, self._ws)
            self._kv_write, self._decode = direct.kv_write, self._direct_decode
        else:
            self.kernels = FusedOpsKernels(self.model)
            self._kv_write, self._decode = ops.kv_write, None

    def _direct_decode(self, attn, q, k_pages, v_pages, block_table, seq_lens):
        return direct.attention_decode(q, k_pages, v_pages, block_table, seq_lens, attn.head_dim**-0.5, attn.window,
                                       self._ws)

    @torch.no_grad()
    def initial_v_state(self) -> torch.Tensor:
        """[L, Hk*d/2]: the delayed value before a sequence's first token (v_del of a zero input = its bias)."""
        rows = []
        for layer in self.model.model.layers:
            lin = layer.self_attn.qkv_proj.v_proj_delayed
            rows.append(lin.bias.float() if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0]).float())
        return torch.stack(rows)

    @torch.no_grad()
    def forward(self, batch: StepBatch, *, record_routes: bool = False):
        """Logits [R, vocab] of batch.sample_rows, and the CCA snapshots [(conv [L, C, K], v [L, Hk*d/2])]
        requested in batch.snapshots. Writes K/V to the pages and the CCA states to the slots. record_routes:
        `last_routes` becomes the router's choice of every packed row in every layer, int64 [T, L] (E = skip)."""
        state = PagedState(self, batch)
        kernels = _RouteRecorder(self.kernels) if record_routes else self.kernels
        ctx = ForwardContext(positions=batch.positions, cu_seqlens=batch.cu_seqlens, conv_mask=None,
                             kernels=kernels, state=state)
        x = self.model.model.run(batch.input_ids, ctx)
        self.last_routes = torch.stack(kernels.choices, 1) if record_routes else None
        snapshots = state.finish()
        logits = self.kernels.linear(self.model.lm_head, x.index_select(0, batch.sample_rows))
        return logits, snapshots


class _RouteRecorder:
    """A kernel set that delegates to `kernels` and keeps each router call's choice [T], in layer order."""

    def __init__(self, kernels) -> None:
        self._kernels, self.choices = kernels, []

    def __getattr__(self, name):
        return getattr(self._kernels, name)

    def router(self, gate, x_TD, z_prev):
        out = self._kernels.router(gate, x_TD, z_prev)
        self.choices.append(out[2])
        return out


class PagedState:
    """The state adapter of one step (see `zaya_rt.model.context.RowsState` for the contract): CCA states from
    and to the cache's slots, K/V to the pages, attention over the pages."""

    def __init__(self, runner: ModelRunner, batch: StepBatch) -> None:
        cache = runner.cache
        self.runner, self.batch, self.cache = runner, batch, cache
        self.conv_in = cache.conv_state.index_select(1, batch.state_slots).unbind(0)  # L x [B, C, K]
        self.v_in = cache.v_state.index_select(1, batch.state_slots).unbind(0)
        self.k_pages, self.v_pages = cache.k_pages.unbind(0), cache.v_pages.unbind(0)
        L = len(self.conv_in)
        self.conv_out, self.v_out = [None] * L, [None] * L
        self.snaps_conv, self.snaps_v = [], []
        self.groups = _attention_groups(batch)

    def cca_state(self, attn):
        return self.conv_in[attn.layer_idx], self.v_in[attn.layer_idx]

    def store(self, attn, k, v, conv_state, v_state, pre) -> None:
        i, batch = attn.layer_idx, self.batch
        self.conv_out[i], self.v_out[i] = conv_state, v_state
        self.runner._kv_write(k, v, self.k_pages[i], self.v_pages[i], batch.slot_mapping)
        if batch.snapshots:
            qp, kp, v_del, conv_in = pre
            seqs = [s for s, _ in batch.snapshots]
            sc, sv = boundary_states(qp, kp, v_del, conv_in, [batch.starts[s] for s in seqs], seqs,
                                     [e for _, e in batch.snapshots])
            self.snaps_conv.append(sc)
            self.snaps_v.append(sv)

    def finish(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Writes the outgoing CCA states to the slots; returns the requested snapshots [(conv [L, C, K],
        v [L, Hk*d/2])]."""
        slots = self.batch.state_slots
        self.cache.conv_state.index_copy_(1, slots, torch.stack(self.conv_out).float())
        self.cache.v_state.index_copy_(1, slots, torch.stack(self.v_out).float())
        if not self.batch.snapshots:
            return []
        conv_s, v_s = torch.stack(self.snaps_conv, 1).float(), torch.stack(self.snaps_v, 1).float()  # [R, L, ...]
        return [(conv_s[r], v_s[r]) for r in range(len(self.batch.snapshots))]

    def attend(self, attn, q, k, v) -> torch.Tensor:
        """Attention of the step's rows q [T, Hq, d] (k, v [T, Hk, d] already written to the layer's pages)."""
        batch, i = self.batch, attn.layer_idx
        k_pages, v_pages = self.k_pages[i], self.v_pages[i]
        pure_decode, decode_seqs, decode_rows, fresh_seqs, chunk_seqs = self.groups
        if pure_decode:
            if self.runner._decode is not None and attn.kernel_attention:
                return self.runner._decode(attn, q, k_pages, v_pages, batch.block_table, batch.seq_lens)
            return _decode(attn, q[:, None], k_pages, v_pages, batch.block_table, batch.seq_lens)[:, 0]
        out = q.new_empty(q.shape)
        if decode_seqs is not None:
            out[decode_rows] = _decode(
                attn, q.index_select(0, decode_rows)[:, None], k_pages, v_pages,
                batch.block_table.index_select(0, decode_seqs), batch.seq_lens.index_select(0, decode_seqs),
            )[:, 0]
        if fresh_seqs:
            rows = torch.cat([torch.arange(batch.starts[s], batch.starts[s] + batch.lens[s]) for s in fresh_seqs])
            rows = rows.to(q.device)
            cu = torch.tensor([0, *_cumsum([batch.lens[s] for s in fresh_seqs])], dtype=torch.int32, device=q.device)
            qs, ks, vs = q.index_select(0, rows), k.index_select(0, rows), v.index_select(0, rows)
            varlen = ops.attention_varlen if attn.kernel_attention else ref.attention_varlen_ref
            out[rows] = varlen(qs, ks, vs, cu, cu, causal=True, window=attn.window, scale=attn.head_dim**-0.5)
        for s in chunk_seqs:
            a, n = batch.starts[s], batch.lens[s]
            out[a : a + n] = _decode(attn, q[None, a : a + n], k_pages, v_pages, batch.block_table[s : s + 1],
                                     batch.seq_lens[s : s + 1])[0]
        return out


def _decode(attn, q_BnHd, k_pages, v_pages, block_table, seq_lens) -> torch.Tensor:
    """`ops.attention_decode`, or its reference for head dims no kernel takes."""
    decode = ops.attention_decode if attn.kernel_attention else ref.attention_decode_ref
    return decode(q_BnHd, k_pages, v_pages, block_table, seq_lens, scale=attn.head_dim**-0.5, window=attn.window)


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

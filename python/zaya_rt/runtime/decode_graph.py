"""CUDA graphs of pure decode steps (SPEC sections 5 and 8).

A pure decode step gives every scheduled sequence exactly one new token on top of cached pages (no prompt
chunk, no fresh prompt, no CCA snapshot). Its inputs are copied into static buffers sized for the largest
batch bucket, and the step runs on the first `bucket` rows of those buffers, `bucket` the smallest of
`bucket_sizes(max_batch)` that holds the batch. On a CUDA device the step of each bucket is captured once
(lazily, the first time a batch of that size comes: that step runs eagerly as the warm-up, then the capture
records it without running it again) into a `torch.cuda.CUDAGraph`; later steps copy their inputs into the
buffers and replay it. All buckets share one private memory pool; the logits a replay returns are valid
until the next step. A capture that fails warns and leaves the padded step running eagerly (`capture_error`).
`capture=False` runs the very same padded static-buffer step eagerly. On the CPU's direct path the step of each
bucket is recorded instead as a step tape (runtime/step_tape.py): the warm-up runs it, the CCA states it advanced
are put back, and the recording runs it again; later steps replay the tape.

Padding rows (bucket - batch of them) are harmless: token 0 at position 0, K/V written to the cache's padding
page (never handed out) and read back from it with seq_len 1, CCA state read from and written to the cache's
padding slot; their logits are dropped. Nothing of theirs reaches a real page or slot, and kv_write never sees
slot -1, so the path does not depend on how a device's kv_write treats negative slots.

Buffers (B = largest bucket, M = block table width = pages of the longest possible sequence):
  index64 [3, B] int64: input_ids, positions, state_slots      index32 [2, B] int32: slot_mapping, seq_lens
  block_table [B, M] int32, cu_seqlens [B+1] int32 (0..B), sample_rows [B] int64 (0..B-1)

Capture audit of the GPU decode step (`ModelRunner.forward` on the `zaya_rt.ops` path; nothing in it may read
a device value on the host or copy host data to the device):
  runner: the attention grouping built two index tensors from host lists every step; a pure decode step now
    builds none. index_select / index_copy_ of the state slots take device index tensors.
  embed (nn.Embedding), rms_norm / residual_rms_norm, F.linear (qkv, o_proj, lm_head), softmax / where of
    the skip passthrough: no host reads.
  cca_prep: shape checks only off the CPU; its RoPE table is copied to the device once per (dims, theta,
    device), in the warm-up step. (Its fused forward passed the CPU's device arguments on CUDA; fixed.)
  kv_write: the GPU fallback (index_copy_) has no host read but does not skip slot -1, hence the padding page.
  attention_decode: values are checked only for CPU / float64 inputs; the GPU kernel reads seq_lens and the
    block table on the device, its split count comes from sizes (the table width). Head dims the kernels
    lack take the reference (`ref.attention_decode_ref`, which reads seq_lens on the host): not capturable.
  zaya_router, moe_experts: index range checks only on the CPU; the GPU kernels route on the device.
  cuda/: no cudaMemcpy, cudaMalloc or synchronisation; all launches on the caller's stream.
Outside the graph: sampling (tokens go to the host each step), copy-on-write page copies, state resets of
new sequences. Not on the decode path: `ref.attention_varlen_ref` (`.tolist()`), `ZayaModel.forward`'s
batch form (`bool(mask.all())`), sample_tokens' value checks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import torch

from zaya_rt.runtime.kv_cache import PagedKVCache
from zaya_rt.runtime.runner import DIRECT_DTYPES, ModelRunner, StepBatch
from zaya_rt.runtime.step_tape import record_step

ENV_VAR = "ZAYA_RT_CUDA_GRAPHS"  # "0" / "1": default of Engine(cuda_graphs=None)


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, 16, then multiples of 16, up to and including max_batch (as vLLM and SGLang pad)."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16))
    return sizes + [max_batch]


def graphs_enabled(cuda_graphs: bool | None, device: torch.device, cpu_tapes: bool = False) -> bool:
    """Whether an Engine on `device` takes the static decode path: cuda_graphs if given, else the
    ZAYA_RT_CUDA_GRAPHS environment variable ("0" / "1") if set, else on for CUDA devices and, when its steps can
    be recorded as step tapes (`cpu_tapes`, see `tapes_possible`), for the CPU."""
    if cuda_graphs is not None:
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be a bool or None, got {type(cuda_graphs).__name__}")
        return cuda_graphs
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip() != "":
        if env.strip() not in ("0", "1"):
            raise ValueError(f"{ENV_VAR} must be 0 or 1, got {env!r}")
        return env.strip() == "1"
    return device.type == "cuda" or (device.type == "cpu" and cpu_tapes)


def tapes_possible(model, direct: bool = True) -> bool:
    """Whether an Engine's decode steps over `model` can be recorded as CPU step tapes: the CPU's direct `_C`
    calls (a float32/bfloat16/float16 model on the CPU, `direct` unless turned off) with every layer on the
    attention kernels (the reference attention for other head dims reads sequence lengths back to Python)."""
    weight = model.lm_head.weight
    return (direct and weight.device.type == "cpu" and weight.dtype in DIRECT_DTYPES
            and all(layer.self_attn.kernel_attention for layer in model.model.layers))


class DecodeGraphs:
    """Static-buffer, batch-bucketed decode steps over `runner` (its cache must have `padding=True`).

    capture: record and replay CUDA graphs on CUDA devices, step tapes on the CPU (`tapes_possible`); False runs
    the padded step eagerly.
    buckets: batch sizes to pad to (default `bucket_sizes(max_batch)`); batches above the largest are for the
    caller to run eagerly (`fits`).
    """

    records_cuda_graphs = True  # `_record` makes CUDA graphs (a test double overrides both)

    def __init__(self, runner: ModelRunner, *, max_batch: int, capture: bool,
                 buckets: Sequence[int] | None = None) -> None:
        cache: PagedKVCache = runner.cache
        if cache.padding_page is None or cache.padding_slot is None:
            raise ValueError("DecodeGraphs needs a PagedKVCache built with padding=True")
        device = cache.k_pages.device
        self.tapes = tapes_possible(runner.model, runner.direct) and self.records_cuda_graphs
        if capture and device.type != "cuda" and self.records_cuda_graphs and not self.tapes:
            raise ValueError(f"CUDA graphs need a CUDA device (or the CPU's direct calls, which record step tapes), "
                             f"the cache is on {device}")
        self.runner, self.cache, self.capture, self.device = runner, cache, capture, device
        self.buckets = sorted(set(bucket_sizes(max_batch) if buckets is None else buckets))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {buckets!r}")
        B = self.max_batch = self.buckets[-1]
        S = cache.page_size
        self.width = min(cache.num_pages, -(-runner.config.max_position_embeddings // S))
        self._pad_row = [0, 0, cache.padding_slot]               # input id, position, state slot
        self._pad_row32 = [cache.padding_page * S, 1]            # slot mapping, seq_len
        pinned = device.type == "cuda"
        host = dict(device="cpu", pin_memory=pinned)
        self._host64 = torch.zeros(3, B, dtype=torch.int64, **host)
        self._host32 = torch.zeros(2, B, dtype=torch.int32, **host)
        self._host_table = torch.full((B, self.width), cache.padding_page, dtype=torch.int32, **host)
        self.index64 = torch.tensor([[v] * B for v in self._pad_row], dtype=torch.int64, device=device)
        self.index32 = torch.tensor([[v] * B for v in self._pad_row32], dtype=torch.int32, device=device)
        self.block_table = torch.full((B, self.width), cache.padding_page, dtype=torch.int32, device=device)
        self.cu_seqlens = torch.arange(B + 1, dtype=torch.int32, device=device)
        self.sample_rows = torch.arange(B, dtype=torch.int64, device=device)
        self._rows: list[list[int] | None] = [None] * B  # pages in each host table row; None: a padding row
        self._synced_rows = B                             # leading rows the device table has as on the host
        self._copied = torch.cuda.Event() if pinned else None  # host buffers are reused once this has passed
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self._pool = None
        self._version = runner.weight_version
        self.stats = {"captures": 0, "replays": 0, "eager": 0}
        self.capture_error: str | None = None  # why capture was given up, if it was

    # -- public -----------------------------------------------------------------------------------------
    def fits(self, batch: int) -> bool:
        """True when a pure decode step of `batch` sequences has a bucket (else the caller runs it eagerly)."""
        return 1 <= batch <= self.max_batch

    def bucket(self, batch: int) -> int:
        """The smallest bucket holding `batch` sequences."""
        for b in self.buckets:
            if b >= batch:
                return b
        raise ValueError(f"a decode batch of {batch} exceeds the largest bucket ({self.max_batch})")

    def reset(self) -> None:
        """Drops every captured graph and the memory pool (after a weight refresh)."""
        self._graphs.clear()
        self._outputs.clear()
        self._pool = None
        self._version = self.runner.weight_version

    @property
    def captured(self) -> list[int]:
        """Buckets with a captured graph."""
        return sorted(self._graphs)

    def run(self, input_ids: Sequence[int], positions: Sequence[int], slot_mapping: Sequence[int],
            pages: Sequence[Sequence[int]], state_slots: Sequence[int]) -> torch.Tensor:
        """Logits [n, vocab] of one pure decode step of n sequences: sequence i adds token input_ids[i] at
        position positions[i] (its K/V go to slot_mapping[i] = page * S + offset), pages[i] lists its pages,
        state_slots[i] is its CCA state row. Writes K/V and the CCA states like `ModelRunner.forward`.
        The logits are a view of a static buffer, valid until the next call."""
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):  # events, streams and capture on the cache's GPU
                return self._run(input_ids, positions, slot_mapping, pages, state_slots)
        return self._run(input_ids, positions, slot_mapping, pages, state_slots)

    def _run(self, input_ids, positions, slot_mapping, pages, state_slots) -> torch.Tensor:
        n = len(input_ids)
        bucket = self.bucket(n)
        if self._version != self.runner.weight_version:
            self.reset()
        self._fill(bucket, input_ids, positions, slot_mapping, pages, state_slots)
        if not self.capture:
            self.stats["eager"] += 1
            return self._step(bucket)[:n]
        graph = self._graphs.get(bucket)
        if graph is None:
            return self._capture(bucket)[:n]
        graph.replay()
        self.stats["replays"] += 1
        return self._outputs[bucket][:n]

    # -- internals ----------------------------------------------------------------------------------------
    def _fill(self, bucket: int, input_ids, positions, slot_mapping, pages, state_slots) -> None:
        n = len(input_ids)
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copies out of the host buffers are done
        pad = bucket - n
        p64, p32 = self._pad_row, self._pad_row32
        self._host64[:, :bucket] = torch.tensor(
            [[*input_ids, *[p64[0]] * pad], [*positions, *[p64[1]] * pad], [*state_slots, *[p64[2]] * pad]],
            dtype=torch.int64)
        seq_lens = [p + 1 for p in positions]
        self._host32[:, :bucket] = torch.tensor(
            [[*slot_mapping, *[p32[0]] * pad], [*seq_lens, *[p32[1]] * pad]], dtype=torch.int32)
        self._fill_table(bucket, pages)
        # whole index buffers (a few hundred bytes), and the table rows that changed: contiguous pinned copies
        pinned = self._copied is not None
        self.index64.copy_(self._host64, non_blocking=pinned)
        self.index32.copy_(self._host32, non_blocking=pinned)
        if self._synced_rows < bucket:
            rows = slice(self._synced_rows, bucket)
            self.block_table[rows].copy_(self._host_table[rows], non_blocking=pinned)
            self._synced_rows = bucket
        if self._copied is not None:
            self._copied.record()

    def _fill_table(self, bucket: int, pages) -> None:
        """Host block table rows: only what changed since the last step is written (a sequence gains a page
        every page_size tokens). Columns past a sequence's pages keep stale ids: attention never reads past
        seq_len. Padding rows hold the padding page in column 0."""
        table, rows = self._host_table, self._rows
        for i, row in enumerate(pages):
            old = rows[i]
            if old == row:
                continue
            start = len(old) if old is not None and len(old) < len(row) and row[: len(old)] == old else 0
            table[i, start : len(row)] = torch.tensor(row[start:], dtype=torch.int32)
            rows[i] = list(row)
            self._synced_rows = min(self._synced_rows, i)
        for i in range(len(pages), bucket):
            if rows[i] is not None:
                table[i, 0] = self.cache.padding_page
                rows[i] = None
                self._synced_rows = min(self._synced_rows, i)

    def _batch(self, bucket: int) -> StepBatch:
        return StepBatch(
            input_ids=self.index64[0, :bucket], positions=self.index64[1, :bucket],
            cu_seqlens=self.cu_seqlens[: bucket + 1], slot_mapping=self.index32[0, :bucket],
            block_table=self.block_table[:bucket], seq_lens=self.index32[1, :bucket],
            state_slots=self.index64[2, :bucket], sample_rows=self.sample_rows[:bucket],
            lens=[1] * bucket, starts=list(range(bucket)), fresh=[False] * bucket,
        )

    def _step(self, bucket: int) -> torch.Tensor:
        logits, _ = self.runner.forward(self._batch(bucket))
        return logits

    def _capture(self, bucket: int) -> torch.Tensor:
        """Runs this step eagerly (the warm-up: lazy initialisation happens outside the capture, and its
        logits are this step's), then records the bucket's graph without running it."""
        if self.tapes:
            return self._capture_tape(bucket)
        logits = self._step(bucket)
        try:
            self._graphs[bucket], self._outputs[bucket] = self._record(lambda: self._step(bucket))
        except RuntimeError as exc:  # an op that cannot be captured: keep the padded path, eagerly
            self.capture, self.capture_error = False, f"{type(exc).__name__}: {exc}"
            warnings.warn(f"zaya_rt: CUDA-graph capture of a decode step failed, decode runs eagerly "
                          f"({self.capture_error})", RuntimeWarning, stacklevel=3)
            self.reset()
            return logits
        self.stats["captures"] += 1
        return logits

    def _capture_tape(self, bucket: int) -> torch.Tensor:
        """The CPU's capture: runs the step eagerly (the warm-up: lazy initialisation, workspace growth), puts
        back the CCA states it advanced, then runs it again while recording its tape (K/V are written again with
        the same values). Both runs compute the same logits; the recorded run's are returned."""
        slots = self.index64[2, :bucket]
        conv, v = self.cache.conv_state.index_select(1, slots), self.cache.v_state.index_select(1, slots)
        logits = self._step(bucket)
        self.cache.conv_state.index_copy_(1, slots, conv)
        self.cache.v_state.index_copy_(1, slots, v)
        try:
            tape, out = record_step(lambda: self._step(bucket), self.runner._ws)
        except RuntimeError as exc:  # not replayable: the recorded run has still run this step to its end
            self.capture, self.capture_error = False, f"{type(exc).__name__}: {exc}"
            warnings.warn(f"zaya_rt: recording a decode step failed, decode runs eagerly ({self.capture_error})",
                          RuntimeWarning, stacklevel=3)
            self.reset()
            return logits
        self._graphs[bucket], self._outputs[bucket] = tape, out
        self.stats["captures"] += 1
        return out

    def _record(self, step: Callable[[], torch.Tensor]):
        """(graph, its static output): `step` captured into a CUDA graph in the shared memory pool."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = step()
        return graph, out

"""The generation engine: continuous batching over the paged cache (SPEC section 5).

Each `step()` schedules, oldest first, one token for every decoding sequence, then prompt chunks of sequences
still prefilling, then new requests, within a token budget (`max_tokens_per_step`), so long prompts are
prefilled in chunks between decode steps. Full prompt pages are shared through the cache's prefix table.
When pages run out the newest running sequence is preempted: its pages are released and it is recomputed
later from its prompt and the tokens it already produced (with the same sampling uniforms, so the output
is as if nothing happened).

Pure decode steps (every scheduled sequence adds one token to cached pages, no prompt chunk, no prefix
snapshot, at most max_batch sequences) run on CUDA devices as CUDA graphs, one per batch bucket
(runtime/decode_graph.py): the batch is padded to the bucket with rows that touch only the cache's padding
page and slot. Every other step (prefill, chunked prompts, mixed batches) runs eagerly. `cuda_graphs=True` on
the CPU runs the same padded static-buffer path without capture (used by the tests).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence as SequenceABC
from dataclasses import dataclass, field

import torch

from zaya_rt import ops
from zaya_rt.runtime import direct
from zaya_rt.runtime.decode_graph import DecodeGraphs, graphs_enabled
from zaya_rt.runtime.kv_cache import PagedKVCache, PrefixEntry
from zaya_rt.runtime.params import SamplingParams
from zaya_rt.runtime.runner import ModelRunner, StepBatch

_ROOT = 0  # parent serial of a sequence's first page


@dataclass(eq=False)  # identity: `seq in running` must not compare every field
class _Sequence:
    request_id: int
    prompt: list[int]
    params: SamplingParams
    seed: int
    arrival: int
    max_len: int                                   # context length at which the sequence must stop
    callback: Callable[[int, int], None] | None = None
    generated: list[int] = field(default_factory=list)
    num_computed: int = 0                          # tokens whose K/V are in the pages
    pages: list[int] = field(default_factory=list)
    entries: list[PrefixEntry | None] = field(default_factory=list)  # prefix entry of each page, if any
    pending: list[PrefixEntry] = field(default_factory=list)         # entries this sequence computes
    slot: int | None = None
    finished: bool = False
    finish_reason: str | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.generated


class Engine:
    """Continuous-batching generation with a paged KV + CCA state cache.

    model: a zaya_rt ZayaForCausalLM (its dtype and device are used). num_pages: page budget (default: room for
    max_batch sequences of 2048 tokens, or what cache_bytes allows); page_size: tokens per page; max_batch:
    sequences running at once; max_tokens_per_step: packed tokens per step (prefill chunking budget).
    cuda_graphs: run pure decode steps through the static-buffer bucketed path (`DecodeGraphs`), captured as
    CUDA graphs on CUDA devices and run eagerly elsewhere; None: the ZAYA_RT_CUDA_GRAPHS environment variable
    (0/1) if set, else on exactly for CUDA devices. That path adds one padding page and one padding state slot
    to the cache, beyond num_pages (or cache_bytes) and max_batch.
    """

    def __init__(self, model, *, num_pages: int | None = None, page_size: int = 16, max_batch: int = 64,
                 max_tokens_per_step: int = 512, cache_bytes: int | None = None, seed: int = 0,
                 cuda_graphs: bool | None = None) -> None:
        if not hasattr(model, "config") or not hasattr(model, "model"):
            raise TypeError("Engine needs a zaya_rt ZayaForCausalLM")
        for name, value in (("page_size", page_size), ("max_batch", max_batch),
                            ("max_tokens_per_step", max_tokens_per_step)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Engine: {name} must be a positive int, got {value!r}")
        weight = model.model.norm.weight
        self.model, self.config = model, model.config
        self.device, self.dtype = weight.device, weight.dtype
        per_page = PagedKVCache.bytes_per_page(self.config, page_size, self.dtype)
        if num_pages is None:
            num_pages = max_batch * -(-2048 // page_size)
            if cache_bytes is not None:
                if not isinstance(cache_bytes, int) or cache_bytes < per_page:
                    raise ValueError(f"Engine: cache_bytes must be at least one page ({per_page} bytes)")
                num_pages = cache_bytes // per_page
        elif cache_bytes is not None:
            raise ValueError("Engine: give num_pages or cache_bytes, not both")
        static_decode = graphs_enabled(cuda_graphs, self.device)
        self.cache = PagedKVCache(self.config, num_pages, page_size, max_batch, dtype=self.dtype, device=self.device,
                                  padding=static_decode)
        self.runner = ModelRunner(model, self.cache)
        self.decode_graphs = DecodeGraphs(self.runner, max_batch=max_batch,
                                          capture=self.device.type == "cuda") if static_decode else None
        self._greedy = direct.Greedy() if self.runner.direct else None
        self._v_state0 = self.runner.initial_v_state().to(self.device)
        self.page_size, self.max_batch, self.max_tokens_per_step = page_size, max_batch, max_tokens_per_step
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._results: dict[int, _Sequence] = {}
        self._ids = itertools.count()
        self._arrivals = itertools.count()
        self._seed_gen = torch.Generator().manual_seed(seed)
        self.stats = {"steps": 0, "prefill_tokens": 0, "decode_tokens": 0, "prefix_hit_tokens": 0, "preemptions": 0}

    # -- public API -----------------------------------------------------------------------------------------
    @property
    def num_pages(self) -> int:
        return self.cache.num_pages

    @property
    def num_free_pages(self) -> int:
        return self.cache.num_free_pages

    def add_request(self, prompt: SequenceABC[int], params: SamplingParams | None = None,
                    callback: Callable[[int, int], None] | None = None) -> int:
        """Queues a request; returns its id. callback(request_id, token) is called for each new token."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        params.validate()
        prompt = self._check_prompt(prompt)
        max_len = min(len(prompt) + params.max_new_tokens, self.config.max_position_embeddings)
        need = -(-max_len // self.page_size)
        if need > self.cache.num_pages:
            raise ValueError(
                f"a request of {len(prompt)} prompt + {params.max_new_tokens} new tokens needs {need} pages of "
                f"{self.page_size}; the cache has {self.cache.num_pages}")
        seed = params.seed if params.seed is not None else int(
            torch.randint(0, 2**62, (1,), generator=self._seed_gen))
        seq = _Sequence(next(self._ids), prompt, params, seed, next(self._arrivals), max_len, callback)
        self._results[seq.request_id] = seq
        self._waiting.append(seq)
        return seq.request_id

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> list[tuple[int, int]]:
        """Runs one batch; returns the (request_id, token) pairs it produced."""
        scheduled = self._schedule()
        if not scheduled:
            if self.has_unfinished():
                raise RuntimeError("engine made no progress (a request cannot fit the cache)")
            return []
        if self._is_pure_decode(scheduled):
            logits, samplers = self._decode_step(scheduled)
        else:
            batch, samplers = self._build_batch(scheduled)
            logits, snapshots = self.runner.forward(batch)
            self._take_snapshots(scheduled, batch, snapshots)
        for seq, n in scheduled:
            seq.num_computed += n
        tokens = self._sample(logits, samplers) if samplers else []
        out = []
        for seq, token in zip(samplers, tokens):
            seq.generated.append(token)
            out.append((seq.request_id, token))
            if seq.callback is not None:
                seq.callback(seq.request_id, token)
            self._maybe_finish(seq, token)
        self.stats["steps"] += 1
        return out

    def generate(self, prompts: SequenceABC[SequenceABC[int]],
                 params: SamplingParams | SequenceABC[SamplingParams] | None = None) -> list[list[int]]:
        """Generated ids (no prompt) per prompt, in request order."""
        outputs: list[list[int]] = [[] for _ in prompts]
        for index, token in self.stream(prompts, params):
            outputs[index].append(token)
        return outputs

    def stream(self, prompts: SequenceABC[SequenceABC[int]],
               params: SamplingParams | SequenceABC[SamplingParams] | None = None) -> Iterator[tuple[int, int]]:
        """Yields (index into prompts, token) as tokens are produced; other queued requests also advance."""
        if isinstance(prompts, torch.Tensor):
            prompts = prompts.tolist()
        if not isinstance(prompts, SequenceABC) or isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of token-id lists")
        if isinstance(params, SequenceABC):
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
            per_request = list(params)
        else:
            per_request = [params] * len(prompts)
        checked = [self._check_prompt(p) for p in prompts]  # all requests valid before any is queued
        ids = [self.add_request(p, sp) for p, sp in zip(checked, per_request)]
        index_of = {rid: i for i, rid in enumerate(ids)}
        self.last_request_ids = ids
        remaining = set(ids)
        while remaining:
            for rid, token in self.step():
                if rid in index_of:
                    yield index_of[rid], token
            remaining = {rid for rid in remaining if not self._results[rid].finished}

    def result(self, request_id: int) -> list[int]:
        """Tokens generated so far for a request."""
        return list(self._request(request_id).generated)

    def tail(self, request_id: int, tau: int) -> list[int]:
        """The last tau generated tokens of a request (all of them if it has fewer)."""
        if not isinstance(tau, int) or isinstance(tau, bool) or tau < 0:
            raise ValueError(f"tau must be a non-negative int, got {tau!r}")
        generated = self._request(request_id).generated
        return list(generated[len(generated) - tau :]) if tau else []

    def finish_reason(self, request_id: int) -> str | None:
        """'length', 'stop', 'context' or 'aborted' once finished, else None."""
        return self._request(request_id).finish_reason

    def abort(self, request_id: int) -> None:
        """Stops a request and releases its pages."""
        seq = self._request(request_id)
        if seq.finished:
            return
        if seq in self._waiting:
            self._waiting.remove(seq)
        self._finish(seq, "aborted")

    def forget(self, request_id: int) -> None:
        """Drops a finished request's record (its tokens)."""
        seq = self._request(request_id)
        if not seq.finished:
            raise ValueError(f"request {request_id} is still running")
        del self._results[request_id]

    # -- checks -------------------------------------------------------------------------------------------
    def _check_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1:
                raise ValueError(f"a prompt tensor must be 1-D, got shape {tuple(prompt.shape)}")
            prompt = prompt.tolist()
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, SequenceABC):
            raise TypeError(f"a prompt must be a list of token ids, got {type(prompt).__name__}")
        prompt = list(prompt)
        if not prompt:
            raise ValueError("a prompt must hold at least one token")
        vocab = self.config.vocab_size
        for t in prompt:
            if not isinstance(t, int) or isinstance(t, bool):
                raise ValueError(f"prompt token ids must be ints, got {t!r}")
            if not 0 <= t < vocab:
                raise ValueError(f"prompt token id {t} lies outside the vocabulary [0, {vocab})")
        if len(prompt) >= self.config.max_position_embeddings:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the model's context of "
                             f"{self.config.max_position_embeddings}")
        return prompt

    def _request(self, request_id: int) -> _Sequence:
        if request_id not in self._results:
            raise ValueError(f"unknown request id {request_id!r}")
        return self._results[request_id]

    # -- scheduling -----------------------------------------------------------------------------------------
    def _schedule(self) -> list[tuple[_Sequence, int]]:
        budget = self.max_tokens_per_step
        scheduled: list[tuple[_Sequence, int]] = []
        order = sorted(self._running, key=lambda s: (len(s.tokens) - s.num_computed > 1, s.arrival))
        for seq in order:
            if seq not in self._running or budget == 0:
                continue
            n = min(len(seq.tokens) - seq.num_computed, budget)
            while not self._reserve(seq, n):
                victim = max(self._running, key=lambda s: s.arrival)
                self._preempt(victim)
                scheduled = [(s, k) for s, k in scheduled if s is not victim]
                if victim is seq:
                    break
            else:
                scheduled.append((seq, n))
        budget = self.max_tokens_per_step - sum(n for _, n in scheduled)
        skipped = []
        while self._waiting and budget > 0 and self.cache.num_free_slots > 0:
            seq = self._waiting.popleft()
            if not self._admit(seq):
                skipped.append(seq)
                if self._pages_short:
                    break
                continue
            n = min(len(seq.tokens) - seq.num_computed, budget)
            if not self._reserve(seq, n):
                self._release(seq)
                seq.num_computed = 0
                skipped.append(seq)
                break
            self._running.append(seq)
            scheduled.append((seq, n))
            budget -= n
        self._waiting.extendleft(reversed(skipped))
        return scheduled

    def _admit(self, seq: _Sequence) -> bool:
        """Matches the sequence's cached prefix and gives it a state slot; False (nothing held) when it must
        wait: a page it could share is still being computed, or the cache is short of pages."""
        self._pages_short = False
        tokens, S = seq.tokens, self.page_size
        matched: list[PrefixEntry] = []
        parent = _ROOT
        while (len(matched) + 1) * S <= len(tokens) - 1:
            i = len(matched)
            entry = self.cache.lookup(parent, tuple(tokens[i * S : (i + 1) * S]))
            if entry is None:
                break
            if not entry.ready:
                return False  # another sequence is computing this page: share it once it is ready
            matched.append(entry)
            parent = entry.serial
        fresh_pages = -(-min(len(tokens), len(matched) * S + self.max_tokens_per_step) // S) - len(matched)
        if self.cache.num_free_pages < fresh_pages + sum(self.cache.refcount[e.page] == 0 for e in matched):
            self._pages_short = True
            return False
        slot = self.cache.allocate_slot()
        seq.slot = slot
        for entry in matched:
            self.cache.share(entry.page)
            seq.pages.append(entry.page)
            seq.entries.append(entry)
        seq.num_computed = len(matched) * S
        self.stats["prefix_hit_tokens"] += seq.num_computed
        if matched:
            self.cache.conv_state[:, slot] = matched[-1].conv_state
            self.cache.v_state[:, slot] = matched[-1].v_state
        else:
            self.cache.conv_state[:, slot] = 0
            self.cache.v_state[:, slot] = self._v_state0
        return True

    def _reserve(self, seq: _Sequence, n: int) -> bool:
        """Pages (private ones where written) for positions num_computed .. num_computed + n - 1."""
        S = self.page_size
        first, last = seq.num_computed // S, (seq.num_computed + n - 1) // S
        for i in range(first, last + 1):
            if i < len(seq.pages):
                shared = self.cache.refcount[seq.pages[i]] > 1
                if shared or (seq.entries[i] is not None and seq.entries[i].ready):
                    if shared and self.cache.num_free_pages == 0:
                        return False
                    seq.pages[i] = self.cache.writable(seq.pages[i])  # copy-on-write
                    seq.entries[i] = None
                continue
            page = self.cache.allocate()
            if page is None:
                return False
            seq.pages.append(page)
            entry = None
            if (i + 1) * S <= len(seq.prompt):
                parent = seq.entries[i - 1].serial if i > 0 and seq.entries[i - 1] is not None else (
                    _ROOT if i == 0 else None)
                if parent is not None:
                    entry = self.cache.register(parent, tuple(seq.prompt[i * S : (i + 1) * S]), page)
            seq.entries.append(entry)
            if entry is not None:
                seq.pending.append(entry)
        return True

    def _preempt(self, seq: _Sequence) -> None:
        self._release(seq)
        seq.num_computed = 0
        if seq in self._running:
            self._running.remove(seq)
        self._waiting.appendleft(seq)
        self.stats["preemptions"] += 1

    def _release(self, seq: _Sequence) -> None:
        for entry in seq.pending:  # pages this sequence never finished: their keys would lie
            if not entry.ready:
                self.cache._unregister(entry.page)
        seq.pending = []
        for page in seq.pages:
            self.cache.release(page)
        seq.pages, seq.entries = [], []
        if seq.slot is not None:
            self.cache.release_slot(seq.slot)
            seq.slot = None

    def _maybe_finish(self, seq: _Sequence, token: int) -> None:
        if token in seq.params.stop_token_ids:
            self._finish(seq, "stop")
        elif len(seq.generated) >= seq.params.max_new_tokens:
            self._finish(seq, "length")
        elif len(seq.tokens) >= seq.max_len:
            self._finish(seq, "context")

    def _finish(self, seq: _Sequence, reason: str) -> None:
        self._release(seq)
        if seq in self._running:
            self._running.remove(seq)
        seq.finished, seq.finish_reason = True, reason

    # -- batch assembly ---------------------------------------------------------------------------------
    def _is_pure_decode(self, scheduled) -> bool:
        """True when the static decode path takes this step: each sequence adds its last token to cached
        pages and completes no prompt page that needs a prefix snapshot."""
        graphs = self.decode_graphs
        if graphs is None or not graphs.fits(len(scheduled)):
            return False
        S = self.page_size
        for seq, n in scheduled:
            start = seq.num_computed
            if n != 1 or start == 0 or start + 1 != len(seq.prompt) + len(seq.generated):
                return False
            if any((seq.entries.index(entry) + 1) * S == start + 1 for entry in seq.pending):
                return False
        return True

    def _decode_step(self, scheduled):
        """Logits [B, vocab] of a pure decode step through the static buffers, and the sampled sequences."""
        S = self.page_size
        seqs = [seq for seq, _ in scheduled]
        positions = [seq.num_computed for seq in seqs]
        logits = self.decode_graphs.run(
            [(seq.generated or seq.prompt)[-1] for seq in seqs], positions,
            [seq.pages[p // S] * S + p % S for seq, p in zip(seqs, positions)],
            [seq.pages for seq in seqs], [seq.slot for seq in seqs])
        self.stats["decode_tokens"] += len(seqs)
        return logits, seqs

    def _build_batch(self, scheduled):
        S = self.page_size
        ids, positions, slots, starts, lens, fresh, samplers, sample_rows, snapshots = [], [], [], [], [], [], [], [], []
        width = max(len(seq.pages) for seq, _ in scheduled)
        table = torch.zeros(len(scheduled), width, dtype=torch.int32)
        seq_lens = []
        row = 0
        for b, (seq, n) in enumerate(scheduled):
            tokens = seq.tokens
            start = seq.num_computed
            ids.extend(tokens[start : start + n])
            positions.extend(range(start, start + n))
            slots.extend(seq.pages[p // S] * S + p % S for p in range(start, start + n))
            table[b, : len(seq.pages)] = torch.tensor(seq.pages, dtype=torch.int32)
            seq_lens.append(start + n)
            starts.append(row)
            lens.append(n)
            fresh.append(start == 0)
            for entry in seq.pending:
                end = (seq.entries.index(entry) + 1) * S
                if start < end <= start + n:
                    snapshots.append((b, end - start))
            if start + n == len(tokens):
                samplers.append(seq)
                sample_rows.append(row + n - 1)
            row += n
        dev = self.device
        cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
        batch = StepBatch(
            input_ids=torch.tensor(ids, dtype=torch.long).to(dev),
            positions=torch.tensor(positions, dtype=torch.long).to(dev),
            cu_seqlens=cu.to(dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int32).to(dev),
            block_table=table.to(dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(dev),
            state_slots=torch.tensor([seq.slot for seq, _ in scheduled], dtype=torch.long).to(dev),
            sample_rows=torch.tensor(sample_rows, dtype=torch.long).to(dev),
            lens=lens, starts=starts, fresh=fresh, snapshots=snapshots,
        )
        self.stats["prefill_tokens"] += sum(n for n in lens if n > 1)
        self.stats["decode_tokens"] += sum(1 for n in lens if n == 1)
        return batch, samplers

    def _take_snapshots(self, scheduled, batch: StepBatch, snapshots) -> None:
        S = self.page_size
        for (b, end), (conv, v) in zip(batch.snapshots, snapshots):
            seq, _ = scheduled[b]
            page_index = (seq.num_computed + end) // S - 1
            entry = seq.entries[page_index]
            self.cache.mark_ready(entry, conv.clone(), v.clone())
            seq.pending.remove(entry)

    def _sample(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        params = [s.params for s in seqs]
        dev = logits.device
        if all(p.temperature == 0 for p in params):
            if self._greedy is not None and logits.stride(-1) == 1:
                return self._greedy(logits).tolist()
            return logits.argmax(-1).tolist()
        tokens = ops.sample_tokens(
            logits,
            torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev),
            torch.tensor([p.top_k for p in params], dtype=torch.int32, device=dev),
            torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev),
            torch.tensor([p.min_p for p in params], dtype=torch.float32, device=dev),
            torch.tensor([s.seed for s in seqs], dtype=torch.int64, device=dev),
            torch.tensor([len(s.generated) for s in seqs], dtype=torch.int64, device=dev),
        )
        out = tokens.tolist()
        if out and min(out) < 0:  # the GPU sampler's mark for a row without finite logits (the CPU one raises)
            raise RuntimeError("zaya_rt.Engine: a row of logits has no finite value (NaN or -inf everywhere)")
        return out

"""The generation engine: continuous batching over the paged cache (SPEC section 5).

Each `step()` schedules, oldest first, one token for every decoding sequence, then prompt chunks of sequences
still prefilling, then new requests, within a token budget (`max_tokens_per_step`), so long prompts are
prefilled in chunks between decode steps. Full prompt pages are shared through the cache's prefix table.
When pages run out the newest running sequence is preempted: its pages are released and it is recomputed
later from its prompt and the tokens it already produced (with the same sampling uniforms, so the output
is as if nothing happened).

Failures (SPEC section 9) are contained per request wherever the failing request can be told apart:
- the sampler, a request's logits (NaN, or no finite value) and its token callback act per request: the request
  finishes with finish_reason "error: <ExcType>: <message>" (the exception is kept, see `error()`), its pages
  and state slot return, and the rest of the batch goes on untouched in the same step;
- the batched forward (batch assembly and every kernel of the model) cannot name its culprit: when it raises
  with several sequences in the batch, all of them are preempted (their pages released, nothing kept from the
  failed step) and each is recomputed in a batch of its own until it passes the point where the batch failed;
  one that fails again alone finishes with the error, the others go on with exactly the tokens they would
  have had. A failure common to every request (a kernel that cannot run this configuration) so fails each
  of them with its error, returns every page, and leaves the engine ready for the next request.
Configurations that the kernels reject outright (a page size they cannot read) are refused at construction.

Details for RL (`generate(..., details=True)`): the router's expert choice of every token a request runs
through the model is recorded (steps with such a request run eagerly, never as a decode graph); a full prompt
page computed by such a request keeps its choices with its prefix entry, and such a request shares only prefix
pages that have them. `SamplingParams(logprobs=True)` records each sampled token's raw log-probability.
`update_weights` loads new weights between batches and drops the prefix cache (its K/V used the old ones).

Pure decode steps (every scheduled sequence adds one token to cached pages, no prompt chunk, no prefix
snapshot, at most max_batch sequences) run on CUDA devices as CUDA graphs, one per batch bucket
(runtime/decode_graph.py): the batch is padded to the bucket with rows that touch only the cache's padding
page and slot. On the CPU (float32/bfloat16/float16, the direct `_C` calls) the same static-buffer step is
recorded once per batch size as a step tape (runtime/step_tape.py: its `_C` calls and torch ops, replayed
without the model's Python). Every other step (prefill, chunked prompts, mixed batches) runs eagerly.
"""

from __future__ import annotations

import itertools
import numbers
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence as SequenceABC
from dataclasses import dataclass, field

import torch

from zaya_rt import ops
from zaya_rt.ops.attention import kernel_takes_head_dim
from zaya_rt.runtime import direct
from zaya_rt.runtime.decode_graph import DecodeGraphs, graphs_enabled, tapes_possible
from zaya_rt.runtime.kv_cache import PagedKVCache, PrefixEntry
from zaya_rt.runtime.params import Completion, SamplingParams
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
    error: BaseException | None = None             # what failed the request (finish_reason "error: ...")
    solo_until: int = 0                            # runs alone until num_computed reaches this (after a failure)
    routes: torch.Tensor | None = None             # [max_len, L] int32 router choices, kept for details requests
    logprobs: list[float] = field(default_factory=list)  # raw log-prob of each generated token (params.logprobs)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.generated


class Engine:
    """Continuous-batching generation with a paged KV + CCA state cache.

    model: a zaya_rt ZayaForCausalLM (its dtype and device are used). num_pages: page budget (default: room for
    max_batch sequences of 2048 tokens, or what cache_bytes allows); page_size: tokens per page; max_batch:
    sequences running at once; max_tokens_per_step: packed tokens per step (prefill chunking budget).
    cuda_graphs: run pure decode steps through the static-buffer bucketed path (`DecodeGraphs`), captured as
    CUDA graphs on CUDA devices, recorded as step tapes on the CPU's direct path and run eagerly otherwise;
    None: the ZAYA_RT_CUDA_GRAPHS environment variable (0/1) if set, else on for CUDA devices and where the CPU
    records step tapes (`decode_graph.tapes_possible`). That path adds one padding page
    and one padding state slot to the cache, beyond num_pages (or cache_bytes) and max_batch.
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
        kernel_pages = kernel_takes_head_dim(self.config.head_dim) and self.dtype != torch.float64
        if kernel_pages and page_size & (page_size - 1):
            raise ValueError(f"Engine: page_size must be a power of two for the attention kernels (head_dim "
                             f"{self.config.head_dim}, {self.dtype}), got {page_size}")
        per_page = PagedKVCache.bytes_per_page(self.config, page_size, self.dtype)
        if num_pages is None:
            num_pages = max_batch * -(-2048 // page_size)
            if cache_bytes is not None:
                if not isinstance(cache_bytes, int) or cache_bytes < per_page:
                    raise ValueError(f"Engine: cache_bytes must be at least one page ({per_page} bytes)")
                num_pages = cache_bytes // per_page
        elif cache_bytes is not None:
            raise ValueError("Engine: give num_pages or cache_bytes, not both")
        static_decode = graphs_enabled(cuda_graphs, self.device, tapes_possible(model))
        self.cache = PagedKVCache(self.config, num_pages, page_size, max_batch, dtype=self.dtype, device=self.device,
                                  padding=static_decode)
        self.runner = ModelRunner(model, self.cache)
        # CPU tapes cost no padding compute to record per batch size, so every size is a bucket there
        tapes = tapes_possible(model, self.runner.direct)
        self.decode_graphs = DecodeGraphs(
            self.runner, max_batch=max_batch, capture=self.device.type == "cuda" or tapes,
            buckets=range(1, max_batch + 1) if tapes else None) if static_decode else None
        self._greedy = direct.Greedy() if self.runner.direct else None
        self._v_state0 = self.runner.initial_v_state().to(self.device)
        self.page_size, self.max_batch, self.max_tokens_per_step = page_size, max_batch, max_tokens_per_step
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._results: dict[int, _Sequence] = {}
        self._ids = itertools.count()
        self._arrivals = itertools.count()
        self._seed_gen = torch.Generator().manual_seed(seed)
        self._entry_routes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # PrefixEntry -> [S, L] int32
        self.stats = {"steps": 0, "prefill_tokens": 0, "decode_tokens": 0, "prefix_hit_tokens": 0, "preemptions": 0}

    # -- public API -----------------------------------------------------------------------------------------
    @property
    def num_pages(self) -> int:
        return self.cache.num_pages

    @property
    def num_free_pages(self) -> int:
        return self.cache.num_free_pages

    def add_request(self, prompt: SequenceABC[int], params: SamplingParams | None = None,
                    callback: Callable[[int, int], None] | None = None, *, details: bool = False) -> int:
        """Queues a request; returns its id. callback(request_id, token) is called for each new token (a callback
        that raises fails its request, see `step`). details: record its router choices (see `completion`)."""
        prompt, params, max_len = self._check_request(prompt, params)
        if not isinstance(details, bool):
            raise TypeError(f"details must be a bool, got {type(details).__name__}")
        seed = params.seed if params.seed is not None else int(
            torch.randint(0, 2**62, (1,), generator=self._seed_gen))
        seq = _Sequence(next(self._ids), prompt, params, seed, next(self._arrivals), max_len, callback)
        if details:
            seq.routes = torch.full((max_len, self.config.num_hidden_layers), -1, dtype=torch.int32)
        self._results[seq.request_id] = seq
        self._waiting.append(seq)
        return seq.request_id

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> list[tuple[int, int]]:
        """Runs one batch; returns the (request_id, token) pairs it produced. An exception inside the step fails
        only the requests it can be traced to (module docstring); the token whose callback raised is returned
        and kept before its request finishes with the error."""
        scheduled = self._schedule()
        if not scheduled:
            if self.has_unfinished():
                raise RuntimeError("engine made no progress (a request cannot fit the cache)")
            return []
        solo = [item for item in scheduled if item[0].solo_until]
        if solo:  # a sequence of a failed batch: run it alone until it is past the failure
            scheduled = [min(solo, key=lambda item: item[0].arrival)]
        self.stats["steps"] += 1
        try:
            logits, samplers = self._forward(scheduled)
        except Exception as exc:  # noqa: BLE001 - any failure of the batch is contained, see the module docstring
            self._forward_failed(scheduled, exc)
            return []
        out = []
        tokens = self._sample(logits, samplers) if samplers else []
        logprobs = self._logprobs(logits, samplers, tokens)
        for seq, token, logprob in zip(samplers, tokens, logprobs):
            if token is None:  # its request failed in the sampler and is finished
                continue
            seq.generated.append(token)
            if logprob is not None:
                seq.logprobs.append(logprob)
            out.append((seq.request_id, token))
            if seq.callback is not None:
                try:
                    seq.callback(seq.request_id, token)
                except Exception as exc:  # noqa: BLE001 - the callback's failure is its request's
                    self._fail(seq, exc)
                    continue
            self._maybe_finish(seq, token)
        return out

    def generate(self, prompts: SequenceABC[SequenceABC[int]],
                 params: SamplingParams | SequenceABC[SamplingParams] | None = None, *,
                 details: bool = False) -> list[list[int]] | list[Completion]:
        """Generated ids (no prompt) per prompt, in request order; with details=True a `Completion` per prompt
        (token ids, raw log-probs if SamplingParams.logprobs, routed experts, finish reason). Raises like
        `stream`."""
        tokens = self.stream(prompts, params, details=details)
        outputs: list[list[int]] = [[] for _ in self.last_request_ids]
        for index, token in tokens:
            outputs[index].append(token)
        if details:
            return [self.completion(rid) for rid in self.last_request_ids]
        return outputs

    def stream(self, prompts: SequenceABC[SequenceABC[int]],
               params: SamplingParams | SequenceABC[SamplingParams] | None = None, *,
               details: bool = False) -> Iterator[tuple[int, int]]:
        """Checks and queues every prompt now (a list of token-id lists, or a 2-D tensor/array; ids are
        integers); the returned iterator yields (index into prompts, token) as tokens are produced, other queued
        requests also advancing. Once all of them have finished it raises RuntimeError if one failed (its
        finish_reason starts with "error"; the others' tokens are complete, see `result`). details: record
        the requests' router choices (see `completion`)."""
        if not isinstance(details, bool):
            raise TypeError(f"details must be a bool, got {type(details).__name__}")
        if hasattr(prompts, "tolist") and hasattr(prompts, "ndim"):  # a torch tensor or numpy array
            prompts = prompts.tolist()
        if not isinstance(prompts, SequenceABC) or isinstance(prompts, (str, bytes)):
            raise TypeError(f"Engine: prompts must be a list of token-id lists, got {type(prompts).__name__}")
        if isinstance(params, SequenceABC):
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
            per_request = list(params)
        else:
            per_request = [params] * len(prompts)
        checked = [self._check_request(p, sp)[:2] for p, sp in zip(prompts, per_request)]  # all, before queueing
        ids = [self.add_request(p, sp, details=details) for p, sp in checked]
        self.last_request_ids = ids
        return self._stream([self._results[rid] for rid in ids])

    def _stream(self, seqs: list[_Sequence]) -> Iterator[tuple[int, int]]:
        index_of = {seq.request_id: i for i, seq in enumerate(seqs)}
        remaining = [seq for seq in seqs if not seq.finished]
        while remaining:
            for rid, token in self.step():
                if rid in index_of:
                    yield index_of[rid], token
            remaining = [seq for seq in remaining if not seq.finished]
        failed = [(i, seq) for i, seq in enumerate(seqs) if seq.error is not None]
        if failed:
            i, seq = failed[0]
            raise RuntimeError(f"Engine: {len(failed)} of {len(seqs)} requests failed; the first, prompt {i} "
                               f"(request {seq.request_id}): {seq.finish_reason}") from seq.error

    def result(self, request_id: int) -> list[int]:
        """Tokens generated so far for a request."""
        return list(self._request(request_id).generated)

    def completion(self, request_id: int) -> Completion:
        """The `Completion` of a finished request queued with details=True."""
        seq = self._request(request_id)
        if seq.routes is None:
            raise ValueError(f"request {request_id} was not queued with details=True")
        if not seq.finished:
            raise ValueError(f"request {request_id} is still running")
        ran = len(seq.tokens) - 1 if seq.generated else seq.num_computed
        return Completion(list(seq.generated), list(seq.logprobs) if seq.params.logprobs else None,
                          seq.routes[:ran].clone(), seq.finish_reason)

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Loads new weights into the engine's model without rebuilding the engine, between batches: state_dict
        (name -> tensor, the model's own names and shapes; any float dtype, cast on copy) is copied into the
        model's parameters and buffers; None means they were changed in place (shared tensors). The runner's
        prepared weights are rebuilt and the prefix cache is dropped (its K/V were computed with the old weights).
        Raises RuntimeError while requests are unfinished."""
        if self.has_unfinished():
            raise RuntimeError("Engine.update_weights: requests are still running; finish or abort them first")
        if state_dict is not None:
            if not hasattr(state_dict, "items"):
                raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
            own = self.model.state_dict(keep_vars=True)
            unknown = sorted(set(state_dict) - set(own))
            if unknown:
                raise ValueError(f"update_weights: unknown names {unknown[:5]}")
            for name, value in state_dict.items():
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(own[name].shape):
                    raise ValueError(f"update_weights: {name} must be a tensor of shape {tuple(own[name].shape)}, "
                                     f"got {getattr(value, 'shape', type(value).__name__)}")
            with torch.no_grad():
                for name, value in state_dict.items():
                    own[name].copy_(value)
        self.runner.refresh_weights()
        self.cache.clear_prefix_cache()

    def tail(self, request_id: int, tau: int) -> list[int]:
        """The last tau generated tokens of a request (all of them if it has fewer)."""
        if not isinstance(tau, int) or isinstance(tau, bool) or tau < 0:
            raise ValueError(f"tau must be a non-negative int, got {tau!r}")
        generated = self._request(request_id).generated
        return list(generated[len(generated) - tau :]) if tau else []

    def finish_reason(self, request_id: int) -> str | None:
        """'length', 'stop', 'context', 'aborted' or 'error: <ExcType>: <message>' once finished, else None."""
        return self._request(request_id).finish_reason

    def error(self, request_id: int) -> BaseException | None:
        """The exception that failed a request (finish_reason 'error: ...'), else None."""
        return self._request(request_id).error

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
    def _check_request(self, prompt, params) -> tuple[list[int], SamplingParams, int]:
        """(prompt as ints, params, context length at which it stops); raises before anything is queued."""
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
        return prompt, params, max_len

    def _check_prompt(self, prompt) -> list[int]:
        if hasattr(prompt, "tolist") and hasattr(prompt, "ndim"):  # a torch tensor or numpy array
            if prompt.ndim != 1:
                raise ValueError(f"a prompt tensor must be 1-D, got shape {tuple(prompt.shape)}")
            prompt = prompt.tolist()
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, SequenceABC):
            raise TypeError(f"a prompt must be a list of token ids, got {type(prompt).__name__}")
        prompt = list(prompt)
        if not prompt:
            raise ValueError("a prompt must hold at least one token")
        vocab = self.config.vocab_size
        for t in prompt:
            if not isinstance(t, numbers.Integral) or isinstance(t, bool):  # numpy integers pass, bools do not
                raise ValueError(f"prompt token ids must be ints, got {t!r}")
            if not 0 <= t < vocab:
                raise ValueError(f"prompt token id {t} lies outside the vocabulary [0, {vocab})")
        prompt = [int(t) for t in prompt]
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
            if seq.routes is not None and entry not in self._entry_routes:
                break  # computed without recording its router choices: compute it again
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
        if seq.routes is not None and matched:
            seq.routes[: seq.num_computed] = torch.cat([self._entry_routes[e] for e in matched])
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

    def _fail(self, seq: _Sequence, exc: BaseException) -> None:
        """Finishes a request with the error (its pages and slot return)."""
        seq.error = exc
        if seq in self._waiting:
            self._waiting.remove(seq)
        self._finish(seq, f"error: {type(exc).__name__}: {exc}")

    def _forward(self, scheduled):
        """Runs the batch's forward; (logits [R, vocab], the R sequences they sample). Advances num_computed
        only once the whole forward has succeeded."""
        if self._is_pure_decode(scheduled):
            logits, samplers = self._decode_step(scheduled)
        else:
            batch, samplers = self._build_batch(scheduled)
            record = any(seq.routes is not None for seq, _ in scheduled)
            if record:
                logits, snapshots = self.runner.forward(batch, record_routes=True)
            else:
                logits, snapshots = self.runner.forward(batch)
            if record:
                routes = self.runner.last_routes.to(device="cpu", dtype=torch.int32)
                for (seq, n), row in zip(scheduled, batch.starts):
                    if seq.routes is not None:
                        seq.routes[seq.num_computed : seq.num_computed + n] = routes[row : row + n]
            self._take_snapshots(scheduled, batch, snapshots)
        for seq, n in scheduled:
            seq.num_computed += n
            if seq.num_computed >= seq.solo_until:
                seq.solo_until = 0
        return logits, samplers

    def _forward_failed(self, scheduled, exc: Exception) -> None:
        """A lone sequence fails with exc; a batch's sequences are preempted (what the failed step wrote is
        dropped with their pages) and run alone until past this step."""
        if len(scheduled) == 1:
            self._fail(scheduled[0][0], exc)
            return
        for seq, n in sorted(scheduled, key=lambda item: -item[0].arrival):  # the oldest ends first in the queue
            seq.solo_until = seq.num_computed + n
            self._preempt(seq)

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
        if any(seq.routes is not None for seq, _ in scheduled):
            return False  # router choices are recorded eagerly
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
            if seq.routes is not None:
                self._entry_routes[entry] = seq.routes[page_index * S : (page_index + 1) * S].clone()

    def _sample(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int | None]:
        """Token of each row of logits [len(seqs), vocab] (any float dtype); None where the row's request failed
        (NaN logits, no logit above -inf, or the sampler raised for that row alone): it is finished with the error.
        The whole batch is sampled at once (every sampling path raises on a row without a finite maximum); only
        when that raises are the rows sampled one by one to find the failing ones."""
        try:
            return list(self._sample_rows(logits, seqs))
        except Exception:  # noqa: BLE001 - find the row(s) it failed for; a row's token does not depend on the batch
            pass
        tokens: list[int | None] = [None] * len(seqs)
        for i, seq in enumerate(seqs):
            row = logits[i : i + 1]
            if not bool(row.amax(-1)[0] > float("-inf")):  # False for NaN anywhere in the row
                self._fail(seq, ValueError(f"the logits of request {seq.request_id} hold NaN or no value above -inf"))
                continue
            try:
                tokens[i] = self._sample_rows(row, [seq])[0]
            except Exception as exc:  # noqa: BLE001
                self._fail(seq, exc)
        return tokens

    @staticmethod
    def _logprobs(logits: torch.Tensor, seqs: list[_Sequence], tokens: list[int | None]) -> list[float | None]:
        """Raw (temperature 1, unfiltered) log-probability of each sampled token whose request asked for it."""
        rows = [i for i, (seq, t) in enumerate(zip(seqs, tokens)) if t is not None and seq.params.logprobs]
        out: list[float | None] = [None] * len(seqs)
        if rows:
            index = torch.tensor(rows, dtype=torch.long, device=logits.device)
            picked = torch.tensor([tokens[i] for i in rows], dtype=torch.long, device=logits.device)
            lp = torch.log_softmax(logits.index_select(0, index).float(), dim=-1).gather(1, picked[:, None])
            for i, value in zip(rows, lp[:, 0].tolist()):
                out[i] = value
        return out

    def _sample_rows(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        params = [s.params for s in seqs]
        dev = logits.device
        if all(p.temperature == 0 for p in params):
            if self._greedy is not None and logits.stride(-1) == 1:
                return self._greedy(logits).tolist()  # raises on a row without a finite maximum
            if not bool((logits.amax(-1) > float("-inf")).all()):
                raise ValueError("a row of logits holds NaN or no value above -inf")
            return logits.argmax(-1).tolist()
        vocab = logits.shape[-1]
        tokens = ops.sample_tokens(
            logits,
            torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev),
            torch.tensor([min(p.top_k, vocab) for p in params], dtype=torch.int32, device=dev),
            torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev),
            torch.tensor([p.min_p for p in params], dtype=torch.float32, device=dev),
            torch.tensor([s.seed for s in seqs], dtype=torch.int64, device=dev),
            torch.tensor([len(s.generated) for s in seqs], dtype=torch.int64, device=dev),
        )
        out = tokens.tolist()
        if out and min(out) < 0:  # the GPU sampler's mark for a row without finite logits (the CPU one raises)
            raise RuntimeError("zaya_rt.Engine: a row of logits has no finite value (NaN or -inf everywhere)")
        return out

"""The static-buffer, batch-bucketed decode path (runtime/decode_graph.py; CUDA graphs on a GPU) run eagerly on
the CPU, and recorded there as step tapes (runtime/step_tape.py): greedy tokens equal the normal path's token for token and
the logits agree, for batch sizes that are not bucket sizes, requests finishing at different steps, requests
joining mid-flight, preemption under a small page budget and a weight refresh; every page is free afterwards.
Both runner paths are covered: the CPU's direct `_C` calls (the default) and the checked `zaya_rt.ops` path
(the one a GPU takes). fp32 random configs, one on the attention kernels (head_dim 64, a sliding window), one
on the attention shims (head_dim 16, MHA, attention bias, conv kernels of 3).

The static-vs-normal comparisons are wiring tests (both engines run the same kernels); correctness comes from
test_static_path_matches_transformers, which checks the static path's tokens and logits against transformers'
Zaya model at the attention kernels' head dims 64 and 128."""

import pytest
import torch

import zaya_rt
from zaya_rt.model import ZayaConfig, ZayaForCausalLM
from zaya_rt.runtime.decode_graph import ENV_VAR, DecodeGraphs, bucket_sizes, graphs_enabled
from zaya_rt.runtime.kv_cache import PagedKVCache
from zaya_rt.runtime.runner import ModelRunner, PagedState

from engine_helpers import assert_matches, model_pair, record_logits

CONFIGS = {
    "kernels_d64_sliding": dict(vocab_size=101, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=64, moe_intermediate_size=32, num_experts=5,
                                router_hidden_size=16, max_position_embeddings=256,
                                layer_types=["hybrid", "hybrid_sliding", "hybrid"], sliding_window=6),
    "shims_d16_mha_cca33": dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                num_key_value_heads=3, head_dim=16, moe_intermediate_size=24, num_experts=4,
                                router_hidden_size=12, max_position_embeddings=128, cca_time0=3, cca_time1=3,
                                attention_bias=True, skip_passthrough=True),
}
PATHS = ("direct", "ops")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    cfg = ZayaConfig(**CONFIGS[request.param], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return ZayaForCausalLM(cfg).init_random(seed=sorted(CONFIGS).index(request.param) + 11, std=0.2).eval()


class _EagerReplayGraph:
    """Stands in for a CUDA graph on the CPU without recording anything: replay reruns the eager step on the
    static buffers and writes its result into the output tensor handed out at recording time. What it checks
    is the capture/replay bookkeeping, not a graph."""

    def __init__(self, step, out: torch.Tensor) -> None:
        self.step, self.out = step, out

    def replay(self) -> None:
        result = self.step()
        self.out.resize_(result.shape).copy_(result)


class _ReplayedGraphs(DecodeGraphs):
    """DecodeGraphs with capture=True on the CPU: recording runs nothing (as a CUDA capture runs nothing), so
    the bookkeeping of lazy capture, warm-up and replay is what gets tested."""

    records_cuda_graphs = False

    def _record(self, step):
        out = torch.empty(0)
        return _EagerReplayGraph(step, out), out


def _engine(model, path: str, static: bool | str, **kw) -> zaya_rt.Engine:
    engine = zaya_rt.Engine(model, cuda_graphs=bool(static), **kw)
    if path == "ops":  # the checked zaya_rt.ops path, as on a GPU
        engine.runner = ModelRunner(model, engine.cache, direct_calls=False)
        engine._greedy = None
    if static == "taped":  # the CPU's recorded step tapes, one per batch size, as the Engine sets them up
        engine.decode_graphs = DecodeGraphs(engine.runner, max_batch=engine.max_batch, capture=True,
                                            buckets=range(1, engine.max_batch + 1))
        assert engine.decode_graphs.tapes
    elif static:
        kind = _ReplayedGraphs if static == "replayed" else DecodeGraphs
        engine.decode_graphs = kind(engine.runner, max_batch=engine.max_batch, capture=static == "replayed")
    assert (engine.decode_graphs is not None) == bool(static)
    return engine


def _prompts(vocab: int, lengths, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _params(new_tokens) -> list[zaya_rt.SamplingParams]:
    return [zaya_rt.SamplingParams(max_new_tokens=n, temperature=0) for n in new_tokens]


def _run(engine, schedule):
    """schedule: {step index: [(prompt, params)]} of requests added before that step; runs to completion.
    Returns (tokens per request in order of addition, logits rows per request)."""
    seen = record_logits(engine)
    ids, step = [], 0
    while step <= max(schedule) or engine.has_unfinished():
        for prompt, params in schedule.get(step, []):
            ids.append(engine.add_request(prompt, params))
        engine.step()
        step += 1
    return [engine.result(i) for i in ids], [seen.get(i, []) for i in ids]


def _compare(model, path, schedule, static=True, **kw):
    ref_engine, static_engine = _engine(model, path, False, **kw), _engine(model, path, static, **kw)
    want, want_logits = _run(ref_engine, schedule)
    got, got_logits = _run(static_engine, schedule)
    assert got == want
    for g, w in zip(got_logits, want_logits):
        g, w = torch.stack(g), torch.stack(w)
        scale = w.abs().max()
        assert ((g - w).abs().max() / scale).item() < 1e-5
    for engine in (ref_engine, static_engine):
        assert engine.num_free_pages == engine.num_pages
        assert engine.cache.num_free_slots == engine.max_batch
    stats = static_engine.decode_graphs.stats
    if static in ("replayed", "taped"):
        assert stats["eager"] == 0 and stats["replays"] > 0
        assert stats["captures"] == len(static_engine.decode_graphs.captured) > 0
    else:
        assert stats["eager"] > 0 and stats["captures"] == 0 and stats["replays"] == 0
    return static_engine, want


@pytest.mark.parametrize("path", PATHS)
def test_ragged_batches_finishing_at_different_steps(model, path):
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [3, 9, 1, 14, 6], seed=1)
    params = _params([7, 2, 11, 5, 9])  # the batch shrinks 5 -> 4 -> 3 -> 2 -> 1 (buckets 8, 4, 4, 2, 1)
    engine, want = _compare(model, path, {0: list(zip(prompts, params))}, page_size=4, max_batch=8,
                            max_tokens_per_step=64)
    assert [len(w) for w in want] == [7, 2, 11, 5, 9]


@pytest.mark.parametrize("path", PATHS)
def test_requests_join_mid_flight(model, path):
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [5, 2, 12, 7, 3, 8, 4], seed=2)
    params = _params([8, 6, 4, 9, 3, 7, 5])
    schedule = {0: list(zip(prompts[:2], params[:2])), 3: list(zip(prompts[2:5], params[2:5])),
                6: list(zip(prompts[5:], params[5:]))}
    _compare(model, path, schedule, page_size=4, max_batch=6, max_tokens_per_step=10)


@pytest.mark.parametrize("path", PATHS)
def test_preemption_under_a_small_page_budget(model, path):
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [6, 10, 3, 8, 5], seed=3)
    params = _params([9, 7, 10, 6, 8])
    engine, _ = _compare(model, path, {0: list(zip(prompts, params))}, page_size=4, num_pages=9, max_batch=5,
                         max_tokens_per_step=12)
    assert engine.stats["preemptions"] > 0


@pytest.mark.parametrize("path", PATHS)
def test_lazy_capture_and_replay_bookkeeping(model, path):
    """capture=True with a stand-in for CUDA graphs: the first step of each bucket is the warm-up (its logits
    are used, the recording runs nothing), later steps of that bucket replay; tokens still equal."""
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [4, 8, 2, 11, 6, 3], seed=8)
    params = _params([9, 3, 12, 6, 10, 4])
    schedule = {0: list(zip(prompts[:4], params[:4])), 5: list(zip(prompts[4:], params[4:]))}
    engine, _ = _compare(model, path, schedule, static="replayed", page_size=4, max_batch=8, num_pages=40)
    assert set(engine.decode_graphs.captured) <= {1, 2, 4, 8} and len(engine.decode_graphs.captured) >= 3


class _FailingGraphs(_ReplayedGraphs):
    def _record(self, step):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_failed_capture_falls_back_to_the_eager_padded_path(model):
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [5, 3, 9], seed=9)
    schedule = {0: list(zip(prompts, _params([6, 4, 7])))}
    want, _ = _run(_engine(model, "direct", False, page_size=4), schedule)
    engine = _engine(model, "direct", True, page_size=4)
    engine.decode_graphs = _FailingGraphs(engine.runner, max_batch=engine.max_batch, capture=True)
    with pytest.warns(RuntimeWarning, match="capture of a decode step failed"):
        got, _ = _run(engine, schedule)
    assert got == want
    graphs = engine.decode_graphs
    assert not graphs.capture and "not permitted" in graphs.capture_error and graphs.stats["eager"] > 0
    assert engine.num_free_pages == engine.num_pages


@pytest.mark.parametrize("static", ["replayed", "taped"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_static_path_matches_transformers(tmp_path, head_dim, static):
    """The static decode path (replayed steps; recorded CPU step tapes) on the attention kernels: greedy tokens
    are transformers' and the logits match transformers' to 2e-5 relative, for a ragged batch with a
    sliding-window layer."""
    hf, ours = model_pair(tmp_path, seed=head_dim, head_dim=head_dim, num_hidden_layers=3, sliding_window=5,
                          layer_types=["hybrid", "hybrid_sliding", "hybrid"])
    prompts = _prompts(hf.config.vocab_size, [3, 9, 6], seed=12)
    params = _params([6, 4, 7])
    engine = _engine(ours, "direct", static, page_size=4, max_batch=4)
    (got, logits) = _run(engine, {0: list(zip(prompts, params))})
    assert engine.decode_graphs.stats["replays"] > 0
    for prompt, tokens, rows in zip(prompts, got, logits):
        assert_matches(hf, prompt, tokens, rows)


def test_shared_prefixes_and_batches_above_the_largest_bucket(model):
    """Prefix pages with snapshots, and a max_batch whose buckets stop below the batch (eager fallback)."""
    vocab = model.config.vocab_size
    stem = _prompts(vocab, [8], seed=4)[0]
    prompts = [stem + tail for tail in _prompts(vocab, [1, 3, 2, 5, 4, 6], seed=5)]
    params = _params([6, 4, 5, 3, 6, 2])
    engine, _ = _compare(model, "direct", {0: list(zip(prompts, params))}, page_size=4, max_batch=6)
    assert engine.stats["prefix_hit_tokens"] > 0


def test_weight_refresh_drops_and_rebuilds(model):
    """After the weights change and refresh_weights(), the captured steps are dropped and recaptured, and the
    static path follows the new weights."""
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [4, 7, 2], seed=6)
    schedule = {0: list(zip(prompts, _params([5, 5, 5])))}
    ref_engine = _engine(model, "ops", False, page_size=4)
    static_engine = _engine(model, "ops", "replayed", page_size=4)
    before, _ = _run(static_engine, schedule)
    original = model.lm_head.weight.detach().clone()
    try:
        with torch.no_grad():
            model.model.layers[0].self_attn.qkv_proj.q_proj.weight.mul_(-1.5)
        version = static_engine.runner.weight_version
        for engine in (ref_engine, static_engine):
            engine.runner.refresh_weights()
            engine.cache.clear_prefix_cache()  # cached prefix pages hold K/V of the old weights
        assert static_engine.runner.weight_version == version + 1
        captures = static_engine.decode_graphs.stats["captures"]
        got, _ = _run(static_engine, schedule)
        want, _ = _run(ref_engine, schedule)
        assert static_engine.decode_graphs._version == static_engine.runner.weight_version
        assert static_engine.decode_graphs.stats["captures"] > captures
        assert got == want
        assert got != before  # the refresh mattered
    finally:
        with torch.no_grad():
            model.model.layers[0].self_attn.qkv_proj.q_proj.weight.div_(-1.5)
        assert torch.equal(model.lm_head.weight, original)


def test_padding_rows_touch_only_the_padding_page_and_slot(model):
    """One padded step (3 sequences in bucket 4) leaves every page and slot it does not own unchanged."""
    engine = _engine(model, "direct", True, page_size=4, max_batch=8)
    for prompt in _prompts(model.config.vocab_size, [5, 2, 7], seed=7):
        engine.add_request(prompt, zaya_rt.SamplingParams(max_new_tokens=4, temperature=0))
    engine.step()  # prefill
    cache, seqs = engine.cache, list(engine._running)
    owned_pages = {p for s in seqs for p in s.pages}
    owned_slots = {s.slot for s in seqs}
    k, v, conv, vs = (t.clone() for t in (cache.k_pages, cache.v_pages, cache.conv_state, cache.v_state))
    engine.step()
    assert engine.decode_graphs.stats["eager"] == 1
    others = [p for p in range(cache.num_pages) if p not in owned_pages]
    assert torch.equal(cache.k_pages[:, others], k[:, others]) and torch.equal(cache.v_pages[:, others], v[:, others])
    free_slots = [s for s in range(cache.num_slots) if s not in owned_slots]
    assert torch.equal(cache.conv_state[:, free_slots], conv[:, free_slots])
    assert torch.equal(cache.v_state[:, free_slots], vs[:, free_slots])
    assert not torch.equal(cache.k_pages[:, cache.padding_page], k[:, cache.padding_page])  # padding rows wrote here


def test_pure_decode_step_builds_no_host_tensors(model, monkeypatch):
    """The ops-path step that a CUDA graph captures creates no tensor from host data (torch.tensor,
    torch.as_tensor): on a GPU that would be a host-to-device copy inside the captured region."""
    engine = _engine(model, "ops", True, page_size=4, max_batch=4)
    for prompt in _prompts(model.config.vocab_size, [5, 2, 7], seed=10):
        engine.add_request(prompt, zaya_rt.SamplingParams(max_new_tokens=3, temperature=0))
    engine.step()  # prefill
    seqs, S = list(engine._running), engine.page_size
    positions = [s.num_computed for s in seqs]
    graphs = engine.decode_graphs
    graphs._fill(4, [s.tokens[-1] for s in seqs], positions,
                 [s.pages[p // S] * S + p % S for s, p in zip(seqs, positions)], [s.pages for s in seqs],
                 [s.slot for s in seqs])

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor built from host data inside the decode step")

    monkeypatch.setattr(torch, "tensor", refuse)
    monkeypatch.setattr(torch, "as_tensor", refuse)
    logits = graphs._step(4)
    monkeypatch.undo()
    assert logits.shape == (4, model.config.vocab_size) and bool(torch.isfinite(logits).all())


def test_block_table_rows_follow_the_pages(model):
    """The static block table (written incrementally) holds each sequence's pages and the padding page for
    padding rows, step after step: pages appended, rows reordered, copied-on-write, batches shrinking."""
    cache = PagedKVCache(model.config, 30, 4, 8, dtype=torch.float32, padding=True)
    graphs = DecodeGraphs(ModelRunner(model, cache), max_batch=8, capture=False)
    steps = [[[1, 2], [3], [4, 5, 6]], [[1, 2, 7], [3], [4, 5, 6]], [[4, 5, 6], [1, 2, 7, 8]],
             [[4, 9, 6], [1, 2, 7, 8], [10], [11], [12]], [[13]], [[4, 9, 6, 14], [1, 2], [10, 15]]]
    for pages in steps:
        n = len(pages)
        bucket = graphs.bucket(n)
        graphs._fill(bucket, [0] * n, [0] * n, [0] * n, pages, list(range(n)))
        table = graphs.block_table[:bucket]
        for i, row in enumerate(pages):
            assert table[i, : len(row)].tolist() == row
        assert table[n:bucket, 0].tolist() == [cache.padding_page] * (bucket - n)
        assert graphs.index32[1, n:bucket].tolist() == [1] * (bucket - n)  # padding rows: seq_len 1
        assert graphs.index64[2, n:bucket].tolist() == [cache.padding_slot] * (bucket - n)


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(3) == [1, 2, 3]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert bucket_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    for bad in (0, -1, 2.0, None):
        with pytest.raises(ValueError):
            bucket_sizes(bad)


def test_graphs_enabled(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert graphs_enabled(None, cuda) and not graphs_enabled(None, cpu)
    assert graphs_enabled(None, cpu, cpu_tapes=True) and not graphs_enabled(False, cpu, cpu_tapes=True)
    assert graphs_enabled(True, cpu) and not graphs_enabled(False, cuda)
    monkeypatch.setenv(ENV_VAR, "0")
    assert not graphs_enabled(None, cuda) and graphs_enabled(True, cuda)
    monkeypatch.setenv(ENV_VAR, "1")
    assert graphs_enabled(None, cpu)
    monkeypatch.setenv(ENV_VAR, "yes")
    with pytest.raises(ValueError, match=ENV_VAR):
        graphs_enabled(None, cpu)
    with pytest.raises(TypeError):
        graphs_enabled("1", cpu)


def test_bad_setups(model):
    cache = PagedKVCache(model.config, 4, 4, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="padding=True"):
        DecodeGraphs(ModelRunner(model, cache), max_batch=2, capture=False)
    padded = PagedKVCache(model.config, 4, 4, 2, dtype=torch.float32, padding=True)
    assert padded.padding_page == 4 and padded.padding_slot == 2 and padded.num_free_pages == 4
    assert padded.k_pages.shape[1] == 5 and padded.conv_state.shape[1] == 3 and padded.num_free_slots == 2
    with pytest.raises(ValueError, match="CUDA device"):  # the checked ops path cannot be recorded on the CPU
        DecodeGraphs(ModelRunner(model, padded, direct_calls=False), max_batch=2, capture=True)
    taped = DecodeGraphs(ModelRunner(model, padded), max_batch=2, capture=True) if model.model.layers[
        0].self_attn.kernel_attention else None
    assert taped is None or taped.tapes
    graphs = DecodeGraphs(ModelRunner(model, padded), max_batch=2, capture=False)
    with pytest.raises(ValueError, match="largest bucket"):
        graphs.bucket(3)
    with pytest.raises(TypeError):
        zaya_rt.Engine(model, cuda_graphs="on")


# ---- CPU step tapes (DecodeGraphs with capture=True on the CPU's direct path) --------------------------------


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def kernel_model(request):
    """The configuration whose layers all take the attention kernels (their decode steps record as tapes)."""
    cfg = ZayaConfig(**CONFIGS["kernels_d64_sliding"], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return ZayaForCausalLM(cfg).init_random(seed=21, std=0.2).eval().to(request.param)


def test_taped_steps_match_the_normal_path(kernel_model):
    """Ragged prompts finishing at different steps, requests joining mid-flight (every batch size gets its own
    tape), sequences crossing page boundaries (page_size 4): tokens equal and logits agree with the normal path."""
    vocab = kernel_model.config.vocab_size
    prompts = _prompts(vocab, [3, 9, 1, 14, 6, 5, 2], seed=31)
    params = _params([17, 2, 11, 5, 19, 9, 6])
    schedule = {0: list(zip(prompts[:4], params[:4])), 4: list(zip(prompts[4:], params[4:]))}
    engine, _ = _compare(kernel_model, "direct", schedule, static="taped", page_size=4, max_batch=8,
                         max_tokens_per_step=16)
    assert len(engine.decode_graphs.captured) >= 4


def test_taped_steps_under_preemption(kernel_model):
    vocab = kernel_model.config.vocab_size
    prompts = _prompts(vocab, [6, 10, 3, 8, 5], seed=32)
    engine, _ = _compare(kernel_model, "direct", {0: list(zip(prompts, _params([9, 7, 10, 6, 8])))},
                         static="taped", page_size=4, num_pages=9, max_batch=5, max_tokens_per_step=12)
    assert engine.stats["preemptions"] > 0


def test_the_default_cpu_engine_records_tapes(kernel_model, monkeypatch):
    """Engine() on a CPU model takes the taped decode path unless ZAYA_RT_CUDA_GRAPHS=0 or cuda_graphs=False;
    its tokens are the eager engine's."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    prompts = _prompts(kernel_model.config.vocab_size, [4, 7], seed=33)
    params = _params([12, 9])
    default = zaya_rt.Engine(kernel_model, page_size=4, max_batch=4)
    eager = zaya_rt.Engine(kernel_model, page_size=4, max_batch=4, cuda_graphs=False)
    assert default.decode_graphs is not None and default.decode_graphs.tapes and eager.decode_graphs is None
    assert default.decode_graphs.buckets == [1, 2, 3, 4]  # no padding rows on the CPU
    assert default.generate(prompts, params) == eager.generate(prompts, params)
    assert default.decode_graphs.stats["replays"] > 0 and default.decode_graphs.stats["eager"] == 0
    monkeypatch.setenv(ENV_VAR, "0")
    assert zaya_rt.Engine(kernel_model, page_size=4, max_batch=4).decode_graphs is None


def test_taped_steps_follow_a_weight_refresh(kernel_model):
    vocab = kernel_model.config.vocab_size
    schedule = {0: list(zip(_prompts(vocab, [4, 7, 2], seed=34), _params([6, 6, 6])))}
    ref_engine = _engine(kernel_model, "direct", False, page_size=4)
    taped = _engine(kernel_model, "direct", "taped", page_size=4)
    before, _ = _run(taped, schedule)
    weight = kernel_model.model.layers[0].self_attn.qkv_proj.q_proj.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(-1.5)
        for engine in (ref_engine, taped):
            engine.runner.refresh_weights()
            engine.cache.clear_prefix_cache()
        captures = taped.decode_graphs.stats["captures"]
        got, _ = _run(taped, schedule)
        want, _ = _run(ref_engine, schedule)
        assert taped.decode_graphs.stats["captures"] > captures
        assert got == want and got != before
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_an_unreplayable_step_falls_back_to_the_eager_path(kernel_model, monkeypatch):
    """A step that reads a value back to Python cannot be replayed: recording warns, the step's result is still
    used, and later steps run the static path eagerly; tokens stay the normal path's."""
    vocab = kernel_model.config.vocab_size
    schedule = {0: list(zip(_prompts(vocab, [5, 3, 9], seed=35), _params([6, 4, 7])))}
    want, _ = _run(_engine(kernel_model, "direct", False, page_size=4), schedule)
    finish = PagedState.finish

    def reading_finish(self):
        float(self.cache.conv_state.sum())  # a read-back, as a data-dependent branch would do
        return finish(self)

    monkeypatch.setattr(PagedState, "finish", reading_finish)
    engine = _engine(kernel_model, "direct", "taped", page_size=4)
    with pytest.warns(RuntimeWarning, match="recording a decode step failed"):
        got, _ = _run(engine, schedule)
    assert got == want
    graphs = engine.decode_graphs
    assert not graphs.capture and "value to Python" in graphs.capture_error and graphs.stats["eager"] > 0

"""CUDA-graph decode steps on a real GPU: the Engine with graphs (captured per batch bucket, replayed) produces
the eager Engine's greedy tokens token for token (fp32) and its logits (fp32, bf16), across ragged batches,
requests finishing at different steps and joining mid-flight, preemption, and a weight refresh (which drops
the graphs); a pure decode step makes no host sync. Runs only where torch sees a GPU and _C has a GPU backend.
"""

import pytest
import torch

import zaya_rt
from conftest import NEEDS_GPU
from zaya_rt.runtime.tiny import tiny_model

pytestmark = NEEDS_GPU


@pytest.fixture(scope="module")
def model_fp32():
    return tiny_model(seed=1).to("cuda")


def _prompts(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def _run(engine, schedule):
    seen: dict[int, list[torch.Tensor]] = {}
    sample = engine._sample

    def recording(logits, seqs):
        for row, seq in zip(logits, seqs):
            seen.setdefault(seq.request_id, []).append(row.detach().float().cpu().clone())
        return sample(logits, seqs)

    engine._sample = recording
    ids, step = [], 0
    while step <= max(schedule) or engine.has_unfinished():
        for prompt, n in schedule.get(step, []):
            ids.append(engine.add_request(prompt, zaya_rt.SamplingParams(max_new_tokens=n, temperature=0)))
        engine.step()
        step += 1
    return [engine.result(i) for i in ids], [torch.stack(seen[i]) for i in ids]


def _compare(model, schedule, *, tokens_equal=True, tol=1e-4, **kw):
    eager = zaya_rt.Engine(model, cuda_graphs=False, **kw)
    graphs = zaya_rt.Engine(model, cuda_graphs=True, **kw)
    assert eager.decode_graphs is None and graphs.decode_graphs.capture
    want, want_logits = _run(eager, schedule)
    got, got_logits = _run(graphs, schedule)
    if tokens_equal:
        assert got == want
    for g_tokens, w_tokens, g, w in zip(got, want, got_logits, want_logits):
        # rows up to the first differing token have the same history (row 0 comes from the eager prefill)
        n = next((i for i, (a, b) in enumerate(zip(g_tokens, w_tokens)) if a != b), len(w_tokens) - 1) + 1
        assert n >= 2 or not tokens_equal
        rel = ((g[:n] - w[:n]).abs().max() / w[:n].abs().max()).item()
        assert rel < tol, f"graph vs eager logits: relative error {rel:.2e}"
    stats = graphs.decode_graphs.stats
    assert graphs.decode_graphs.capture_error is None
    assert stats["captures"] > 0 and stats["replays"] > 0, stats
    for engine in (eager, graphs):
        assert engine.num_free_pages == engine.num_pages
    return graphs


def test_graph_replay_equals_eager_fp32(model_fp32):
    prompts = _prompts([3, 17, 1, 30, 9], seed=0)
    schedule = {0: list(zip(prompts[:3], [12, 5, 20])), 4: list(zip(prompts[3:], [9, 15]))}
    engine = _compare(model_fp32, schedule, page_size=16, max_batch=8, max_tokens_per_step=64)
    assert set(engine.decode_graphs.captured) <= {1, 2, 4, 8} and len(engine.decode_graphs.captured) >= 2


def test_graph_replay_under_preemption_fp32(model_fp32):
    prompts = _prompts([6, 10, 3, 8, 5, 12], seed=1)
    schedule = {0: list(zip(prompts, [14, 9, 16, 11, 13, 7]))}
    engine = _compare(model_fp32, schedule, page_size=4, num_pages=14, max_batch=6, max_tokens_per_step=16)
    assert engine.stats["preemptions"] > 0


def test_graph_replay_bf16_logits():
    model = tiny_model(seed=2, dtype=torch.bfloat16).to("cuda")
    prompts = _prompts([5, 11, 2], seed=2)
    _compare(model, {0: list(zip(prompts, [8, 8, 8]))}, tokens_equal=False, tol=3e-2, page_size=16, max_batch=4)


def test_weight_refresh_recaptures(model_fp32):
    prompts = _prompts([4, 9], seed=3)
    schedule = {0: list(zip(prompts, [6, 6]))}
    eager = zaya_rt.Engine(model_fp32, cuda_graphs=False, page_size=16, max_batch=4)
    graphs = zaya_rt.Engine(model_fp32, cuda_graphs=True, page_size=16, max_batch=4)
    _run(graphs, schedule)
    assert graphs.decode_graphs.captured
    weight = model_fp32.model.layers[0].self_attn.qkv_proj.q_proj.weight
    try:
        with torch.no_grad():
            weight.mul_(-2.0)
        for engine in (eager, graphs):
            engine.runner.refresh_weights()
            engine.cache.clear_prefix_cache()  # cached prefix pages hold K/V of the old weights
        captures = graphs.decode_graphs.stats["captures"]
        got, _ = _run(graphs, schedule)
        want, _ = _run(eager, schedule)
        assert got == want
        assert graphs.decode_graphs.stats["captures"] > captures  # recaptured on the new weights
    finally:
        with torch.no_grad():
            weight.div_(-2.0)


def test_pure_decode_step_makes_no_host_sync(model_fp32):
    engine = zaya_rt.Engine(model_fp32, cuda_graphs=True, page_size=16, max_batch=4)
    for prompt in _prompts([7, 3, 12], seed=4):
        engine.add_request(prompt, zaya_rt.SamplingParams(max_new_tokens=4, temperature=0))
    engine.step()  # prefill
    graphs = engine.decode_graphs
    seqs = list(engine._running)
    S = engine.page_size
    positions = [s.num_computed for s in seqs]
    graphs._fill(4, [s.tokens[-1] for s in seqs], positions,
                 [s.pages[p // S] * S + p % S for s, p in zip(seqs, positions)], [s.pages for s in seqs],
                 [s.slot for s in seqs])
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        graphs._step(4)  # the eager step that a graph captures
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()

"""Soak: a thousand mixed requests on the embedded tiny model under a tight page budget (shared and
unshared prompts, random lengths, early stops, aborts, greedy and sampled): nothing crashes, every request ends
within its limits, and afterwards every page and state slot is free again."""

import random

import zaya_rt
from zaya_rt.runtime import tiny_model


def test_soak_mixed_requests_leave_no_page_behind():
    rng = random.Random(0)
    engine = zaya_rt.Engine(tiny_model(seed=1), num_pages=40, page_size=8, max_batch=48, max_tokens_per_step=384)
    bases = [[rng.randrange(256) for _ in range(rng.randrange(8, 30))] for _ in range(6)]
    requests = {}
    emitted: dict[int, list[int]] = {}
    for wave in range(5):
        for _ in range(200):
            if rng.random() < 0.5:
                prompt = rng.choice(bases) + [rng.randrange(256) for _ in range(rng.randrange(0, 4))]
            else:
                prompt = [rng.randrange(256) for _ in range(rng.randrange(1, 24))]
            params = zaya_rt.SamplingParams(
                max_new_tokens=rng.randrange(1, 7), temperature=rng.choice([0.0, 0.8, 1.0]),
                top_k=rng.choice([0, 16]), top_p=rng.choice([1.0, 0.9]), min_p=rng.choice([0.0, 0.05]),
                stop_token_ids=tuple(rng.sample(range(256), 12)), seed=rng.choice([None, rng.randrange(1000)]),
            )
            requests[engine.add_request(prompt, params)] = params
        for _ in range(rng.randrange(2, 6)):
            for rid, token in engine.step():
                emitted.setdefault(rid, []).append(token)
        victim = rng.choice(list(requests))
        engine.abort(victim)
    while engine.has_unfinished():
        for rid, token in engine.step():
            emitted.setdefault(rid, []).append(token)

    assert len(requests) == 1000
    for rid, params in requests.items():
        out = engine.result(rid)
        assert out == emitted.get(rid, [])
        reason = engine.finish_reason(rid)
        if reason == "aborted":
            continue
        assert 1 <= len(out) <= params.max_new_tokens and all(0 <= t < 256 for t in out)
        stops = [i for i, t in enumerate(out) if t in params.stop_token_ids]
        assert stops == ([len(out) - 1] if reason == "stop" else []), (reason, out)
        assert reason == "stop" or len(out) == params.max_new_tokens
    assert engine.stats["preemptions"] > 0 and engine.stats["prefix_hit_tokens"] > 0
    assert engine.num_free_pages == engine.num_pages
    assert engine.cache.num_free_slots == engine.max_batch
    assert all(c == 0 for c in engine.cache.refcount)
    engine.cache.clear_prefix_cache()
    assert len(engine.cache._free) == engine.num_pages

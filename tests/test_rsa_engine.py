"""Markovian RSA on zaya_rt's Engine with the embedded tiny model: every round's peak KV pages stay within
N x (|q| + C*tau + template overhead + beta) tokens in pages (and below the unshared total, thanks to prefix
sharing), every round hits the prefix cache, finished traces give their pages back, and seeds matter."""

import pytest

import zaya_rt
from zaya_rt.rsa import DefaultTemplate, RSAConfig, markovian_rsa
from zaya_rt.runtime import ByteTokenizer, tiny_model

PAGE = 8
PROBLEM = "What is the sum of the first 10 odd numbers?"


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def _run(model, config):
    engine = zaya_rt.Engine(model, page_size=PAGE, max_batch=config.population)
    return engine, markovian_rsa(engine, ByteTokenizer(), PROBLEM, config, progress=False)


def test_page_bound_prefix_hits_and_release(model):
    config = RSAConfig(population=4, tails=2, rounds=2, budget=10, tail_tokens=6, seed=0)
    engine, result = _run(model, config)
    template = DefaultTemplate(ByteTokenizer())
    N, C = config.population, config.tails
    for t, stats in enumerate(result.stats):
        prompts = result.prompts[t]
        context = (len(template.rollout(PROBLEM)) if t == 0
                   else len(template.aggregate(PROBLEM, [[]] * C)) + C * config.tail_tokens)
        bound = N * -(-(context + config.budget) // PAGE)
        unshared = sum(-(-(len(p) + len(c.token_ids)) // PAGE) for p, c in zip(prompts, result.rounds[t]))
        assert all(len(c.token_ids) == config.budget for c in result.rounds[t])  # the tiny model has no EOS
        assert stats.prompt_tokens == sum(map(len, prompts))
        assert stats.generated_tokens == N * config.budget
        assert max(-(-len(p) // PAGE) for p in prompts) <= stats.peak_kv_pages < unshared <= bound
        assert stats.prefix_hit_tokens > 0
        lcp = next((i for i in range(len(prompts[0])) if len({p[i] if i < len(p) else -1 for p in prompts}) > 1),
                   len(prompts[0]))
        assert lcp > 2 * PAGE
        # the shared prefix is prefilled once: every other prompt takes its full pages from the prefix cache
        assert stats.prefix_hit_tokens >= (N - 1) * (lcp // PAGE) * PAGE
        assert stats.seconds > 0
    assert engine.cache.num_held_pages == 0  # finished traces released everything
    assert engine.num_free_pages == engine.num_pages


def test_seeds_give_different_traces_and_repeat(model):
    config = RSAConfig(population=3, tails=2, rounds=1, budget=6, tail_tokens=4, seed=1)
    _, a = _run(model, config)
    _, b = _run(model, config)
    _, c = _run(model, RSAConfig(**{**config.to_dict(), "seed": 2, "rounds": 0}))
    tokens = lambda r: [[x.token_ids for x in rnd] for rnd in r.rounds]  # noqa: E731
    assert tokens(a) == tokens(b) and a.prompts == b.prompts
    assert tokens(a)[0] != tokens(c)[0]
    assert len({tuple(x.token_ids) for x in a.rounds[0]}) == 3  # one seed per request, not per round


def test_cache_counts_peak_held_pages():
    from zaya_rt.runtime import PagedKVCache, tiny_config

    cache = PagedKVCache(tiny_config(), 6, 4, 2, dtype=__import__("torch").float32)
    pages = [cache.allocate() for _ in range(4)]
    assert cache.num_held_pages == cache.peak_held_pages == 4
    cache.share(pages[0])  # a second holder of a held page holds no new page
    for page in pages:
        cache.release(page)
    assert cache.num_held_pages == 1 and cache.peak_held_pages == 4
    cache.reset_peak()
    assert cache.peak_held_pages == 1
    page = cache.allocate()
    assert cache.peak_held_pages == 2
    entry = cache.register(0, (1, 2, 3, 4), page)
    cache.mark_ready(entry, None, None)
    cache.release(page)  # a ready prefix page nobody holds stays cached (evictable), not held
    assert cache.num_held_pages == 1 and cache.num_free_pages == 5
    cache.reset_peak()
    cache.share(page)  # taken back from the prefix cache: held again
    assert cache.num_held_pages == cache.peak_held_pages == 2

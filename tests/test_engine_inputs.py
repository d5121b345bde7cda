"""Engine and SamplingParams reject bad input with a clear ValueError/TypeError before queueing anything;
seeded sampling does not depend on what else is in the batch."""

import pytest
import torch

import zaya_rt
from zaya_rt.runtime import tiny_model


@pytest.fixture(scope="module")
def engine():
    return zaya_rt.Engine(tiny_model(seed=2), num_pages=32, page_size=8, max_batch=4)


PARAMS_BAD = [
    dict(max_new_tokens=0), dict(max_new_tokens=-3), dict(max_new_tokens=2.5), dict(max_new_tokens=True),
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")), dict(temperature="1"),
    dict(top_p=0.0), dict(top_p=1.5), dict(top_p=float("nan")), dict(top_k=-1), dict(top_k=1.5),
    dict(min_p=-0.1), dict(min_p=1.1), dict(stop_token_ids=(-1,)), dict(stop_token_ids=("a",)),
    dict(seed=2**64), dict(seed=1.0),
]


@pytest.mark.parametrize("bad", PARAMS_BAD, ids=[str(b) for b in PARAMS_BAD])
def test_bad_sampling_params(bad):
    with pytest.raises(ValueError, match="SamplingParams"):
        zaya_rt.SamplingParams(**bad)


PROMPT_BAD = [
    ("empty prompt", [], ValueError, "at least one token"),
    ("id above vocab", [1, 256], ValueError, "outside the vocabulary"),
    ("negative id", [-1, 3], ValueError, "outside the vocabulary"),
    ("float id", [1.0, 2], ValueError, "ints"),
    ("bool id", [True], ValueError, "ints"),
    ("string prompt", "hello", TypeError, "list of token ids"),
    ("too long for the context", [1] * 4096, ValueError, "context"),
    ("2-D tensor prompt", torch.ones(2, 3, dtype=torch.long), ValueError, "1-D"),
]


@pytest.mark.parametrize("name,prompt,error,match", PROMPT_BAD, ids=[b[0] for b in PROMPT_BAD])
def test_bad_prompts(engine, name, prompt, error, match):
    with pytest.raises(error, match=match):
        engine.generate([[5, 6], prompt], zaya_rt.SamplingParams(max_new_tokens=2))
    assert not engine.has_unfinished()  # nothing was queued


def test_other_bad_calls(engine):
    greedy = zaya_rt.SamplingParams(max_new_tokens=2, temperature=0)
    with pytest.raises(ValueError, match="needs .* pages"):
        engine.generate([[1] * 200], zaya_rt.SamplingParams(max_new_tokens=100))
    with pytest.raises(ValueError, match="SamplingParams for"):
        engine.generate([[1], [2]], [greedy])
    with pytest.raises(TypeError, match="SamplingParams"):
        engine.generate([[1]], dict(max_new_tokens=2))
    with pytest.raises(TypeError):
        engine.generate("abc")
    with pytest.raises(ValueError, match="unknown request"):
        engine.tail(10**9, 3)
    rid = engine.add_request([1, 2, 3], greedy)
    with pytest.raises(ValueError, match="still running"):
        engine.forget(rid)
    while engine.has_unfinished():
        engine.step()
    with pytest.raises(ValueError, match="tau"):
        engine.tail(rid, -1)
    assert engine.tail(rid, 0) == [] and engine.tail(rid, 10) == engine.result(rid)
    for bad in (dict(page_size=0), dict(max_batch=-1), dict(max_tokens_per_step=0), dict(num_pages=0),
                dict(num_pages=4, cache_bytes=10**6), dict(cache_bytes=1)):
        with pytest.raises(ValueError):
            zaya_rt.Engine(engine.model, **bad)
    with pytest.raises(TypeError):
        zaya_rt.Engine(torch.nn.Linear(2, 2))


def test_seeded_sampling_ignores_batch_composition(engine):
    params = zaya_rt.SamplingParams(max_new_tokens=6, temperature=1.0, top_k=50, top_p=0.95, seed=1234)
    alone = engine.generate([[10, 20, 30]], params)[0]
    others = zaya_rt.SamplingParams(max_new_tokens=4, temperature=0.9, seed=None)
    mixed = engine.generate([[7] * 9, [10, 20, 30], [1, 2]], [others, params, others])[1]
    assert mixed == alone
    assert engine.num_free_pages == engine.num_pages


def test_stop_tokens_end_a_request(engine):
    greedy = zaya_rt.SamplingParams(max_new_tokens=8, temperature=0)
    out = engine.generate([[3, 1, 4, 1, 5]], greedy)[0]
    stop = out[2]
    first = out.index(stop)
    cut = engine.generate([[3, 1, 4, 1, 5]], zaya_rt.SamplingParams(max_new_tokens=8, temperature=0,
                                                                   stop_token_ids=(stop,)))[0]
    assert cut == out[: first + 1]
    assert engine.finish_reason(engine.last_request_ids[0]) == "stop"

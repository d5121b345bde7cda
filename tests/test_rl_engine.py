"""Engine rollouts with details (routed experts, raw log-probs) and weight updates, checked against the
model's own fp32 forward (the ops path, not the engine's direct kernels)."""

import random

import pytest
import torch

from zaya_rt import Engine, SamplingParams
from zaya_rt.model.modeling import ZayaRouter
from rl_helpers import routed_tiny_model
from zaya_rt.runtime import Completion, tiny_model


def reference(model, prompt, generated):
    """(raw log-probs of the generated tokens [G], router choices [P + G - 1, L]) of one fp32 forward."""
    routers = [m for m in model.modules() if isinstance(m, ZayaRouter)]
    choices = []
    handles = [r.register_forward_hook(lambda m, a, out: choices.append(out[2])) for r in routers]
    ids = torch.tensor([prompt + generated[:-1]])
    try:
        with torch.no_grad():
            logits = model(ids)[0].double()
    finally:
        for h in handles:
            h.remove()
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1 :].gather(1, torch.tensor(generated)[:, None])[:, 0]
    return logp, torch.stack(choices, 1).to(torch.int32)


@pytest.fixture(scope="module")
def model():
    return routed_tiny_model(seed=3)


def prompts_of(seed, lengths):
    rng = random.Random(seed)
    return [[rng.randrange(256) for _ in range(n)] for n in lengths]


def test_details_match_the_models_forward(model):
    seed = random.randrange(2**31)
    engine = Engine(model, num_pages=64, page_size=16, max_batch=4, max_tokens_per_step=40)  # chunked prefill
    prompts = prompts_of(seed, [5, 37, 1, 20])
    params = SamplingParams(max_new_tokens=9, temperature=1.0, top_k=5, logprobs=True)
    outs = engine.generate(prompts, params, details=True)
    L, E = model.config.num_hidden_layers, model.config.num_experts
    for prompt, out in zip(prompts, outs):
        assert isinstance(out, Completion) and out.finish_reason == "length" and len(out.token_ids) == 9
        assert out.routed_experts.dtype == torch.int32
        assert out.routed_experts.shape == (len(prompt) + 9 - 1, L)
        assert int(out.routed_experts.min()) >= 0 and int(out.routed_experts.max()) <= E
        want_logp, want_routes = reference(model, prompt, out.token_ids)
        # the raw distribution (not the top-5 renormalised one, whose log-probs are larger)
        torch.testing.assert_close(torch.tensor(out.logprobs, dtype=torch.float64), want_logp, rtol=0, atol=1e-4)
        assert torch.equal(out.routed_experts, want_routes)


def test_details_do_not_change_the_tokens(model):
    prompts = prompts_of(1, [12, 30, 3])
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.9, seed=11)
    plain = Engine(model, num_pages=64, max_batch=4).generate(prompts, params)
    detailed = Engine(model, num_pages=64, max_batch=4).generate(prompts, params, details=True)
    assert [c.token_ids for c in detailed] == plain
    assert all(c.logprobs is None for c in detailed)  # not asked for


def test_prefix_pages_carry_their_routes(model):
    shared = prompts_of(5, [40])[0]
    prompts = [shared + [1, 2], shared + [3]]
    params = SamplingParams(max_new_tokens=4, temperature=0, logprobs=True)
    engine = Engine(model, num_pages=64, page_size=8, max_batch=4)
    first = engine.generate(prompts[:1], params, details=True)[0]
    hits = engine.stats["prefix_hit_tokens"]
    second = engine.generate(prompts[1:], params, details=True)[0]
    assert engine.stats["prefix_hit_tokens"] - hits == 40  # the second shares the first's pages and their routes
    for prompt, out in zip(prompts, (first, second)):
        _, want = reference(model, prompt, out.token_ids)
        assert torch.equal(out.routed_experts, want)


def test_prefix_pages_without_routes_are_recomputed(model):
    shared = prompts_of(6, [40])[0]
    engine = Engine(model, num_pages=64, page_size=8, max_batch=4)
    engine.generate([shared + [9]], SamplingParams(max_new_tokens=2))  # pages computed without routes
    hits = engine.stats["prefix_hit_tokens"]
    out = engine.generate([shared + [3]], SamplingParams(max_new_tokens=3, temperature=0), details=True)[0]
    assert engine.stats["prefix_hit_tokens"] == hits
    assert torch.equal(out.routed_experts, reference(model, shared + [3], out.token_ids)[1])


def test_details_survive_preemption(model):
    prompts = prompts_of(8, [9, 12, 7, 15, 10, 11])
    engine = Engine(model, page_size=4, num_pages=9, max_batch=6, max_tokens_per_step=12)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3, logprobs=True)
    outs = engine.generate(prompts, params, details=True)
    assert engine.stats["preemptions"] > 0
    for prompt, out in zip(prompts, outs):
        want_logp, want_routes = reference(model, prompt, out.token_ids)
        assert torch.equal(out.routed_experts, want_routes)  # recomputed rows recorded again, none left at -1
        torch.testing.assert_close(torch.tensor(out.logprobs, dtype=torch.float64), want_logp, rtol=0, atol=1e-4)


def test_cuda_graph_path_records_routes_eagerly(model):
    engine = Engine(model, num_pages=64, max_batch=4, cuda_graphs=True)
    prompt = prompts_of(2, [9])[0]
    out = engine.generate([prompt], SamplingParams(max_new_tokens=5, temperature=0), details=True)[0]
    assert torch.equal(out.routed_experts, reference(model, prompt, out.token_ids)[1])


def test_update_weights_syncs_and_drops_the_prefix_cache(model):
    old, new = tiny_model(seed=3), tiny_model(seed=4)
    prompt = prompts_of(7, [50])[0]
    params = SamplingParams(max_new_tokens=6, temperature=0, logprobs=True)

    def run(engine):
        out = engine.generate([prompt], params, details=True)[0]
        return out.token_ids, torch.tensor(out.logprobs)

    engine = Engine(old, num_pages=64, page_size=8, max_batch=2)
    before = run(engine)
    engine.update_weights(new.state_dict())
    assert engine.num_free_pages == engine.num_pages  # cached prefix pages of the old weights are gone
    after = run(engine)
    fresh = run(Engine(new, num_pages=64, page_size=8, max_batch=2))
    assert after[0] == fresh[0]
    torch.testing.assert_close(after[1], fresh[1], rtol=0, atol=1e-6)  # stale K/V would move these
    assert not torch.allclose(after[1], before[1], atol=1e-3)
    # in place (shared tensors): None re-reads the model
    old.load_state_dict(tiny_model(seed=3).state_dict())  # copies into the same tensors
    engine.update_weights()
    again = run(engine)
    assert again[0] == before[0]
    torch.testing.assert_close(again[1], before[1], rtol=0, atol=1e-6)


def test_update_weights_bad_input(model):
    engine = Engine(tiny_model(seed=3), num_pages=32, max_batch=2)
    with pytest.raises(ValueError, match="unknown names"):
        engine.update_weights({"nope": torch.zeros(1)})
    name, value = next(iter(model.state_dict().items()))
    with pytest.raises(ValueError, match=name):
        engine.update_weights({name: value[:1]})
    with pytest.raises(TypeError, match="state_dict"):
        engine.update_weights([1, 2])
    rid = engine.add_request([1, 2, 3], SamplingParams(max_new_tokens=3))
    with pytest.raises(RuntimeError, match="still running"):
        engine.update_weights()
    with pytest.raises(ValueError, match="details=True"):
        engine.completion(rid)
    engine.abort(rid)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=1)
    with pytest.raises(TypeError, match="details"):
        engine.generate([[1]], details="yes")

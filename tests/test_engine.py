"""Engine.generate equals transformers' greedy generate token for token (and in its logits) on randomised
small fp32 configs: single and batched requests, shared prefixes, requests joining mid-flight, a page budget
small enough to force preemption, and contexts rebuilt from [prompt + tails]."""

import pytest
import torch

import zaya_rt
from engine_helpers import assert_matches, hf_greedy, model_pair, record_logits

CONFIGS = {
    "gqa_d32": dict(head_dim=32),  # head dim the attention kernels take (the others run the shims)
    "sliding_cca23_bias": dict(num_hidden_layers=4, layer_types=["hybrid", "hybrid_sliding"] * 2, sliding_window=5,
                               cca_time0=2, cca_time1=3, attention_bias=True),
    "mha_cca33_untied": dict(num_attention_heads=3, num_key_value_heads=3, cca_time0=3, cca_time1=3,
                             tie_word_embeddings=False, num_hidden_layers=2),
}
GREEDY = zaya_rt.SamplingParams(max_new_tokens=10, temperature=0)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    return model_pair(tmp_path_factory.mktemp(request.param), seed=sorted(CONFIGS).index(request.param) + 3,
                      **CONFIGS[request.param])


def _prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def _check_all(hf, engine, prompts, outputs, seen, ids):
    for prompt, out, rid in zip(prompts, outputs, ids):
        assert len(out) == GREEDY.max_new_tokens
        assert_matches(hf, prompt, out, seen[rid])


def test_single_request(pair):
    hf, ours = pair
    engine = zaya_rt.Engine(ours, page_size=4, max_batch=4)
    seen = record_logits(engine)
    prompt = _prompts(hf.config.vocab_size, [11])[0]
    out = engine.generate([prompt], GREEDY)
    assert out[0] == hf_greedy(hf, prompt, GREEDY.max_new_tokens)  # literally transformers' generate
    _check_all(hf, engine, [prompt], out, seen, engine.last_request_ids)
    assert engine.num_free_pages == engine.num_pages


def test_batched_ragged_with_chunked_prefill(pair):
    hf, ours = pair
    engine = zaya_rt.Engine(ours, page_size=4, max_batch=8, max_tokens_per_step=7)
    seen = record_logits(engine)
    prompts = _prompts(hf.config.vocab_size, [1, 5, 17, 9, 30], seed=1)
    out = engine.generate(prompts, GREEDY)
    _check_all(hf, engine, prompts, out, seen, engine.last_request_ids)
    assert engine.num_free_pages == engine.num_pages


def test_shared_prefixes_prefill_once(pair):
    hf, ours = pair
    base = _prompts(hf.config.vocab_size, [13], seed=2)[0]
    prompts = [base, base, base + [5, 6, 7], base[:8] + [9, 9], base]
    engine = zaya_rt.Engine(ours, page_size=4, max_batch=8)
    seen = record_logits(engine)
    out = engine.generate(prompts, GREEDY)
    _check_all(hf, engine, prompts, out, seen, engine.last_request_ids)
    # base holds 3 full pages; sharing reuses them (the last matched page of an exact copy is recomputed)
    assert engine.stats["prefix_hit_tokens"] >= 3 * 8 + 3 * 4 + 2 * 4
    assert engine.num_free_pages == engine.num_pages


def test_requests_join_mid_flight(pair):
    hf, ours = pair
    engine = zaya_rt.Engine(ours, page_size=4, max_batch=8, max_tokens_per_step=16)
    seen = record_logits(engine)
    prompts = _prompts(hf.config.vocab_size, [6, 14, 3, 21], seed=3)
    ids = [engine.add_request(prompts[0], GREEDY), engine.add_request(prompts[1], GREEDY)]
    out = {}
    for step in range(40):
        if step == 2:
            ids.append(engine.add_request(prompts[2], GREEDY))
        if step == 5:
            ids.append(engine.add_request(prompts[3], GREEDY))
        for rid, token in engine.step():
            out.setdefault(rid, []).append(token)
        if step > 5 and not engine.has_unfinished():
            break
    _check_all(hf, engine, prompts, [out[i] for i in ids], seen, ids)
    assert [engine.result(i) for i in ids] == [out[i] for i in ids]


def test_preemption_under_a_small_page_budget(pair):
    hf, ours = pair
    prompts = _prompts(hf.config.vocab_size, [9, 12, 7, 15, 10, 11], seed=4)
    engine = zaya_rt.Engine(ours, page_size=4, num_pages=9, max_batch=6, max_tokens_per_step=12)
    seen = record_logits(engine)
    out = engine.generate(prompts, GREEDY)
    assert engine.stats["preemptions"] > 0
    _check_all(hf, engine, prompts, out, seen, engine.last_request_ids)
    assert engine.num_free_pages == engine.num_pages


def test_contexts_from_prompt_and_tails(pair):
    hf, ours = pair
    prompt = _prompts(hf.config.vocab_size, [10], seed=5)[0]
    engine = zaya_rt.Engine(ours, page_size=4, max_batch=8)
    sampled = zaya_rt.SamplingParams(max_new_tokens=9, temperature=1.0, seed=None)
    engine.generate([prompt] * 3, sampled)
    ids = engine.last_request_ids
    tails = [engine.tail(i, 4) for i in ids]
    assert all(len(t) == 4 and t == engine.result(i)[-4:] for t, i in zip(tails, ids))
    assert engine.num_free_pages == engine.num_pages  # finished traces gave their pages back
    hits = engine.stats["prefix_hit_tokens"]
    contexts = [prompt + tails[0] + tails[1], prompt + tails[2]]
    seen = record_logits(engine)
    out = engine.generate(contexts, GREEDY)
    _check_all(hf, engine, contexts, out, seen, engine.last_request_ids)
    assert engine.stats["prefix_hit_tokens"] - hits >= 2 * 8  # the prompt's two full pages were reused

"""HFEngine: Markovian RSA's engine over a transformers causal LM (a randomised tiny transformers Zaya). Batched,
left-padded generate equals unpadded single-prompt generate; stop ids cut the output and set the finish
reason; the sampling parameters reach transformers (top_k = 1 is greedy); seeds reproduce; the loop runs."""

import pytest
import torch

import zaya_rt
from engine_helpers import hf_greedy
from hf_helpers import hf_model
from zaya_rt.rsa import HFEngine, RSAConfig, markovian_rsa


@pytest.fixture(scope="module")
def hf():
    return hf_model(seed=4)


def _prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def test_batched_left_padded_greedy_equals_single_prompt_generate(hf):
    prompts = _prompts(hf.config.vocab_size, [5, 12, 1])
    engine = HFEngine(hf)
    out = engine.generate(prompts, zaya_rt.SamplingParams(max_new_tokens=6, temperature=0))
    assert out == [hf_greedy(hf, p, 6) for p in prompts]
    assert engine.last_finish_reasons == ["length"] * 3


def test_stop_ids_cut_the_output(hf):
    prompts = _prompts(hf.config.vocab_size, [7, 3], seed=1)
    want = [hf_greedy(hf, p, 8) for p in prompts]
    stop = want[0][2]
    engine = HFEngine(hf)
    out = engine.generate(prompts, zaya_rt.SamplingParams(max_new_tokens=8, temperature=0, stop_token_ids=(stop,)))
    for got, full, reason in zip(out, want, engine.last_finish_reasons):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert got == full[:cut] and reason == ("stop" if stop in full else "length")
    assert len(out[0]) <= 3 < len(want[0])  # the stop id did cut the first output


def test_sampling_parameters_and_seeds_reach_transformers(hf):
    prompts = _prompts(hf.config.vocab_size, [4, 9], seed=2)
    engine = HFEngine(hf)
    greedy = engine.generate(prompts, zaya_rt.SamplingParams(max_new_tokens=5, temperature=0))
    top1 = engine.generate(prompts, zaya_rt.SamplingParams(max_new_tokens=5, temperature=1.5, top_k=1, seed=3))
    assert top1 == greedy
    sample = lambda seed: engine.generate(  # noqa: E731
        prompts, [zaya_rt.SamplingParams(max_new_tokens=5, temperature=1.0, seed=seed)] * 2)
    first = sample(5)
    assert sample(5) == first != sample(6)
    with pytest.raises(ValueError, match="share sampling settings"):
        engine.generate(prompts, [zaya_rt.SamplingParams(temperature=1.0), zaya_rt.SamplingParams(temperature=0.5)])
    with pytest.raises(TypeError, match="transformers causal LM"):
        HFEngine(object())


class _ModTokenizer:
    """Bytes folded into the tiny model's vocabulary [1, 97)."""

    def encode(self, text):
        return [b % 96 + 1 for b in text.encode()]

    def decode(self, ids):
        return "".join(chr(31 + i) for i in ids)


def test_markovian_rsa_on_hf_engine(hf):
    config = RSAConfig(population=3, tails=2, rounds=1, budget=5, tail_tokens=3, seed=0)
    result = markovian_rsa(HFEngine(hf), _ModTokenizer(), "2+2?", config, progress=False)
    assert [len(r) for r in result.rounds] == [3, 3]
    assert all(len(c.token_ids) == 5 and c.tail_ids == c.token_ids[-3:] for r in result.rounds for c in r)
    assert result.stats[1].prefix_hit_tokens is None and result.stats[1].generated_tokens == 15

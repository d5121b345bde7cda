"""Markovian RSA rejects bad input with a clear error naming it: invalid configs, an empty problem, engines that
return the wrong number or kind of completions, tokenizers and templates lacking their methods."""

import pytest

from rsa_helpers import FakeEngine, ScriptTokenizer
from zaya_rt.rsa import RSAConfig, markovian_rsa

SMALL = dict(population=3, tails=2, rounds=1, budget=8, tail_tokens=4)


@pytest.mark.parametrize("change, error, match", [
    (dict(population=0), ValueError, "population"),
    (dict(tails=4), ValueError, "tails .* population"),
    (dict(tails=0), ValueError, "tails"),
    (dict(rounds=-1), ValueError, "rounds"),
    (dict(budget=0), ValueError, "budget"),
    (dict(tail_tokens=9), ValueError, "tail_tokens .* budget"),
    (dict(tail_tokens=0), ValueError, "tail_tokens"),
    (dict(head_tokens=5), ValueError, "head_tokens"),
    (dict(head_tokens=-1), ValueError, "head_tokens"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(temperature=float("nan")), TypeError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(population=2.0), TypeError, "population"),
    (dict(rounds=True), TypeError, "rounds"),
    (dict(seed="0"), TypeError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
])
def test_invalid_config(change, error, match):
    with pytest.raises(error, match=match):
        RSAConfig(**{**SMALL, **change})


def test_config_must_be_an_rsa_config():
    with pytest.raises(TypeError, match="config"):
        markovian_rsa(FakeEngine(), ScriptTokenizer(), "2+2?", dict(SMALL), progress=False)


@pytest.mark.parametrize("problem", ["", "   \n", None, b"2+2"])
def test_empty_or_non_text_problem(problem):
    with pytest.raises(ValueError, match="problem"):
        markovian_rsa(FakeEngine(), ScriptTokenizer(), problem, RSAConfig(**SMALL), progress=False)


class _Dropping(FakeEngine):
    def generate(self, prompts, params):
        return super().generate(prompts, params)[:-1]


class _Texts(FakeEngine):
    def generate(self, prompts, params):
        return ["some text" for _ in prompts]


class _Floats(FakeEngine):
    def generate(self, prompts, params):
        return [[1.5, 2.0] for _ in prompts]


@pytest.mark.parametrize("engine, match", [
    (_Dropping(), "returned 2 completions for 3 prompts"),
    (_Texts(), "lists of int token ids"),
    (_Floats(), "lists of int token ids"),
])
def test_engine_returning_wrong_completions(engine, match):
    with pytest.raises(ValueError, match=match):
        markovian_rsa(engine, ScriptTokenizer(), "2+2?", RSAConfig(**SMALL), progress=False)


def test_engine_without_generate():
    with pytest.raises(TypeError, match="engine must have generate"):
        markovian_rsa(object(), ScriptTokenizer(), "2+2?", RSAConfig(**SMALL), progress=False)


class _NoEncode:
    def decode(self, ids):
        return ""


class _NoDecode:
    def encode(self, text):
        return [1]


class _BadEncode(ScriptTokenizer):
    def encode(self, text):
        return text.split()


@pytest.mark.parametrize("tokenizer, error, match", [
    (_NoEncode(), TypeError, "encode"),
    (_NoDecode(), TypeError, "decode"),
    ("gpt2", TypeError, "tokenizer must have a callable"),
    (_BadEncode(), TypeError, "int token ids"),
])
def test_bad_tokenizer(tokenizer, error, match):
    with pytest.raises(error, match=match):
        markovian_rsa(FakeEngine(), tokenizer, "2+2?", RSAConfig(**SMALL), progress=False)


class _EmptyTemplate:
    def rollout(self, problem):
        return []

    def aggregate(self, problem, tails):
        return [1]


def test_bad_template():
    with pytest.raises(TypeError, match="template"):
        markovian_rsa(FakeEngine(), ScriptTokenizer(), "2+2?", RSAConfig(**SMALL), template=object(),
                      progress=False)
    with pytest.raises(ValueError, match="rollout"):
        markovian_rsa(FakeEngine(), ScriptTokenizer(), "2+2?", RSAConfig(**SMALL), template=_EmptyTemplate(),
                      progress=False)


def test_bad_answer_fn():
    with pytest.raises(TypeError, match="answer_fn"):
        markovian_rsa(FakeEngine(), ScriptTokenizer(), "2+2?", RSAConfig(**SMALL), answer_fn="boxed",
                      progress=False)

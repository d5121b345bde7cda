"""Markovian RSA's protocol on a scripted engine: T + 1 rounds of N prompts, aggregation prompts made of exactly
C distinct previous-round tails spliced in as their ids, tails = the last tau generated ids without EOS, the
prompt-length bound, seeded reproducibility and resumption, and the special cases C = 1, T = 0, tau = beta."""

import pytest

from rsa_helpers import EOS, ChatTokenizer, FakeEngine, ScriptTokenizer, find
from zaya_rt.rsa import DefaultTemplate, RSAConfig, RSAResult, RSATemplate, markovian_rsa

PROBLEM = "Find x if 2x + 3 = 17."


def _run(config, tokenizer=None, engine=None, **kw):
    engine = FakeEngine() if engine is None else engine
    tokenizer = ScriptTokenizer() if tokenizer is None else tokenizer
    kw.setdefault("progress", False)
    return engine, markovian_rsa(engine, tokenizer, PROBLEM, config, **kw)


def _check_protocol(engine, result, config, tokenizer):
    N, C, T, tau = config.population, config.tails, config.rounds, config.tail_tokens
    template = DefaultTemplate(tokenizer)
    assert len(engine.calls) == T + 1 and len(result.rounds) == T + 1 and len(result.prompts) == T + 1
    replay = FakeEngine()
    for t, (prompts, params) in enumerate(list(engine.calls)):
        assert len(prompts) == N and len(params) == N and prompts == result.prompts[t]
        assert all(p.max_new_tokens == config.budget and p.stop_token_ids == (EOS,) for p in params)
        assert len({p.seed for p in params}) == N  # every request its own seed
        for cand, generated in zip(result.rounds[t], replay.generate(prompts, params)):
            assert cand.token_ids == generated
            body = generated[:-1] if generated[-1] == EOS else generated
            assert EOS not in cand.tail_ids
            h = config.head_tokens
            assert cand.tail_ids == (body if len(body) <= h + tau else body[:h] + body[len(body) - tau:])
            assert len(body) <= tau or len(cand.tail_ids) == min(len(body), h + tau)
            want = "stop" if generated[-1] == EOS else "length" if len(generated) == config.budget else "unknown"
            assert cand.finish_reason == want
            assert cand.answer == ("7" if "\\boxed{7}" in cand.text else None)
        if t == 0:
            assert all(p == template.rollout(PROBLEM) for p in prompts)
            continue
        empty = len(template.aggregate(PROBLEM, [[]] * C))  # |q| + template overhead
        previous = [c.tail_ids for c in result.rounds[t - 1]]
        for prompt, cand in zip(prompts, result.rounds[t]):
            assert len(cand.parents) == C == len(set(cand.parents))
            found = [j for j, tail in enumerate(previous) if find(prompt, tail) == 1]
            assert sorted(found) == sorted(cand.parents)  # exactly the C drawn tails, each once
            assert prompt == template.aggregate(PROBLEM, [previous[j] for j in cand.parents])
            assert len(prompt) == empty + sum(len(previous[j]) for j in cand.parents)
            assert len(prompt) <= empty + C * (tau + config.head_tokens)


@pytest.mark.parametrize("config", [
    RSAConfig(population=6, tails=3, rounds=3, budget=40, tail_tokens=12, seed=5),
    RSAConfig(population=4, tails=1, rounds=2, budget=30, tail_tokens=7, seed=1),      # C = 1: continuation
    RSAConfig(population=5, tails=2, rounds=0, budget=20, tail_tokens=5, seed=2),      # T = 0: parallel
    RSAConfig(population=4, tails=4, rounds=2, budget=16, tail_tokens=16, seed=3),     # tau = beta: plain RSA
    RSAConfig(population=5, tails=2, rounds=2, budget=40, tail_tokens=10, head_tokens=4, seed=4),  # head
], ids=["general", "c1", "t0", "tau_eq_beta", "head"])
def test_protocol(config):
    tokenizer = ScriptTokenizer()
    engine, result = _run(config, tokenizer)
    _check_protocol(engine, result, config, tokenizer)


def test_chat_template_wraps_every_prompt():
    tokenizer = ChatTokenizer()
    config = RSAConfig(population=3, tails=2, rounds=1, budget=12, tail_tokens=6)
    engine, result = _run(config, tokenizer)
    _check_protocol(engine, result, config, tokenizer)
    for prompts in result.prompts:
        for p in prompts:
            assert p[:3] == list(b"<u>") and p[-7:] == list(b"</u><a>")


def test_refine_wording_for_one_tail_and_solution_blocks_otherwise():
    tokenizer = ScriptTokenizer()
    _, one = _run(RSAConfig(population=3, tails=1, rounds=1, budget=10, tail_tokens=5), tokenizer)
    _, two = _run(RSAConfig(population=3, tails=2, rounds=1, budget=10, tail_tokens=5), tokenizer)
    text1 = bytes(t for t in one.prompts[1][0] if t < 256).decode()
    text2 = bytes(t for t in two.prompts[1][0] if t < 256).decode()
    assert "---- Candidate ----" in text1 and "refine" in text1 and "---- Solution" not in text1
    assert "---- Solution 1 ----" in text2 and "---- Solution 2 ----" in text2 and "Problem:\n" + PROBLEM in text2
    assert "\\boxed{}" in text2 and "may contain mistakes" in text2


def test_seeded_runs_reproduce_and_seeds_differ():
    config = RSAConfig(population=5, tails=2, rounds=2, budget=20, tail_tokens=6, seed=11)
    _, a = _run(config)
    _, b = _run(config)
    _, c = _run(RSAConfig(**{**config.to_dict(), "seed": 12}))
    assert a.prompts == b.prompts and a.to_dict()["rounds"] == b.to_dict()["rounds"]
    assert [x.parents for x in a.rounds[1]] != [x.parents for x in c.rounds[1]]
    assert [x.token_ids for x in a.rounds[0]] != [x.token_ids for x in c.rounds[0]]


def test_draws_cover_the_population_without_repeats():
    config = RSAConfig(population=8, tails=3, rounds=6, budget=8, tail_tokens=4, seed=0)
    _, result = _run(config)
    drawn = [j for r in result.rounds[1:] for c in r for j in c.parents]
    assert set(drawn) == set(range(8))
    counts = [drawn.count(j) for j in range(8)]  # 144 draws: uniform means 18 each
    assert min(counts) >= 8 and max(counts) <= 30


def test_resume_continues_exactly():
    config = RSAConfig(population=4, tails=2, rounds=3, budget=16, tail_tokens=5, seed=7)
    _, full = _run(config)
    saved = []
    _run(config, on_round=lambda r: saved.append(r.to_dict()))
    partial = RSAResult.from_dict(saved[1])  # as if the run stopped after round 1
    engine, resumed = _run(config, resume=partial)
    assert len(engine.calls) == 2  # rounds 2 and 3 only
    assert resumed.prompts == full.prompts and resumed.to_dict()["rounds"] == full.to_dict()["rounds"]
    with pytest.raises(ValueError, match="resume"):
        _run(RSAConfig(**{**config.to_dict(), "seed": 8}), resume=partial)
    partial.rounds[1] = partial.rounds[1][:3]
    with pytest.raises(ValueError, match="rounds of 4 candidates"):
        _run(config, resume=partial)


def test_accuracy_helpers():
    config = RSAConfig(population=4, tails=2, rounds=0, budget=4, tail_tokens=2)
    result = RSAResult(PROBLEM, config, rounds=[[]])
    from zaya_rt.rsa import RSACandidate

    answers = ["7", " 7 ", "8", None]
    result.rounds[0] = [RSACandidate([], [], "", a, "stop") for a in answers]
    assert result.mean_accuracy(0, "7") == 0.5
    assert result.majority_answer(0) == "7" and result.majority_vote(0, "7")
    assert not result.majority_vote(0, "8") and result.pass_at_n(0, "8") and not result.pass_at_n(0, "9")
    assert result.mean_accuracy(0, lambda a: a.strip() == "8") == 0.25
    result.rounds[0] = [RSACandidate([], [], "", a, "stop") for a in ["1", "2", "2", None]]
    assert result.majority_answer(0) == "2"
    result.rounds[0] = [RSACandidate([], [], "", None, "stop")] * 4
    assert result.majority_answer(0) is None and not result.majority_vote(0, "7")


class _BosTokenizer(ScriptTokenizer):
    """Prepends BOS (id 1) when asked for special tokens, as transformers tokenizers do."""

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + super().encode(text)


class _BosChatTokenizer(_BosTokenizer, ChatTokenizer):
    pass


def test_special_tokens_only_once_and_not_under_a_chat_template():
    config = RSAConfig(population=3, tails=2, rounds=1, budget=12, tail_tokens=6)
    _, plain = _run(config, _BosTokenizer())
    _, chat = _run(config, _BosChatTokenizer())
    for prompts in plain.prompts:
        assert all(p[0] == 1 and p.count(1) == 1 for p in prompts)
    for prompts in chat.prompts:
        assert all(1 not in p for p in prompts)


def test_progress_bar_per_round(capsys):
    _run(RSAConfig(population=2, tails=1, rounds=1, budget=4, tail_tokens=2), progress=True)
    err = capsys.readouterr().err
    assert "RSA round 0/1" in err and "RSA round 1/1" in err


class _CompactTemplate(RSATemplate):
    """A custom template: [9, 9] + problem bytes, then each tail after a 0."""

    def rollout(self, problem):
        return [9, 9] + list(problem.encode())

    def aggregate(self, problem, tails):
        ids = self.rollout(problem)
        for tail in tails:
            ids += [0] + list(tail)
        return ids


def test_custom_template():
    config = RSAConfig(population=4, tails=3, rounds=1, budget=12, tail_tokens=5, seed=3)
    _, result = _run(config, template=_CompactTemplate())
    head = [9, 9] + list(PROBLEM.encode())
    assert all(p == head for p in result.prompts[0])
    for prompt, cand in zip(result.prompts[1], result.rounds[1]):
        want = list(head)
        for j in cand.parents:
            want += [0] + result.rounds[0][j].tail_ids
        assert prompt == want

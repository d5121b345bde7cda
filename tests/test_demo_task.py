"""The demo task (zaya_rt.demo.task), its corpus and tokenizer: problems by seed, exact checking, corrupted
solutions, and prompts that tokenise the same whether spliced by RSA or rendered by the trainer."""

import random
import re

import pytest

from zaya_rt.demo import corpus, task
from zaya_rt.demo.tokenizer import DemoTokenizer, train_tokenizer
from zaya_rt.rsa import extract_boxed
from zaya_rt.rsa.templates import DefaultTemplate
from zaya_rt.train.data import render_chat


def _reference_answer(text: str) -> int:
    """Independent of task.py: parses the statement and folds the operations with Python's own arithmetic."""
    m = re.fullmatch(r"Work modulo (\d+)\. Start with (\d+), then apply:((?:\n[A-Z][+*]\d+)+)", text)
    assert m, text
    modulus, x = int(m.group(1)), int(m.group(2))
    for i, line in enumerate(m.group(3).split()):
        assert line[0] == chr(ord("A") + i)  # steps are lettered A, B, C, ... in order
        x = eval(f"({x}){line[1:]}") % modulus  # noqa: S307 - digits and one operator, parsed above
    return x


@pytest.mark.parametrize("steps,modulus", [(1, 3), (6, 11), (9, 23)])
def test_answers_match_an_independent_evaluation(steps, modulus):
    for i in range(200):
        p = task.make_problem("eval", 7, i, steps=steps, modulus=modulus)
        assert len(p.ops) == steps and 0 <= p.start < modulus
        assert int(p.answer()) == _reference_answer(p.text())
        assert extract_boxed(task.solution(p)) == p.answer()
        lines = task.solution(p).splitlines()[:-1]
        stated = p.text().splitlines()[1:]
        for line, step in zip(lines, stated, strict=True):  # every step restates the problem's, and is right
            label, op1, k1, a, op, k, b = re.fullmatch(r"([A-Z])([+*])(\d+): (\d+)([+*])(\d+)=(\d+)", line).groups()
            assert f"{label}{op1}{k1}" == step and (op1, k1) == (op, k)
            assert int(b) == eval(f"{a}{op}{k}") % modulus  # noqa: S307


def test_problems_are_deterministic_by_seed_and_split():
    a = task.make_problems("eval", 3, 50, steps=5)
    assert a == task.make_problems("eval", 3, 50, steps=5)
    assert a != task.make_problems("eval", 4, 50, steps=5)
    assert a != task.make_problems("train", 3, 50, steps=5)
    assert len({p.text() for p in a}) == 50


def test_checker_rejects_wrong_answers():
    p = task.make_problem("eval", 0, 1, steps=6, modulus=11)
    right = p.answer()
    assert task.check(p, right) and task.check(p, f" {right} ")
    for wrong in [str(v) for v in range(11) if str(v) != right] + [None, "", right + "0", "x", "-" + right]:
        assert not task.check(p, wrong)
    assert task.check_text(p, task.solution(p))
    assert not task.check_text(p, "no box here")
    with pytest.raises(TypeError, match="answer"):
        task.check(p, int(right))


def test_corrupted_solutions_carry_one_error_forward():
    rng = random.Random(0)
    wrong_answers = 0
    for i in range(300):
        p = task.make_problem("train", 0, i, steps=6, modulus=11)
        bad = task.corrupt(p, rng)
        written = [int(line.split("=")[1]) for line in bad.splitlines()[:-1]]
        errors = [j for j, (w, v) in enumerate(zip(written, p.values())) if w != v]
        assert errors, "a corrupted solution must differ from the right one"
        first = errors[0]
        x = written[first]
        for (op, k), w in zip(p.ops[first + 1:], written[first + 1:]):  # later steps follow the wrong value
            x = task.apply(x, op, k, p.modulus)
            assert w == x
        wrong_answers += not task.check_text(p, bad)
    assert wrong_answers > 250  # usually, not always, wrong (a multiply by 0 can absorb the error)


@pytest.mark.parametrize("kwargs,error", [
    (dict(split="test", seed=0, index=0, steps=3), ValueError),
    (dict(split="eval", seed=0, index=0, steps=0), ValueError),
    (dict(split="eval", seed=0, index=0, steps=27), ValueError),
    (dict(split="eval", seed=0, index=0, steps=3, modulus=2), ValueError),
    (dict(split="eval", seed="0", index=0, steps=3), TypeError),
    (dict(split="eval", seed=0, index=1.5, steps=3), TypeError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        task.make_problem(**kwargs)


def test_rsa_prompts_tokenise_as_the_trainer_renders_them(tmp_path):
    """The RSA template encodes its text pieces one by one around the candidates' generated ids; the trainer
    encodes the whole chat. The demo tokenizer must give the same ids both ways, or SFT would teach a prompt
    the evaluation never shows."""
    texts = corpus.pretrain_texts(0, 300, steps=(1, 6), modulus=11)
    chats = corpus.sft_chats(0, 200, steps=(1, 6), modulus=11, tails=4, aggregate_share=0.5)
    train_tokenizer(texts + [m["content"] for c in chats for m in c] + ["<|user|>\n", "<|assistant|>\n"], 512,
                    tmp_path / "tokenizer.json")
    tok = DemoTokenizer(tmp_path)
    template = DefaultTemplate(tok)
    rng = random.Random(1)
    for i in range(20):
        p = task.make_problem("eval", 9, i, steps=rng.randint(1, 6), modulus=11)
        cands = [task.corrupt(p, rng) if rng.random() < 0.5 else task.solution(p) for _ in range(4)]
        answer = task.solution(p)
        for user, prompt in ((corpus.aggregate_text(p, cands), template.aggregate(p.text(), [tok.encode(c) for c in cands])),
                             (corpus.rollout_text(p), template.rollout(p.text()))):
            chat = render_chat([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], tok)
            assert chat.input_ids[:len(prompt)] == prompt
            assert chat.input_ids[len(prompt):] == tok.encode(answer) + [tok.eos_token_id] + tok.encode("\n")
            assert tok.decode(tok.encode(answer)) == answer
        for label, (op, k) in zip(task.LABELS, p.ops):  # a step is one token, the same in problem and solution
            assert tok.encode(f"{op}{k}") == tok.encode(f"{label}{op}{k}")[1:] and len(tok.encode(f"{op}{k}")) == 1


def test_demo_tokenizer_needs_its_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="not a demo tokenizer"):
        DemoTokenizer(tmp_path)

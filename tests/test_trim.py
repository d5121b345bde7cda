"""zaya_rt.train.trim_to_budget: every rule of SPEC section 7's answer-preserving trimming."""

import copy
import random

import pytest

from zaya_rt.runtime.tokenizer import ByteTokenizer
from zaya_rt.train import trim_to_budget
from zaya_rt.train.trim import split_reasoning

_BYTES = ByteTokenizer()


def count_bytes(messages):
    """A real token count: the byte-level tokenizer over a role header plus the content of each message."""
    return sum(len(_BYTES.encode(f"<|{m['role']}|>\n")) + len(_BYTES.encode(m["content"])) for m in messages)


def words(rng, n):
    return " ".join(rng.choice(["alpha", "beta", "gamma", "δέλτα", "x", "yy"]) for _ in range(n))


def sample(rng, turns, reasoning_words=40, answer_words=5, prompt_words=8):
    msgs = [{"role": "system", "content": words(rng, 3)}]
    for _ in range(turns):
        msgs.append({"role": "user", "content": words(rng, prompt_words)})
        msgs.append({"role": "assistant", "content": f"<think>{words(rng, reasoning_words)}</think>{words(rng, answer_words)}"})
    return msgs


def prompts_and_answers(messages):
    return [(m["role"], split_reasoning(m["content"])[1] if m["role"] == "assistant" else m["content"]) for m in messages]


def test_fits_returned_unchanged():
    msgs = sample(random.Random(0), 2)
    assert trim_to_budget(msgs, count_bytes(msgs), count_bytes) is msgs


def test_earlier_reasoning_dropped_oldest_first_answers_kept():
    rng = random.Random(1)
    msgs = sample(rng, 3)
    before = copy.deepcopy(msgs)
    r1 = split_reasoning(msgs[2]["content"])[0]
    # Budget that is met once the first turn's reasoning (plus its tags) is gone, not before.
    budget = count_bytes(msgs) - len(_BYTES.encode(f"<think>{r1}</think>"))
    out = trim_to_budget(msgs, budget, count_bytes)
    assert msgs == before  # input untouched
    assert out[2]["content"] == split_reasoning(msgs[2]["content"])[1]  # oldest reasoning dropped
    assert out[4] == msgs[4] and out[6] == msgs[6]  # later turns keep theirs
    assert prompts_and_answers(out) == prompts_and_answers(msgs)
    assert count_bytes(out) <= budget


def test_all_earlier_dropped_then_last_reasoning_cut_to_longest_fitting_start():
    rng = random.Random(2)
    for trial in range(20):
        msgs = sample(rng, rng.randint(1, 4), reasoning_words=rng.randint(5, 60))
        last = len(msgs) - 1
        stripped = [
            {**m, "content": split_reasoning(m["content"])[1]} if m["role"] == "assistant" and i != last else m
            for i, m in enumerate(msgs)
        ]
        full_reasoning, answer = split_reasoning(msgs[last]["content"])
        floor = count_bytes(stripped[:last]) + count_bytes([{"role": "assistant", "content": f"<think></think>{answer}"}])
        budget = rng.randint(floor, count_bytes(stripped) - 1)
        out = trim_to_budget(msgs, budget, count_bytes)
        assert out[:last] == stripped[:last]
        kept, kept_answer = split_reasoning(out[last]["content"])
        assert kept_answer == answer and full_reasoning.startswith(kept)
        assert count_bytes(out) <= budget
        # Longest start: one more character no longer fits (independent linear check).
        longer = full_reasoning[: len(kept) + 1]
        bigger = out[:last] + [{"role": "assistant", "content": f"<think>{longer}</think>{answer}"}]
        assert count_bytes(bigger) > budget
        assert prompts_and_answers(out) == prompts_and_answers(msgs)


def test_reasoning_block_removed_when_even_empty_tags_do_not_fit():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>long thoughts</think>A"}]
    budget = count_bytes([{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}])
    out = trim_to_budget(msgs, budget, count_bytes)
    assert out[1]["content"] == "A" and out[0] is msgs[0]


def test_dropped_when_prompts_and_answers_exceed():
    msgs = sample(random.Random(3), 2)
    bare = [{**m, "content": split_reasoning(m["content"])[1]} for m in msgs]
    assert trim_to_budget(msgs, count_bytes(bare) - 1, count_bytes) is None
    assert trim_to_budget(msgs, count_bytes(bare), count_bytes) is not None
    assert trim_to_budget([{"role": "user", "content": "x" * 50}], 10, count_bytes) is None


def test_no_reasoning_anywhere():
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "plain answer"}]
    assert trim_to_budget(msgs, count_bytes(msgs) - 1, count_bytes) is None
    unclosed = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>never closed"}]
    # An unclosed think block is answer text, never cut.
    assert trim_to_budget(unclosed, count_bytes(unclosed) - 1, count_bytes) is None


def test_multi_turn_stops_as_soon_as_it_fits():
    rng = random.Random(4)
    msgs = sample(rng, 4, reasoning_words=30)
    reasonings = [split_reasoning(msgs[i]["content"])[0] for i in (2, 4, 6)]
    cost = [len(_BYTES.encode(f"<think>{r}</think>")) for r in reasonings]
    budget = count_bytes(msgs) - cost[0] - cost[1]  # needs the two oldest dropped, not the third
    out = trim_to_budget(msgs, budget, count_bytes)
    assert [split_reasoning(out[i]["content"])[0] for i in (2, 4, 6, 8)] == [
        None, None, reasonings[2], split_reasoning(msgs[8]["content"])[0]
    ]


def test_bad_arguments():
    msgs = [{"role": "user", "content": "q"}]
    with pytest.raises(TypeError, match="messages"):
        trim_to_budget("q", 5, count_bytes)
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        trim_to_budget([{"role": "user"}], 5, count_bytes)
    with pytest.raises(ValueError, match="budget"):
        trim_to_budget(msgs, 0, count_bytes)
    with pytest.raises(TypeError, match="budget"):
        trim_to_budget(msgs, 5.0, count_bytes)
    with pytest.raises(TypeError, match="count_tokens"):
        trim_to_budget(msgs, 5, None)

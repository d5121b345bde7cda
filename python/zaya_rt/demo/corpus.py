"""The demo's training texts: pretraining traces and SFT chats (rollouts and synthetic RSA aggregations).

Aggregation chats use the exact user text of Markovian RSA's `DefaultTemplate.aggregate`: C candidate
solutions, each right or corrupted (`task.corrupt`), and the right solution as the assistant's answer, so the
model learns to reuse the candidates' right steps and to compute itself where they disagree or all are wrong.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

from zaya_rt.demo.task import Problem, corrupt, make_problem, solution
from zaya_rt.rsa.templates import DefaultTemplate


class _CharTokenizer:
    """Characters as ids: lets DefaultTemplate render its prompts as text (ids -> chr)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


_CHARS = _CharTokenizer()
_TEMPLATE = DefaultTemplate(_CHARS, use_chat_template=False)


def rollout_text(problem: Problem) -> str:
    """The user text of a round-0 rollout (DefaultTemplate.rollout)."""
    return _CHARS.decode(_TEMPLATE.rollout(problem.text()))


def aggregate_text(problem: Problem, candidates: Sequence[str]) -> str:
    """The user text of an aggregation over candidate solution texts (DefaultTemplate.aggregate)."""
    return _CHARS.decode(_TEMPLATE.aggregate(problem.text(), [_CHARS.encode(c) for c in candidates]))


def _steps(rng: random.Random, steps: tuple[int, int]) -> int:
    return rng.randint(*steps)


def pretrain_texts(seed: int, count: int, *, steps: tuple[int, int], modulus: int) -> list[str]:
    """`count` documents 'PROBLEM\\nSOLUTION' of the train split (problems seed-indexed 0..count-1)."""
    rng = random.Random(f"zaya_rt.demo.pretrain:{seed}")
    out = []
    for i in range(count):
        p = make_problem("train", seed, i, steps=_steps(rng, steps), modulus=modulus)
        out.append(f"{p.text()}\n{solution(p)}")
    return out


def sft_chats(seed: int, count: int, *, steps: tuple[int, int], modulus: int, tails: int,
              aggregate_share: float, part: int = 0) -> list[list[dict]]:
    """`count` chats: a share `aggregate_share` are aggregations over `tails` candidates (each corrupted with
    a probability drawn per chat from [0.2, 0.9]), the rest plain rollouts. Problems come from the train split
    at indices after those of pretraining (offset 10**7 per `part`: one part per SFT stage)."""
    rng = random.Random(f"zaya_rt.demo.sft:{seed}" + (f":{part}" if part else ""))
    chats = []
    for i in range(count):
        p = make_problem("train", seed, 10**7 * (part + 1) + i, steps=_steps(rng, steps), modulus=modulus)
        if rng.random() < aggregate_share:
            wrong = rng.uniform(0.2, 0.9)
            candidates = [corrupt(p, rng) if rng.random() < wrong else solution(p) for _ in range(tails)]
            user = aggregate_text(p, candidates)
        else:
            user = rollout_text(p)
        chats.append([{"role": "user", "content": user}, {"role": "assistant", "content": solution(p)}])
    return chats


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> str:
    """Writes rows as JSON lines; returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return os.fspath(path)

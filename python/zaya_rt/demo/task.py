"""The demo's verifiable reasoning task: a chain of modular arithmetic steps with a worked solution.

A problem starts from a number and applies `steps` operations (`+k` or `*k`) modulo `modulus`, each named by a
letter (`A*5 B+7 C*9`); the solution writes one line per step that first restates the step as the problem names
it, then applies it (`B+7: 3+7=10`, every value already reduced), and ends with `\\boxed{answer}`. The restated
step makes reading the problem a copy of the tokens after the step's letter, which a small model learns quickly. Problems come
from a seed (the same seed and split give the same problems); the training and evaluation splits draw from
different seed namespaces, so evaluation problems are never training problems' seeds. `check` is exact: it
recomputes the answer, it never trusts a candidate. `corrupt` writes the kind of wrong solution a small model
writes: one step gets a wrong result and every later step carries the error forward correctly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from zaya_rt.rsa.answers import extract_boxed

OPS = ("+", "*")
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # step i is named LABELS[i]
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Problem:
    """start: the first value; ops: (op, operand) pairs with op in OPS; modulus: every value lives in [0, modulus)."""

    start: int
    ops: tuple[tuple[str, int], ...]
    modulus: int

    def text(self) -> str:
        """The problem statement, e.g. 'Work modulo 23. Start with 14, then apply:\nA*5\nB+17\nC*9' (one
        step a line, so a step's letter is the same token in the problem and in the solution)."""
        steps = "".join(f"\n{LABELS[i]}{op}{k}" for i, (op, k) in enumerate(self.ops))
        return f"Work modulo {self.modulus}. Start with {self.start}, then apply:{steps}"

    def values(self) -> list[int]:
        """The running value after each step (len(ops) numbers)."""
        out, x = [], self.start
        for op, k in self.ops:
            x = apply(x, op, k, self.modulus)
            out.append(x)
        return out

    def answer(self) -> str:
        return str(self.values()[-1])


def apply(x: int, op: str, k: int, modulus: int) -> int:
    """(x op k) mod modulus for op in OPS."""
    if op == "+":
        return (x + k) % modulus
    if op == "*":
        return (x * k) % modulus
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _rng(split: str, seed: int, index: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"seed and index must be ints, got {seed!r}, {index!r}")
    return random.Random(f"zaya_rt.demo:{split}:{seed}:{index}")


def make_problem(split: str, seed: int, index: int, *, steps: int, modulus: int = 23) -> Problem:
    """Problem `index` of `split` ('train' or 'eval') under `seed`, with `steps` operations modulo `modulus`.
    Operands of `*` are 2..modulus-1 and of `+` 1..modulus-1, so no step is a no-op."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= len(LABELS):
        raise ValueError(f"steps must be an int in [1, {len(LABELS)}], got {steps!r}")
    if not isinstance(modulus, int) or isinstance(modulus, bool) or modulus < 3:
        raise ValueError(f"modulus must be an int >= 3, got {modulus!r}")
    rng = _rng(split, seed, index)
    start = rng.randrange(modulus)
    ops = []
    for _ in range(steps):
        op = rng.choice(OPS)
        ops.append((op, rng.randrange(2 if op == "*" else 1, modulus)))
    return Problem(start, tuple(ops), modulus)


def make_problems(split: str, seed: int, count: int, *, steps: int, modulus: int = 23) -> list[Problem]:
    """`count` problems of `split` under `seed` (problem i is make_problem(split, seed, i, ...))."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    return [make_problem(split, seed, i, steps=steps, modulus=modulus) for i in range(count)]


def solution(problem: Problem, values: list[int] | None = None) -> str:
    """The worked solution: one line `L op k: a op k=b` per step (L its letter), then `\\boxed{final}`. values: the running values to
    write (default: the right ones); a wrong list gives a solution whose steps follow it."""
    values = problem.values() if values is None else values
    lines, x = [], problem.start
    for i, ((op, k), y) in enumerate(zip(problem.ops, values, strict=True)):
        lines.append(f"{LABELS[i]}{op}{k}: {x}{op}{k}={y}")
        x = y
    return "\n".join(lines) + f"\nSo the answer is \\boxed{{{x}}}."


def corrupt(problem: Problem, rng: random.Random) -> str:
    """A wrong solution: a random step gets a wrong result (uniform over the other residues), later steps
    are computed correctly from it, so the final answer is usually, not always, wrong."""
    values = problem.values()
    bad = rng.randrange(len(values))
    x = problem.start if bad == 0 else values[bad - 1]
    wrong = rng.choice([v for v in range(problem.modulus) if v != values[bad]])
    out = values[:bad] + [wrong]
    x = wrong
    for op, k in problem.ops[bad + 1:]:
        x = apply(x, op, k, problem.modulus)
        out.append(x)
    return solution(problem, out)


def check(problem: Problem, answer: str | None) -> bool:
    """Whether `answer` (a string, e.g. from extract_boxed) is the problem's answer, recomputed here."""
    if answer is None:
        return False
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str or None, got {type(answer).__name__}")
    return answer.strip() == problem.answer()


def check_text(problem: Problem, text: str) -> bool:
    """Whether the last \\boxed{} of a generated text holds the right answer."""
    return check(problem, extract_boxed(text))

"""Reward checkers: a completion's text -> a reward in [0, 1].

- `ExactAnswerReward(gold)`: 1 when the last `\\boxed{}` of the completion equals gold after normalisation
  (`zaya_rt.rsa.answers.extract_boxed` / `ExactMatch`).
- `MathVerifyReward(gold)`: the same answer compared with math-verify (`zaya_rt.rsa.answers.MathVerify`: a
  worker process with its own deadline; optional extra `zaya_rt[math]`). An overrun scores 0.
- `CodeReward(tests)`: the completion's last ```python block (or the whole text) runs once per test in the
  sandbox (`zaya_rt.train.rl.sandbox`); the reward is the share of tests whose stdout matches (whitespace at
  line ends ignored). A program that loops, eats memory or floods its output is killed and fails its test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from zaya_rt.rsa.answers import ExactMatch, MathVerify, extract_boxed
from zaya_rt.train.rl.sandbox import run_sandboxed

REWARD_KINDS = ("exact", "math-verify", "code")
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


class ExactAnswerReward:
    """1.0 when the completion's last \\boxed{} answer equals `gold` (normalised strings), else 0.0."""

    def __init__(self, gold) -> None:
        self.check = ExactMatch(gold)

    def __call__(self, completion: str) -> float:
        return float(self.check(extract_boxed(completion)))


class MathVerifyReward:
    """1.0 when math-verify finds the completion's last \\boxed{} answer equal to `gold` within `timeout`
    seconds, else 0.0."""

    def __init__(self, gold, *, timeout: float = 5.0) -> None:
        self.check = MathVerify(gold, timeout=timeout)

    def __call__(self, completion: str) -> float:
        return float(self.check(extract_boxed(completion)))


def extract_code(completion: str) -> str:
    """The last ```python (or bare ```) fenced block of a completion, else the whole text."""
    if not isinstance(completion, str):
        raise TypeError(f"extract_code needs a str, got {type(completion).__name__}")
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else completion


def _same_output(got: str, want: str) -> bool:
    lines = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return lines(got) == lines(want)


class CodeReward:
    """Share of `tests` ((stdin, expected stdout) pairs) the completion's program passes in the sandbox, each
    run with time_limit seconds, memory_mb of address space and output_bytes of output."""

    def __init__(self, tests: Sequence[tuple[str, str]], *, time_limit: float = 5.0, memory_mb: int = 512,
                 output_bytes: int = 1 << 20) -> None:
        tests = list(tests)
        if not tests:
            raise ValueError("CodeReward: tests must hold at least one (stdin, expected stdout) pair")
        for t in tests:
            if not (isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t)):
                raise TypeError(f"CodeReward: each test must be a (stdin, expected stdout) pair of str, got {t!r}")
        self.tests = [tuple(t) for t in tests]
        self.limits = {"time_limit": time_limit, "memory_mb": memory_mb, "output_bytes": output_bytes}

    def __call__(self, completion: str) -> float:
        code = extract_code(completion)
        passed = 0
        for stdin, want in self.tests:
            result = run_sandboxed(code, stdin=stdin, **self.limits)
            passed += result.ok and _same_output(result.stdout, want)
        return passed / len(self.tests)


def make_reward(kind: str, gold):
    """The checker of `kind` ("exact", "math-verify", "code") for one problem's gold answer (for "code": a list
    of (stdin, expected stdout) pairs)."""
    if kind == "exact":
        return ExactAnswerReward(gold)
    if kind == "math-verify":
        return MathVerifyReward(gold)
    if kind == "code":
        return CodeReward(gold)
    raise ValueError(f"reward kind must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")

"""Answers: the last `\\boxed{...}` of a text, and checkers that say whether an answer is right.

A checker is a callable answer -> bool with `equivalent(a, b) -> bool` (used to cluster answers for the
majority vote). `ExactMatch(gold)` compares normalised strings; `MathVerify(gold)` uses the `math-verify`
package (`pip install zaya_rt[math]`), gold first as its docs ask. math-verify's own timeouts use signals,
which only work on a main thread, so it runs with them off in a worker process whose deadline is enforced
from outside: a check that overruns kills the worker and counts as wrong.
"""

from __future__ import annotations

import multiprocessing
import re
import threading

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str | None) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` in text, braces matched (nested ones kept);
    None if there is none or the last one never closes."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed needs a str, got {type(text).__name__}")
    for match in reversed(list(_BOX.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{" and text[i - 1] != "\\":
                depth += 1
            elif ch == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        return None
    return None


def normalize_answer(answer: str) -> str:
    """Whitespace removed, surrounding `$` and a trailing period dropped: '\\frac{1}{2} ' -> '\\frac{1}{2}'."""
    s = "".join(answer.split()).strip("$")
    return s[:-1] if s.endswith(".") else s


class ExactMatch:
    """Right when the normalised answer equals the normalised gold answer."""

    def __init__(self, gold) -> None:
        if gold is None:
            raise ValueError("ExactMatch: gold answer is None")
        self.gold = str(gold)

    def __call__(self, answer: str | None) -> bool:
        return answer is not None and self.equivalent(self.gold, answer)

    @staticmethod
    def equivalent(a: str | None, b: str | None) -> bool:
        return a is not None and b is not None and normalize_answer(a) == normalize_answer(b)


def _math_verify(gold: str, answer: str) -> bool:
    """In the worker: math-verify with its signal timeouts off (the parent's deadline bounds the call)."""
    from math_verify import parse, verify

    return bool(verify(parse(f"\\boxed{{{gold}}}", parsing_timeout=None),
                       parse(f"\\boxed{{{answer}}}", parsing_timeout=None), timeout_seconds=None))


def _load_math_verify() -> None:
    """In a new worker: imports math-verify and runs one check, so its lazy set-up is not timed."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
    _math_verify("1", "1")


class _Worker:
    """One spawned worker process shared by every MathVerify; restarted after a deadline kill. The deadline
    covers the call only: a new worker first imports math-verify (seconds) with no deadline."""

    _lock = threading.Lock()
    _pool = None

    @classmethod
    def call(cls, fn, args: tuple, timeout: float) -> tuple[bool, object]:
        """(True, fn(*args)) run in the worker, or (False, None) if it overran `timeout` seconds (the worker
        is then killed)."""
        with cls._lock:
            if cls._pool is None:
                cls._pool = multiprocessing.get_context("spawn").Pool(1)
                cls._pool.apply(_load_math_verify)
            pending = cls._pool.apply_async(fn, args)
            try:
                return True, pending.get(timeout)
            except multiprocessing.TimeoutError:
                cls._pool.terminate()
                cls._pool = None
                return False, None


class MathVerify:
    """Right when math-verify says the answer equals gold; each check has `timeout` seconds (then wrong)."""

    def __init__(self, gold, *, timeout: float = 5.0) -> None:
        try:
            import math_verify  # noqa: F401
        except ImportError as exc:
            raise ImportError("MathVerify needs the math-verify package: pip install zaya_rt[math]") from exc
        if gold is None:
            raise ValueError("MathVerify: gold answer is None")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise ValueError(f"MathVerify: timeout must be a positive number of seconds, got {timeout!r}")
        self.gold, self.timeout = str(gold), float(timeout)

    def __call__(self, answer: str | None) -> bool:
        return self.equivalent(self.gold, answer)

    def equivalent(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        if normalize_answer(a) == normalize_answer(b):
            return True
        done, same = _Worker.call(_math_verify, (a, b), self.timeout)
        return done and bool(same)


def as_checker(check):
    """A checker from `check`: a checker object as is, a plain callable (equivalence: exact match), or a gold
    answer (str or number) -> ExactMatch."""
    if isinstance(check, (str, int, float)) and not isinstance(check, bool):
        return ExactMatch(check)
    if callable(check):
        if callable(getattr(check, "equivalent", None)):
            return check
        wrapped = _Callable(check)
        return wrapped
    raise TypeError(f"check must be a gold answer or a callable answer -> bool, got {type(check).__name__}")


class _Callable:
    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, answer):
        return answer is not None and bool(self.fn(answer))

    equivalent = staticmethod(ExactMatch.equivalent)

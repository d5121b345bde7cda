"""Answer extraction (last \\boxed / \\fbox, braces matched) and the checkers: exact match, and math-verify run
in a worker process whose deadline holds from any thread."""

import threading
import time

import pytest

from zaya_rt.rsa import ExactMatch, MathVerify, extract_boxed
from zaya_rt.rsa.answers import _Worker, as_checker


@pytest.mark.parametrize("text, want", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{ {a}_{b} }", "{a}_{b}"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed {7}", "7"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{3} and an unclosed \\boxed{4", None),
    ("no box here: {5}", None),
    ("", None),
    (None, None),
    ("\\boxed{}", ""),
])
def test_extract_boxed(text, want):
    assert extract_boxed(text) == want


def test_extract_boxed_rejects_non_text():
    with pytest.raises(TypeError, match="str"):
        extract_boxed(42)


def test_exact_match():
    check = ExactMatch("\\frac{1}{2}")
    assert check(" \\frac{1}{2} ") and check("$\\frac{1} {2}$") and not check("0.5") and not check(None)
    assert as_checker(7)("7") and not as_checker("7")("8")
    with pytest.raises(ValueError, match="gold"):
        ExactMatch(None)
    with pytest.raises(TypeError, match="check"):
        as_checker(None)


def test_math_verify_equivalence_and_off_main_thread():
    check = MathVerify("\\frac{1}{2}", timeout=60)
    assert check("0.5") and check("1/2") and not check("0.6") and not check(None)
    seen = []
    worker = threading.Thread(target=lambda: seen.append((check("2/4"), check("3"))))
    worker.start()
    worker.join(120)
    assert seen == [(True, False)]


def test_math_verify_deadline_kills_the_worker_and_recovers():
    assert MathVerify("1", timeout=60)("1.0")  # a warm worker
    start = time.monotonic()
    assert _Worker.call(time.sleep, (120,), timeout=0.5) == (False, None)  # a check that hangs
    assert time.monotonic() - start < 60 and _Worker._pool is None  # killed, not awaited
    assert _Worker.call(pow, (2, 10), timeout=60) == (True, 1024)  # a fresh worker
    assert MathVerify("1", timeout=60)("1.0") and not MathVerify("1", timeout=60)("2")


def test_math_verify_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        MathVerify("1", timeout=0)
    with pytest.raises(ValueError, match="gold"):
        MathVerify(None)

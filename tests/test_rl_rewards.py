"""Reward checkers: exact answers, math-verify (worker process with a deadline) and the code sandbox, whose
limits are short here so a looping, a memory-hungry and a flooding program are killed within seconds."""

import time

import pytest

from zaya_rt.train.rl.rewards import (CodeReward, ExactAnswerReward, MathVerifyReward, extract_code, make_reward)
from zaya_rt.train.rl.sandbox import run_sandboxed

LIMITS = {"time_limit": 2.0, "memory_mb": 256, "output_bytes": 4096}


def test_exact_answer_reward():
    r = ExactAnswerReward("12")
    assert r("so the sum is \\boxed{ 12 }.") == 1.0
    assert r("first \\boxed{12} then \\boxed{13}") == 0.0  # the last box counts
    assert r("12 without a box") == 0.0
    assert make_reward("exact", 3)("\\boxed{3}") == 1.0
    with pytest.raises(ValueError, match="reward kind"):
        make_reward("regex", "3")


def test_math_verify_reward():
    pytest.importorskip("math_verify")
    r = MathVerifyReward("\\frac{1}{2}")
    assert r("the answer is \\boxed{0.5}") == 1.0
    assert r("the answer is \\boxed{1/3}") == 0.0
    assert r("no box") == 0.0


def test_sandbox_runs_a_program():
    result = run_sandboxed("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="2 3 4",
                           **LIMITS)
    assert result.ok and result.reason == "ok" and result.stdout == "9\n"
    bad = run_sandboxed("raise SystemExit(3)", **LIMITS)
    assert not bad.ok and bad.reason == "exit 3"


def test_sandbox_kills_a_loop():
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass\n", **LIMITS)
    assert not result.ok and result.reason in ("timeout", "signal SIGXCPU", "signal SIGKILL")
    assert time.monotonic() - start < 10


def test_sandbox_kills_a_sleeping_child_process_group():
    # the wall-clock deadline covers programs that use no CPU, and their children
    code = "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n" \
           "import time\ntime.sleep(60)\n"
    start = time.monotonic()
    result = run_sandboxed(code, **LIMITS)
    assert not result.ok and result.reason == "timeout" and time.monotonic() - start < 10


def test_sandbox_stops_a_memory_hog():
    result = run_sandboxed("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n", **LIMITS)
    assert not result.ok and result.reason in ("memory", "signal SIGKILL", "signal SIGSEGV")


def test_sandbox_caps_output():
    result = run_sandboxed("while True:\n    print('x' * 1000)\n", **LIMITS)
    assert not result.ok and len(result.stdout) <= LIMITS["output_bytes"]


def test_sandbox_bad_arguments():
    with pytest.raises(TypeError, match="code"):
        run_sandboxed(b"print(1)")
    with pytest.raises(ValueError, match="time_limit"):
        run_sandboxed("print(1)", time_limit=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_sandboxed("print(1)", memory_mb=-1)


def test_code_reward_scores_tests_and_fails_runaways():
    tests = [("3\n", "9\n"), ("5\n", "25\n"), ("0\n", "0\n")]
    good = "Here:\n```python\nn = int(input())\nprint(n * n)\n```\n"
    assert CodeReward(tests, **LIMITS)(good) == 1.0
    wrong = "```python\nn = int(input())\nprint(n * n if n != 5 else 24)\n```"
    assert CodeReward(tests, **LIMITS)(wrong) == pytest.approx(2 / 3)
    assert CodeReward(tests[:1], **LIMITS)("```python\nwhile True: pass\n```") == 0.0
    assert CodeReward(tests[:1], **LIMITS)("```python\nx = bytearray(2**40)\n```") == 0.0
    assert extract_code("no fence, print(1)") == "no fence, print(1)"
    with pytest.raises(ValueError, match="tests"):
        CodeReward([])
    with pytest.raises(TypeError, match="pair"):
        CodeReward([("1",)])

"""Answer-preserving trimming of chat samples under a token budget (SPEC section 7).

An assistant message's content is `<think>REASONING</think>ANSWER` (the reasoning block is optional). Prompts
(every non-assistant message) and answers are never altered; only reasoning is dropped or shortened.
"""

from __future__ import annotations

from typing import Callable

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def split_reasoning(content: str) -> tuple[str | None, str]:
    """(reasoning, answer) of an assistant content; reasoning is None when there is no closed think block."""
    if content.startswith(THINK_OPEN):
        end = content.find(THINK_CLOSE, len(THINK_OPEN))
        if end >= 0:
            return content[len(THINK_OPEN):end], content[end + len(THINK_CLOSE):]
    return None, content


def _with_reasoning(message: dict, reasoning: str | None, answer: str) -> dict:
    content = answer if reasoning is None else f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{answer}"
    return {**message, "content": content}


def _check_args(messages, budget, count_tokens) -> None:
    if not isinstance(messages, list):
        raise TypeError(f"trim_to_budget: messages must be a list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"trim_to_budget: messages[{i}] must be a dict with str 'role' and 'content', got {m!r}")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"trim_to_budget: budget must be an int, got {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"trim_to_budget: budget must be positive, got {budget}")
    if not callable(count_tokens):
        raise TypeError("trim_to_budget: count_tokens must be callable (messages -> int)")


def trim_to_budget(
    messages: list[dict], budget: int, count_tokens: Callable[[list[dict]], int]
) -> list[dict] | None:
    """Fits a chat sample into `budget` tokens as counted by `count_tokens(messages) -> int`.

    In order: a sample that fits is returned unchanged (the same list); else the reasoning of earlier assistant
    turns is dropped, oldest first, answers kept; else the end of the last assistant turn's reasoning is cut,
    keeping its longest start (in characters) that fits and the full answer; None when the prompts and answers
    alone exceed the budget. The input list and its dicts are never modified.
    """
    _check_args(messages, budget, count_tokens)
    if count_tokens(messages) <= budget:
        return messages
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        return None
    *earlier, last = assistant

    out = list(messages)
    for i in earlier:
        reasoning, answer = split_reasoning(out[i]["content"])
        if reasoning is None:
            continue
        out[i] = _with_reasoning(out[i], None, answer)
        if count_tokens(out) <= budget:
            return out

    reasoning, answer = split_reasoning(out[last]["content"])
    bare = list(out)
    bare[last] = _with_reasoning(out[last], None, answer)
    if count_tokens(bare) > budget:
        return None  # prompts and answers alone do not fit
    if reasoning is None:
        return bare

    def fits(keep: int) -> bool:
        trial = list(out)
        trial[last] = _with_reasoning(out[last], reasoning[:keep], answer)
        return count_tokens(trial) <= budget

    if not fits(0):
        return bare  # even empty think tags do not fit: the reasoning block goes entirely
    lo, hi = 0, len(reasoning)  # fits(lo) holds; the full reasoning (hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    out[last] = _with_reasoning(out[last], reasoning[:lo], answer)
    return out

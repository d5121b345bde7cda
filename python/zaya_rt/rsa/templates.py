"""Prompt templates of Markovian RSA: the rollout prompt of round 0 and the aggregation prompt of rounds 1..T.

Templates return token ids. Tails enter the aggregation prompt as the exact ids the model generated; only the
template text around them is encoded (once per distinct text, then cached), so nothing drifts through a
decode/re-encode round trip. The default wording follows the structure of the RSA authors' reference prompt
(`aggregate_prompt` in their eval_loop.py): a header saying the candidates may be wrong and their useful ideas
should be combined, `Problem:`, one `---- Solution i ----` block per candidate and a closing instruction with
`\\boxed{}`; C = 1 uses a refine wording. A tokenizer with a chat template wraps the text as one user turn.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence

_SENTINEL = "\x00ZAYA_RSA_USER_TURN\x00"


class RSATemplate(ABC):
    """Builds the prompt ids of one candidate. Subclass it for a custom wording or format."""

    @abstractmethod
    def rollout(self, problem: str) -> list[int]:
        """Prompt ids of a round-0 rollout."""

    @abstractmethod
    def aggregate(self, problem: str, tails: Sequence[Sequence[int]]) -> list[int]:
        """Prompt ids of an aggregation over `tails` (C lists of generated token ids, in order)."""


def check_tokenizer(tokenizer) -> None:
    """TypeError unless `tokenizer` has encode(text) -> ids and decode(ids) -> text."""
    for name in ("encode", "decode"):
        if not callable(getattr(tokenizer, name, None)):
            raise TypeError(f"tokenizer must have a callable {name}() method (got {type(tokenizer).__name__}); "
                            "pass e.g. zaya_rt.runtime.load_tokenizer(model_dir) or a transformers tokenizer")


class TextEncoder:
    """Encodes template text pieces with a cache; applies the tokenizer's chat template when it has one.

    A prompt is a list of pieces: str (template text) or list[int] (ids spliced in as they are). The text
    pieces are wrapped in one user turn (chat template) and encoded separately; only the first may get the
    tokenizer's special tokens (BOS), and only when no chat template supplies them.
    """

    def __init__(self, tokenizer, *, use_chat_template: bool | None = None) -> None:
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        has_chat = bool(getattr(tokenizer, "chat_template", None)) and callable(
            getattr(tokenizer, "apply_chat_template", None))
        self.chat = has_chat if use_chat_template is None else use_chat_template
        if self.chat and not has_chat:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        self.before, self.after = "", ""
        if self.chat:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                                     add_generation_prompt=True)
            if not isinstance(rendered, str) or rendered.count(_SENTINEL) != 1:
                raise ValueError("the tokenizer's chat template did not render the user turn as text")
            self.before, self.after = rendered.split(_SENTINEL)
        try:
            params = inspect.signature(tokenizer.encode).parameters
            self._kw = "add_special_tokens" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            self._kw = False
        self._cache: dict[tuple[str, bool], list[int]] = {}

    def encode(self, text: str, *, specials: bool) -> list[int]:
        """Ids of text (cached); specials: let the tokenizer add its special tokens (BOS)."""
        key = (text, specials)
        if key not in self._cache:
            ids = self.tokenizer.encode(text, add_special_tokens=specials) if self._kw else self.tokenizer.encode(text)
            ids = list(ids)
            if any(not isinstance(t, int) or isinstance(t, bool) for t in ids):
                raise TypeError("tokenizer.encode must return a list of int token ids")
            self._cache[key] = ids
        return list(self._cache[key])

    def render(self, pieces: Sequence[str | Sequence[int]]) -> list[int]:
        """Prompt ids of the pieces, wrapped in the chat turn."""
        pieces = list(pieces)
        if not pieces or not isinstance(pieces[0], str) or not isinstance(pieces[-1], str):
            raise ValueError("a template's pieces must start and end with text")
        pieces[0] = self.before + pieces[0]
        pieces[-1] = pieces[-1] + self.after
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if isinstance(piece, str):
                ids += self.encode(piece, specials=(i == 0 and not self.chat))
            else:
                ids += [int(t) for t in piece]
        return ids


class DefaultTemplate(RSATemplate):
    """The RSA reference prompt's structure for math: answers in `\\boxed{}`."""

    def __init__(self, tokenizer, *, use_chat_template: bool | None = None) -> None:
        self.text = TextEncoder(tokenizer, use_chat_template=use_chat_template)

    def rollout(self, problem: str) -> list[int]:
        return self.text.render([
            f"{problem.strip()}\n\nReason step by step, and put your final answer within \\boxed{{}}."])

    def aggregate(self, problem: str, tails: Sequence[Sequence[int]]) -> list[int]:
        if len(tails) == 0:
            raise ValueError("aggregate needs at least one tail")
        q = problem.strip()
        if len(tails) == 1:
            return self.text.render([
                "You are given a problem and one candidate solution, which may be incomplete or wrong. "
                "Refine it into a better solution; if it is wrong throughout, try a different approach. "
                "End with the final answer in \\boxed{}.\n\n"
                f"Problem:\n{q}\n\nCandidate solution (may contain mistakes):\n---- Candidate ----\n",
                tails[0],
                "\n\nNow refine the candidate into an improved solution. Reason clearly and give the final "
                "answer in \\boxed{}."])
        pieces: list[str | Sequence[int]] = [
            f"You are given a problem and {len(tails)} candidate solutions. Some of them may be incomplete or "
            "wrong. Combine their useful ideas into one high-quality solution; where they disagree, decide "
            "which reasoning is right, and if all of them are wrong, try a different approach. End with the "
            "final answer in \\boxed{}.\n\n"
            f"Problem:\n{q}\n\nCandidate solutions (may contain mistakes):\n---- Solution 1 ----\n"]
        for i, tail in enumerate(tails):
            if i:
                pieces.append(f"\n\n---- Solution {i + 1} ----\n")
            pieces.append(tail)
        pieces.append("\n\nNow write one improved solution. Reason clearly and give the final answer in "
                      "\\boxed{}.")
        return self.text.render(pieces)

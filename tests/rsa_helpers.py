"""Scripted pieces for the Markovian RSA tests: a tokenizer (bytes plus opaque ids, one EOS) and a fake engine
whose traces are seeded random ids, so every tail is a distinct id sequence that can be found in a prompt."""

from __future__ import annotations

import random

EOS = 3


class ScriptTokenizer:
    """ids < 256: UTF-8 bytes; ids >= 256: opaque words '<id>'; EOS = 3."""

    eos_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return "".join(chr(i) if i < 128 else f"<{i}>" for i in ids)


class ChatTokenizer(ScriptTokenizer):
    """ScriptTokenizer with a chat template (one user turn, then the assistant's header)."""

    chat_template = "<u>{content}</u><a>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert not tokenize and add_generation_prompt and len(messages) == 1
        return self.chat_template.format(content=messages[0]["content"])


class FakeEngine:
    """generate(): per prompt, a trace of seeded random ids in [256, 50000) (lengths between budget // 2 and
    budget), ending in EOS for odd seeds; every third trace of 20 or more ids holds the bytes of '\\boxed{7}'
after its first id (so every tail still ends in random ids and differs from every other). Records
    every call's prompts and params."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], list]] = []

    def generate(self, prompts, params):
        self.calls.append(([list(p) for p in prompts], list(params)))
        out = []
        for p in params:
            rng = random.Random(p.seed)
            n = rng.randint(max(1, p.max_new_tokens // 2), p.max_new_tokens)
            ids = [rng.randrange(256, 50000) for _ in range(n)]
            if p.seed % 3 == 0 and n >= 20:
                ids[1:10] = list(b"\\boxed{7}")
            if p.seed % 2 == 1:
                ids[-1] = EOS
            out.append(ids)
        return out


def find(haystack: list[int], needle: list[int]) -> int:
    """Number of places needle occurs in haystack as a contiguous id sequence."""
    m = len(needle)
    return sum(haystack[i:i + m] == needle for i in range(len(haystack) - m + 1))

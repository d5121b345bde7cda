"""Training data: jsonl samples -> token ids with a loss mask -> packed windows with document boundaries.

Each jsonl line is one object with exactly one of
  {"text": str}              pretraining; cut into window-sized pieces, loss on every token;
  {"messages": [...]}        SFT chat ({"role", "content"} dicts); trimmed to the SFT budget with
                             `trim_to_budget`, loss only on assistant tokens;
  {"input_ids": [int, ...]}  pre-tokenised; cut like text, loss on every token.
Other keys (ids, sources) are ignored. Chat messages are rendered as `<|ROLE|>\\n` CONTENT `<|end|>\\n`; the
assistant's CONTENT and `<|end|>` carry the loss, headers and other roles do not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from zaya_rt.jsonl import read_jsonl
from zaya_rt.runtime.tokenizer import ByteTokenizer, HFTokenizer
from zaya_rt.train.pack import pack_indices
from zaya_rt.train.trim import trim_to_budget

IGNORE_INDEX = -100
END_OF_MESSAGE = "<|end|>\n"
_KINDS = ("text", "messages", "input_ids")


def load_tokenizer(spec: str | os.PathLike):
    """`"bytes"` -> the embedded byte-level tokenizer (ids 0..255); else a tokenizer.json path (or its folder)."""
    if spec == "bytes":
        return ByteTokenizer()
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"tokenizer must be 'bytes' or a tokenizer.json path, got {type(spec).__name__}")
    return HFTokenizer(spec)


@dataclass
class Sample:
    """One document: token ids and, per token, whether predicting it carries loss."""

    input_ids: list[int]
    loss_mask: list[bool]


@dataclass
class Window:
    """A packed window of T tokens: input_ids [T] int64; labels [T] int64 (the next token inside the same
    document where it carries loss, else IGNORE_INDEX); cu_seqlens [docs + 1] int32 document boundaries."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    cu_seqlens: torch.Tensor


def chat_text(messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """The chat as text in this module's format, ending with an open assistant header when add_generation_prompt
    (what a model SFT-trained on `render_chat` samples continue from)."""
    text = "".join(f"<|{m['role']}|>\n{m['content']}{END_OF_MESSAGE}" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


def render_chat(messages: list[dict], tokenizer) -> Sample:
    """Token ids of a chat with the loss mask set on assistant contents and their end markers."""
    ids: list[int] = []
    mask: list[bool] = []
    for m in messages:
        header = tokenizer.encode(f"<|{m['role']}|>\n")
        body = tokenizer.encode(m["content"] + END_OF_MESSAGE)
        ids += header + body
        mask += [False] * len(header) + [m["role"] == "assistant"] * len(body)
    return Sample(ids, mask)


def _check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: 'messages' has no assistant message, so nothing to learn from")


def _pieces(ids: list[int], window: int) -> list[Sample]:
    return [Sample(ids[s:s + window], [True] * len(ids[s:s + window])) for s in range(0, len(ids), window)]


def load_samples(path, tokenizer, window: int, sft_budget: int | None = None) -> tuple[list[Sample], int]:
    """Reads a jsonl file into samples of at most `window` tokens. Returns (samples, number of SFT samples
    dropped because their prompts and answers alone exceed the budget). sft_budget defaults to the window."""
    budget = window if sft_budget is None else sft_budget
    if budget > window:
        raise ValueError(f"sft_budget ({budget}) must not exceed the window ({window})")
    vocab = getattr(tokenizer, "vocab_size", None)
    samples: list[Sample] = []
    dropped = 0
    for line_no, obj in read_jsonl(path):
        where = f"{path}: line {line_no}"
        kinds = [k for k in _KINDS if k in obj]
        if len(kinds) != 1:
            raise ValueError(f"{where}: expected exactly one of {', '.join(_KINDS)}, got keys {sorted(obj)}")
        kind, value = kinds[0], obj[kinds[0]]
        if kind == "text":
            if not isinstance(value, str):
                raise ValueError(f"{where}: 'text' must be a string")
            samples += _pieces(tokenizer.encode(value), window)
        elif kind == "input_ids":
            if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
                raise ValueError(f"{where}: 'input_ids' must be a list of ints")
            bad = [t for t in value if t < 0 or (vocab is not None and t >= vocab)]
            if bad:
                raise ValueError(f"{where}: token id {bad[0]} is outside the vocabulary [0, {vocab})")
            samples += _pieces(value, window)
        else:
            _check_messages(value, where)
            trimmed = trim_to_budget(value, budget, lambda msgs: len(render_chat(msgs, tokenizer).input_ids))
            if trimmed is None:
                dropped += 1
                continue
            samples.append(render_chat(trimmed, tokenizer))
    return [s for s in samples if s.input_ids], dropped


def pack_windows(samples: list[Sample], window: int) -> list[Window]:
    """Packs samples best-fit decreasing (`pack_indices`) into windows with cu_seqlens and next-token labels
    that never cross a document boundary."""
    windows = []
    for members in pack_indices([len(s.input_ids) for s in samples], window):
        ids: list[int] = []
        labels: list[int] = []
        cu = [0]
        for i in members:
            s = samples[i]
            ids += s.input_ids
            labels += [t if keep else IGNORE_INDEX for t, keep in zip(s.input_ids[1:], s.loss_mask[1:])]
            labels.append(IGNORE_INDEX)  # a document's last token predicts nothing
            cu.append(len(ids))
        windows.append(Window(
            torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64),
            torch.tensor(cu, dtype=torch.int32),
        ))
    return windows

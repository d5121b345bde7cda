"""Tokenizers: a checkpoint's `tokenizer.json` through Hugging Face `tokenizers`, or bytes for the tiny model."""

from __future__ import annotations

import os


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 (the embedded tiny model's vocabulary)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizer.json` loaded with the `tokenizers` package (no transformers needed)."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("reading tokenizer.json needs the `tokenizers` package (pip install tokenizers)") from exc
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"no tokenizer.json at {path}")
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as exc:
            raise ValueError(f"{path}: not a valid tokenizer.json ({exc})") from None
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def load_tokenizer(model_dir: str | os.PathLike | None):
    """The tokenizer for a checkpoint directory (its tokenizer.json), or ByteTokenizer for None (tiny model)."""
    return ByteTokenizer() if model_dir is None else HFTokenizer(model_dir)


class StreamDecoder:
    """Turns a growing list of ids into printable text increments (holds back incomplete characters)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[len(self.emitted):], text
        return new

"""The demo model's tokenizer: a BPE trained with Hugging Face `tokenizers` on the demo's own texts.

Pre-tokens are an operation with its operand (`*5`, `+10`: one token each once BPE has merged them), digit runs,
runs of letters and spaces, and single other characters, so frequent template
phrases and numbers become single tokens while every boundary where RSA splices generated ids into a prompt
(newlines, punctuation) is a pre-token boundary: encoding pieces one by one gives the ids of the whole text.
`DemoTokenizer` adds what Markovian RSA and the trainer's chat format need: `eos_token_id` (`<|end|>`) and a
chat template rendering a user turn as zaya_rt.train.data does (`<|user|>\\n CONTENT <|end|>\\n<|assistant|>\\n`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from zaya_rt.runtime.tokenizer import HFTokenizer
from zaya_rt.train.data import chat_text

SPECIAL_TOKENS = ("<|end|>", "<|user|>", "<|assistant|>")
_PRETOKENS = r"[+*]\d+|\d+|[A-Za-z ]+|\s|[^\sA-Za-z\d]"


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str | os.PathLike) -> str:
    """Trains the BPE on `texts` (its alphabet is exactly their characters) and saves tokenizer.json at `path`;
    returns the path."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PRETOKENS), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(os.fspath(path))
    return os.fspath(path)


class DemoTokenizer(HFTokenizer):
    """A demo tokenizer.json with the chat format of zaya_rt.train.data and `<|end|>` as end of turn."""

    chat_template = "zaya_rt.train.data chat format"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        missing = [t for t in SPECIAL_TOKENS if self._tok.token_to_id(t) is None]
        if missing:
            raise ValueError(f"{path}: not a demo tokenizer (no {', '.join(missing)} token)")
        self.eos_token_id = self._tok.token_to_id("<|end|>")

    def apply_chat_template(self, messages: list[dict], *, tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        """The chat as text in zaya_rt.train.data's format (only tokenize=False is offered)."""
        if tokenize:
            raise ValueError("DemoTokenizer.apply_chat_template: only tokenize=False is offered")
        return chat_text(messages, add_generation_prompt=add_generation_prompt)

"""The demo model's recipe: task settings, model shape, the two training stages and the evaluation defaults.

`RECIPE` is what `zaya-rt demo --train` runs and what the shipped model was built with; tests shrink it with
dataclasses.replace. The recipe is saved as demo.json beside the model, so an evaluation uses the task settings
the model was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Stage:
    """One `zaya-rt train` stage: optimizer steps of `batch_windows` windows of `window` tokens."""

    steps: int
    batch_windows: int
    window: int
    lr: float
    warmup_steps: int
    decay_steps: int


@dataclass(frozen=True)
class Recipe:
    modulus: int = 11
    train_steps: tuple[int, int] = (1, 6)  # operations per training problem (inclusive range)
    seed: int = 0  # training data, tokenizer and initialisation
    vocab_size: int = 512  # a cap: the BPE runs out of merges near 380 (modulus 11)
    model: dict = field(default_factory=lambda: dict(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        moe_intermediate_size=384, num_experts=4, router_hidden_size=64, max_position_embeddings=1024))
    pretrain: Stage = Stage(steps=150, batch_windows=4, window=1024, lr=1e-2, warmup_steps=5, decay_steps=30)
    sft: tuple[Stage, ...] = (  # SFT stages, each from the previous one's model, each on fresh chats
        Stage(steps=150, batch_windows=4, window=1024, lr=5e-3, warmup_steps=3, decay_steps=30),
        Stage(steps=80, batch_windows=4, window=1024, lr=3e-3, warmup_steps=2, decay_steps=30))
    aggregate_share: float = 0.5  # of SFT chats
    tails: int = 4  # C of the aggregation chats and of the evaluation
    eval_steps: int = 3  # operations per evaluation problem (chosen on dev seed 7, never on the held-out seed)
    population: int = 8  # N
    rounds: int = 2  # T
    budget: int = 96  # beta: generated tokens per candidate
    tail_tokens: int = 64  # tau
    temperature: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Recipe:
        """The recipe saved beside a demo model (demo.json); ValueError naming the file when it is not one."""
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            raw["train_steps"] = tuple(raw["train_steps"])
            raw["pretrain"], raw["sft"] = Stage(**raw["pretrain"]), tuple(Stage(**s) for s in raw["sft"])
            return cls(**raw)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a demo recipe ({exc})") from None


RECIPE = Recipe()

"""Corpora and configs for the trainer tests (test-only)."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

TINY_MODEL = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=32, moe_intermediate_size=64, num_experts=4, router_hidden_size=16,
                  max_position_embeddings=512, layer_types=["hybrid", "hybrid_sliding"], sliding_window=32)


def runs_corpus(path, docs: int = 160, seed: int = 0) -> list[str]:
    """Writes a jsonl pretraining corpus of cyclic runs ("klmnop...", "7890123...", "xyzab...", of 12-60 chars,
    random start) and returns the texts: every next byte follows from the one before it."""
    rng = random.Random(seed)
    alphabets = ("abcdefghijklmnopqrstuvwxyz", "0123456789", "ZYXWVUTSRQPONMLKJIHGFEDCBA")
    texts = []
    for _ in range(docs):
        a = rng.choice(alphabets)
        start, n = rng.randrange(len(a)), rng.randint(12, 60)
        texts.append("".join(a[(start + i) % len(a)] for i in range(n)))
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return texts


def unigram_entropy(texts: list[str]) -> float:
    """Entropy in nats of the byte distribution of the predicted tokens (every byte but each text's first)."""
    counts = Counter(b for t in texts for b in t.encode()[1:])
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def raw_config(data_path, out_dir, **train) -> dict:
    """A config table (as the TOML parser yields it) for the tiny model on `data_path`."""
    base = dict(steps=30, out_dir=str(out_dir), batch_windows=4, grad_accum=1, lr=1e-2, min_lr_ratio=0.1,
                warmup_steps=3, decay_steps=10, seed=0, clip=1.0, optimizer="muon")
    base.update(train)
    return {"model": dict(TINY_MODEL), "data": {"path": str(data_path), "tokenizer": "bytes", "window": 128},
            "train": base, "balancer": {"lr": 1e-2}}


def to_toml(raw: dict) -> str:
    """Writes a config table of str/int/float/bool/list values as TOML."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    out = []
    for section, table in raw.items():
        out.append(f"[{section}]")
        out += [f"{k} = {value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)

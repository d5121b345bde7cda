"""The RL trainer's TOML configuration (`zaya-rt rl --config FILE.toml`), parsed strictly like the trainer's
(zaya_rt.train.config): [model] (ZayaConfig fields, or `init_from = DIR`, e.g. the SFT checkpoint), [data]
(`path`: jsonl with `problem` and `answer` per line; `tokenizer`; `chat`: prompts as one user turn of the SFT chat
format), [rl], [balancer]. Unknown sections or keys
raise ValueError, wrong types TypeError, out-of-range values ValueError, each naming the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from zaya_rt.model.config import ZayaConfig
from zaya_rt.train.config import BalancerConfig, _build, _model, check_sections
from zaya_rt.train.rl.objective import ADVANTAGE_KINDS
from zaya_rt.train.rl.rewards import REWARD_KINDS


@dataclass
class PromptDataConfig:
    path: str
    tokenizer: str = "bytes"
    chat: bool = False  # render each prompt as a user turn of zaya_rt.train.data's chat format (an SFT model's)


@dataclass
class RLConfig:
    steps: int
    out_dir: str
    prompts_per_step: int = 4          # P groups per step
    group_size: int = 4                # G rollouts per prompt
    micro_batch: int = 8               # rollouts per forward/backward
    max_new_tokens: int = 256          # the rollout budget; the loss normalizer is P * G * this
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    advantage: str = "maxrl"
    tv_delta: float = 0.2              # Binary-TV trust region (1.0 never masks)
    reward: str = "exact"
    canary_threshold: float = 0.0      # zlib ratio below which a rollout's reward is zeroed; 0 = off
    dynamic_sampling: bool = True      # drop groups whose rewards are all equal
    aggregation_ratio: float = 0.0     # share of prompt slots that become Markovian RSA round-1 aggregations
    aggregation_tails: int = 2         # C tails per aggregation prompt
    tail_tokens: int = 64              # tau: tokens kept of each tail
    lr: float = 1e-5
    weight_decay: float = 0.0
    clip: float = 1.0
    optimizer: str = "muon"
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    activation_checkpointing: bool = False
    engine_pages: int = 512
    page_size: int = 16


@dataclass
class RLRunConfig:
    data: PromptDataConfig
    rl: RLConfig
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    model: ZayaConfig | None = None
    init_from: str | None = None


_CHOICES = {"rl.advantage": ADVANTAGE_KINDS, "rl.reward": REWARD_KINDS, "rl.optimizer": ("muon", "adamw")}
_POSITIVE = ("steps", "prompts_per_step", "group_size", "micro_batch", "max_new_tokens", "keep_checkpoints",
             "aggregation_tails", "tail_tokens", "engine_pages", "page_size")
_NON_NEGATIVE = ("temperature", "lr", "weight_decay", "clip", "checkpoint_every")
_UNIT = ("top_p", "tv_delta", "canary_threshold", "aggregation_ratio")


def _check_rl(rl: RLConfig) -> None:
    for key, allowed in _CHOICES.items():
        value = getattr(rl, key.split(".")[1])
        if value not in allowed:
            raise ValueError(f"config: {key} must be one of {', '.join(allowed)}, got {value!r}")
    for key in _POSITIVE:
        if getattr(rl, key) < 1:
            raise ValueError(f"config: rl.{key} must be positive, got {getattr(rl, key)}")
    for key in _NON_NEGATIVE:
        if getattr(rl, key) < 0:
            raise ValueError(f"config: rl.{key} must be non-negative, got {getattr(rl, key)}")
    for key in _UNIT:
        value = getattr(rl, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"config: rl.{key} must be in [0, 1], got {value}")
    if rl.top_p == 0:
        raise ValueError("config: rl.top_p must be in (0, 1]")
    if rl.advantage == "grpo" and rl.group_size < 2:
        raise ValueError("config: rl.advantage 'grpo' needs rl.group_size >= 2")
    if any(t < 0 for t in rl.stop_token_ids):
        raise ValueError(f"config: rl.stop_token_ids must be non-negative, got {rl.stop_token_ids}")
    if rl.aggregation_tails > rl.group_size and rl.aggregation_ratio > 0:
        raise ValueError(f"config: rl.aggregation_tails ({rl.aggregation_tails}) must not exceed rl.group_size "
                         f"({rl.group_size}) (tails come from one group of round-0 rollouts)")


def parse_rl_config(raw: dict[str, Any]) -> RLRunConfig:
    """Validates a config dict (the TOML document) into an RLRunConfig."""
    check_sections(raw, required=("model", "data", "rl"), optional=("balancer",))
    model, init_from = _model(raw["model"])
    data = _build(PromptDataConfig, "data", raw["data"])
    rl = _build(RLConfig, "rl", raw["rl"])
    _check_rl(rl)
    balancer = _build(BalancerConfig, "balancer", raw.get("balancer", {}))
    return RLRunConfig(data=data, rl=rl, balancer=balancer, model=model, init_from=init_from)


def load_rl_config(path: str | os.PathLike) -> RLRunConfig:
    """Reads and validates a TOML config file; a TOML syntax error raises ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    return parse_rl_config(raw)

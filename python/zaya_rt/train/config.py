"""The trainer's TOML configuration (`zaya-rt train --config FILE.toml`), parsed strictly.

Sections: [model] (ZayaConfig fields, or `init_from = DIR` alone), [data], [train], [balancer], [parallel]. An unknown
section or key raises ValueError naming it; a value of the wrong type raises TypeError naming the key and the
expected type; an out-of-range value raises ValueError naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from zaya_rt.model.config import ZayaConfig


@dataclass
class DataConfig:
    path: str
    tokenizer: str = "bytes"
    window: int = 2048
    sft_budget: int | None = None


@dataclass
class TrainConfig:
    steps: int
    out_dir: str
    batch_windows: int = 1
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    clip: float = 1.0
    optimizer: str = "muon"
    muon_ns_dtype: str = "bfloat16"
    warmup_steps: int = 0
    decay_steps: int = 0
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    dtype: str = "float32"
    activation_checkpointing: bool = False


@dataclass
class BalancerConfig:
    lr: float = 1e-2
    skip_target: float | None = None


@dataclass
class ParallelConfig:
    """How a torchrun launch splits the work: experts over `expert_parallel` ranks (the data-parallel degree of the
    experts is world / expert_parallel); everything else is FSDP2-sharded over all ranks."""

    expert_parallel: int = 1


@dataclass
class RunConfig:
    """A parsed config: `model` is a ZayaConfig, or None with `init_from` naming a checkpoint directory."""

    data: DataConfig
    train: TrainConfig
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    model: ZayaConfig | None = None
    init_from: str | None = None


_CHOICES = {"train.optimizer": ("muon", "adamw"), "train.dtype": ("float32", "bfloat16"),
            "train.muon_ns_dtype": ("bfloat16", "float32")}
_POSITIVE = {"data.window", "data.sft_budget", "train.steps", "train.batch_windows", "train.grad_accum",
             "train.keep_checkpoints", "parallel.expert_parallel"}
_NON_NEGATIVE = {"train.lr", "train.weight_decay", "train.clip", "train.warmup_steps", "train.decay_steps",
                 "train.checkpoint_every", "balancer.lr"}
_UNIT = {"train.min_lr_ratio", "balancer.skip_target"}


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value: Any, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(item is Any or _matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    return isinstance(value, hint)


def _build(cls, section: str, raw: dict[str, Any]):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ValueError(f"config: unknown key {section}.{key} (known: {', '.join(sorted(names))})")
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in raw:
            raise ValueError(f"config: missing required key {section}.{f.name}")
    values = {}
    for key, value in raw.items():
        name = f"{section}.{key}"
        if not _matches(value, hints[key]):
            raise TypeError(f"config: {name} must be {_type_name(hints[key])}, got {type(value).__name__} {value!r}")
        if hints[key] in (float, float | None) and isinstance(value, int):
            value = float(value)
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"config: {name} must be one of {', '.join(_CHOICES[name])}, got {value!r}")
        if value is not None:
            if name in _POSITIVE and value < 1:
                raise ValueError(f"config: {name} must be positive, got {value}")
            if name in _NON_NEGATIVE and value < 0:
                raise ValueError(f"config: {name} must be non-negative, got {value}")
            if name in _UNIT and not 0.0 <= value <= 1.0:
                raise ValueError(f"config: {name} must be in [0, 1], got {value}")
        values[key] = value
    return cls(**values)


def _model(raw: dict[str, Any]) -> tuple[ZayaConfig | None, str | None]:
    if "init_from" in raw:
        if len(raw) > 1:
            others = ", ".join(f"model.{k}" for k in sorted(raw) if k != "init_from")
            raise ValueError(f"config: model.init_from starts from a checkpoint's config; drop {others}")
        if not isinstance(raw["init_from"], str):
            raise TypeError(f"config: model.init_from must be str, got {type(raw['init_from']).__name__}")
        return None, raw["init_from"]
    hints = typing.get_type_hints(ZayaConfig)
    for key, value in raw.items():
        if key not in hints:
            raise ValueError(f"config: unknown key model.{key} (not a ZayaConfig field)")
        if not _matches(value, hints[key]):
            raise TypeError(f"config: model.{key} must be {_type_name(hints[key])}, got {type(value).__name__} {value!r}")
    try:
        return ZayaConfig(**raw), None
    except ValueError as exc:
        raise ValueError(f"config: [model]: {exc}") from None


def check_sections(raw: Any, *, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """Raises unless raw is a table of tables holding every required section and no unknown one."""
    if not isinstance(raw, dict):
        raise TypeError(f"config: expected a table, got {type(raw).__name__}")
    sections = set(required) | set(optional)
    for name, value in raw.items():
        if name not in sections:
            raise ValueError(f"config: unknown section [{name}] (known: {', '.join(sorted(sections))})")
        if not isinstance(value, dict):
            raise TypeError(f"config: [{name}] must be a table, got {type(value).__name__}")
    for name in required:
        if name not in raw:
            raise ValueError(f"config: missing section [{name}]")


def parse_config(raw: dict[str, Any]) -> RunConfig:
    """Validates a config dict (the TOML document) into a RunConfig."""
    check_sections(raw, required=("model", "data", "train"), optional=("balancer", "parallel"))
    model, init_from = _model(raw["model"])
    data = _build(DataConfig, "data", raw["data"])
    train = _build(TrainConfig, "train", raw["train"])
    balancer = _build(BalancerConfig, "balancer", raw.get("balancer", {}))
    parallel = _build(ParallelConfig, "parallel", raw.get("parallel", {}))
    if data.sft_budget is not None and data.sft_budget > data.window:
        raise ValueError(f"config: data.sft_budget ({data.sft_budget}) must not exceed data.window ({data.window})")
    if train.batch_windows % train.grad_accum:
        raise ValueError(f"config: train.batch_windows ({train.batch_windows}) must be a multiple of "
                         f"train.grad_accum ({train.grad_accum})")
    if train.warmup_steps + train.decay_steps > train.steps:
        raise ValueError(f"config: train.warmup_steps + train.decay_steps ({train.warmup_steps + train.decay_steps}) "
                         f"exceed train.steps ({train.steps})")
    return RunConfig(data=data, train=train, balancer=balancer, parallel=parallel, model=model, init_from=init_from)


def load_config(path: str | os.PathLike) -> RunConfig:
    """Reads and validates a TOML config file; a TOML syntax error raises ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(raw)

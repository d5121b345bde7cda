"""Per-request sampling parameters and stop conditions, and the detailed result of a request."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    temperature 0 = greedy (argmax); top_k 0 = off; top_p 1 = off; min_p 0 = off. A request stops after
    max_new_tokens tokens, after emitting one of stop_token_ids (the stop token is returned), or when its
    context reaches the model's max_position_embeddings. seed=None draws a seed from the engine's generator;
    a fixed seed gives the same tokens whatever else is in the batch. logprobs=True records the log-probability
    of each sampled token under the model's raw distribution (temperature 1, before top-k/top-p/min-p), for
    `Engine.generate(..., details=True)`. Integer fields take any integral number
    (numpy integers too, not bools) and real fields any real number; both are stored as Python int / float.
    """

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        self.validate()
        for name in ("max_new_tokens", "top_k"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("temperature", "top_p", "min_p"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must lie in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not _is_real(self.min_p) or not 0 <= self.min_p <= 1:
            raise ValueError(f"SamplingParams.min_p must lie in [0, 1], got {self.min_p!r}")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise ValueError(f"SamplingParams.stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}")
        if self.seed is not None and (not _is_int(self.seed) or not -(2**63) <= self.seed < 2**63):
            raise ValueError(f"SamplingParams.seed must be None or a 64-bit int, got {self.seed!r}")
        if not isinstance(self.logprobs, bool):
            raise ValueError(f"SamplingParams.logprobs must be a bool, got {self.logprobs!r}")


@dataclass(frozen=True)
class Completion:
    """One request's result from `Engine.generate(..., details=True)`.

    token_ids: the generated ids (no prompt); logprobs: per generated token, its log-probability under the raw
    distribution (temperature 1, before top-k/top-p/min-p), or None unless SamplingParams.logprobs;
    routed_experts: int32 [prompt_len + generated - 1, num_layers], the expert the router chose for every token
    the engine ran through the model (num_experts = skip; the last generated token is never run);
    finish_reason: as `Engine.finish_reason`."""

    token_ids: list[int]
    logprobs: list[float] | None
    routed_experts: torch.Tensor
    finish_reason: str | None


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)

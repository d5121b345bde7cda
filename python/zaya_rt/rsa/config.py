"""RSAConfig: the Markovian RSA parameters (N, C, T, beta, tau, head) and the sampling settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class RSAConfig:
    """Markovian RSA (ZAYA1-8B report, section VI-A).

    population N: candidates per round; tails C: previous-round candidates each aggregation draws (C = 1 is
    bounded continuation); rounds T: aggregation rounds after the N rollouts of round 0 (T = 0 is parallel
    sampling); budget beta: generated tokens per candidate; tail_tokens tau: generated tokens kept per
    candidate (tau = beta is plain RSA); head_tokens: first generated tokens kept before the tail (0: none).
    temperature, top_p, top_k, min_p: sampling (as SamplingParams); seed: drives the tail draws and the
    per-request sampling seeds.
    """

    population: int = 16
    tails: int = 4
    rounds: int = 2
    budget: int = 8192
    tail_tokens: int = 4096
    head_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError (TypeError for a non-number) naming the first bad field."""
        for name in ("population", "tails", "rounds", "budget", "tail_tokens", "head_tokens", "top_k", "seed"):
            if not _is_int(getattr(self, name)):
                raise TypeError(f"RSAConfig.{name} must be an int, got {getattr(self, name)!r}")
        for name in ("temperature", "top_p", "min_p"):
            if not _is_real(getattr(self, name)):
                raise TypeError(f"RSAConfig.{name} must be a finite number, got {getattr(self, name)!r}")
        for name in ("population", "tails", "budget", "tail_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"RSAConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rounds", "head_tokens", "top_k"):
            if getattr(self, name) < 0:
                raise ValueError(f"RSAConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.tails > self.population:
            raise ValueError(f"RSAConfig.tails ({self.tails}) must be <= population ({self.population}): "
                             "each aggregation draws distinct candidates")
        if self.tail_tokens > self.budget:
            raise ValueError(f"RSAConfig.tail_tokens ({self.tail_tokens}) must be <= budget ({self.budget}); "
                             "tail_tokens = budget is plain RSA")
        if self.head_tokens + self.tail_tokens > self.budget:
            raise ValueError(f"RSAConfig.head_tokens + tail_tokens ({self.head_tokens} + {self.tail_tokens}) "
                             f"must be <= budget ({self.budget}); a longer head keeps the whole trace anyway")
        if self.temperature < 0:
            raise ValueError(f"RSAConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"RSAConfig.top_p must lie in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"RSAConfig.min_p must lie in [0, 1], got {self.min_p}")
        if not -(2**63) <= self.seed < 2**63:
            raise ValueError(f"RSAConfig.seed must be a 64-bit int, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)

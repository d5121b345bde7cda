"""The RL objective (SPEC section 7): group advantages, the unclipped importance-weighted policy loss with Binary-TV
trust-region masking and a constant normalizer, dynamic sampling and the repetition canary.

Legend: P prompts, G rollouts per prompt (a group), B sequences, T token positions.
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Sequence

import torch

ADVANTAGE_KINDS = ("drgrpo", "grpo", "maxrl")
_EPS = 1e-6


def advantages(rewards: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-rollout advantages [P, G] (float64 for float64 rewards, else float32) of rewards [P, G]:

    - "drgrpo": r - mean (Dr-GRPO: no division by the group's spread);
    - "grpo":   (r - mean) / (std + 1e-6), std the unbiased sample std of the group (G >= 2);
    - "maxrl":  (r - mean) / (mean + 1e-6), and 0 in groups whose mean reward is 0.
    """
    if kind not in ADVANTAGE_KINDS:
        raise ValueError(f"advantages: kind must be one of {', '.join(ADVANTAGE_KINDS)}, got {kind!r}")
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"advantages: rewards must be a torch.Tensor [P, G], got {type(rewards).__name__}")
    if rewards.dim() != 2:
        raise ValueError(f"advantages: rewards must be [P, G], got shape {tuple(rewards.shape)}")
    if kind == "grpo" and rewards.shape[1] < 2:
        raise ValueError("advantages: 'grpo' needs G >= 2 rollouts per group (a sample std)")
    r = rewards.to(torch.float64 if rewards.dtype == torch.float64 else torch.float32)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("advantages: rewards hold NaN or inf")
    mean = r.mean(dim=1, keepdim=True)
    centred = r - mean
    if kind == "drgrpo":
        return centred
    if kind == "grpo":
        return centred / (r.std(dim=1, keepdim=True) + _EPS)
    return torch.where(mean == 0, torch.zeros_like(centred), centred / (mean + _EPS))


def trust_region_keep(logp: torch.Tensor, rollout_logp: torch.Tensor, advantages: torch.Tensor,
                      tv_delta: float | None) -> torch.Tensor:
    """Binary-TV trust-region mask (DPPO), bool with logp's shape: False where the token's probability under the
    current policy p moved more than tv_delta from the rollout policy's mu in the direction the advantage
    pushes it (p - mu > delta with A > 0, or p - mu < -delta with A < 0). All True when tv_delta is None."""
    if tv_delta is None:
        return torch.ones(logp.shape, dtype=torch.bool, device=logp.device)
    p = logp.detach().double().exp()
    mu = rollout_logp.detach().double().exp()
    a = advantages.detach().expand(logp.shape) if advantages.dim() < logp.dim() else advantages.detach()
    outside = ((p - mu > tv_delta) & (a > 0)) | ((p - mu < -tv_delta) & (a < 0))
    return ~outside


def policy_loss(logp: torch.Tensor, rollout_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                normalizer: float, tv_delta: float | None = None) -> torch.Tensor:
    """-sum(mask * keep * exp(logp - rollout_logp) * A) / normalizer, a float32 (float64 for float64 logp) scalar.

    logp [B, T]: log-probability of each rollout token under the policy being trained (differentiable);
    rollout_logp [B, T]: the same under the policy that sampled it (the engine's, no gradient); advantages [B]
    (one per sequence, broadcast over T) or [B, T]; mask [B, T] bool or 0/1 (1 = a generated token that
    carries loss). normalizer: a positive constant fixed before the batch is split (e.g. prompts * G * the
    token budget, Dr-GRPO), so the losses of micro-batches or ranks add up to the whole batch's loss.
    tv_delta: Binary-TV trust region (see `trust_region_keep`), None = off. No KL term.
    """
    for name, t in (("logp", logp), ("rollout_logp", rollout_logp), ("advantages", advantages), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"policy_loss: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not logp.is_floating_point():
        raise TypeError(f"policy_loss: logp must be floating point, got {logp.dtype}")
    if rollout_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"policy_loss: logp {tuple(logp.shape)}, rollout_logp {tuple(rollout_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must have one shape")
    if advantages.shape != logp.shape and advantages.shape != logp.shape[:1]:
        raise ValueError(f"policy_loss: advantages must be [B] or [B, T] = {tuple(logp.shape)}, got "
                         f"{tuple(advantages.shape)}")
    if not isinstance(normalizer, numbers.Real) or isinstance(normalizer, bool) or not (
            math.isfinite(normalizer) and normalizer > 0):
        raise ValueError(f"policy_loss: normalizer must be a positive finite number (a constant), got {normalizer!r}")
    if tv_delta is not None and (not isinstance(tv_delta, numbers.Real) or isinstance(tv_delta, bool)
                                 or not 0 <= tv_delta <= 1):
        raise ValueError(f"policy_loss: tv_delta must be None or in [0, 1], got {tv_delta!r}")
    dtype = torch.float64 if logp.dtype == torch.float64 else torch.float32
    a = advantages.to(dtype)
    if a.dim() < logp.dim():
        a = a[:, None]
    keep = trust_region_keep(logp, rollout_logp, a, tv_delta)
    weight = mask.to(dtype) * keep.to(dtype)
    # tokens that carry no loss get log-ratio 0 before exp: an overflowing ratio there (padding, masked
    # tokens) must reach neither the sum nor the gradient (inf * 0 = NaN)
    log_ratio = torch.where(weight > 0, logp.to(dtype) - rollout_logp.detach().to(dtype), 0.0)
    return -(torch.exp(log_ratio) * a * weight).sum() / float(normalizer)


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling: bool [P], False for groups (rows of rewards [P, G]) whose rewards are all equal (their
    advantages are all 0, so they carry no signal)."""
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2:
        raise ValueError("informative_groups: rewards must be a [P, G] tensor")
    if rewards.shape[1] == 0:
        return torch.zeros(rewards.shape[0], dtype=torch.bool)
    return (rewards != rewards[:, :1]).any(dim=1)


def compression_ratio(tokens: str | bytes | Sequence[int]) -> float:
    """zlib-compressed size / raw size of a text (UTF-8), bytes, or token ids (each as the fewest little-endian
    bytes that hold the largest id: 1, 2 or 4); 1.0 for empty input. Repetitive output compresses well: a low
    ratio marks degenerate loops."""
    if isinstance(tokens, str):
        raw = tokens.encode("utf-8")
    elif isinstance(tokens, (bytes, bytearray)):
        raw = bytes(tokens)
    else:
        ids = [int(t) for t in tokens]
        if any(t < 0 or t >= 2**32 for t in ids):
            raise ValueError("compression_ratio: token ids must lie in [0, 2**32)")
        width = 1 if max(ids, default=0) < 2**8 else 2 if max(ids) < 2**16 else 4
        raw = b"".join(t.to_bytes(width, "little") for t in ids)
    if not raw:
        return 1.0
    return len(zlib.compress(raw, 9)) / len(raw)


def repetition_canary(rewards: torch.Tensor, completions: Sequence, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards with 0 where a completion's compression ratio is below threshold, bool flags of those).

    rewards: a float tensor with one entry per completion (any shape, row-major order); completions: texts,
    bytes or token-id lists in the same order."""
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise ValueError(f"repetition_canary: threshold must be in [0, 1], got {threshold!r}")
    if len(completions) != rewards.numel():
        raise ValueError(f"repetition_canary: {len(completions)} completions for {rewards.numel()} rewards")
    flags = torch.tensor([compression_ratio(c) < threshold for c in completions], dtype=torch.bool)
    flags = flags.reshape(rewards.shape).to(rewards.device)
    return torch.where(flags, torch.zeros_like(rewards), rewards), flags

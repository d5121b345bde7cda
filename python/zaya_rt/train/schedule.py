"""Warmup-stable-decay (WSD) learning-rate schedule (SPEC section 7)."""

from __future__ import annotations


def wsd_lr(step: int, lr: float, steps: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step `step` (counted from 1 to `steps`).

    Linear warmup over the first `warmup_steps` (step / warmup_steps of lr), constant lr, then a linear decay
    over the last `decay_steps` that reaches lr * min_lr_ratio at the final step.
    """
    if not 1 <= step <= steps:
        raise ValueError(f"wsd_lr: step must be in [1, {steps}], got {step}")
    if warmup_steps < 0 or decay_steps < 0 or warmup_steps + decay_steps > steps:
        raise ValueError(f"wsd_lr: warmup_steps ({warmup_steps}) + decay_steps ({decay_steps}) must fit in {steps} steps")
    if step <= warmup_steps:
        return lr * step / warmup_steps
    decay_start = steps - decay_steps
    if step <= decay_start:
        return lr
    progress = (step - decay_start) / decay_steps
    return lr * (1.0 - (1.0 - min_lr_ratio) * progress)

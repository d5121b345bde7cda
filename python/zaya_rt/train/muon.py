"""Muon with torch.optim.Muon's semantics, extended to 3-D expert stacks (SPEC section 7)."""

from __future__ import annotations

import math

import torch

from zaya_rt.ops.newton_schulz import COMPUTE_DTYPES, DEFAULT_COEFFICIENTS, newton_schulz

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def adjusted_lr(lr: float, adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """torch.optim.Muon's learning-rate scale for one [rows, cols] matrix: sqrt(max(1, rows / cols)) for None and
    "original" (Keller Jordan's), 0.2 * sqrt(max(rows, cols)) for "match_rms_adamw" (Moonlight's)."""
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Momentum orthogonalised by Newton-Schulz, with decoupled weight decay (torch.optim.Muon's update).

    Per parameter with gradient g: buf = lerp(buf, g, 1 - momentum); u = lerp(g, buf, momentum) with Nesterov,
    else buf; O = newton_schulz(u); p *= 1 - lr * weight_decay; p -= adjusted_lr(lr, shape) * O.
    Parameters are 2-D matrices [A, B] or 3-D stacks [E, A, B] of E independent matrices (MoE experts), each
    stack orthogonalised in one batched call with the learning rate adjusted for one [A, B] matrix.
    ns_dtype: Newton-Schulz compute dtype, torch.bfloat16 (torch's) or torch.float32.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        if not (isinstance(lr, (int, float)) and lr >= 0.0):
            raise ValueError(f"Muon: lr must be a non-negative number, got {lr!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0.0):
            raise ValueError(f"Muon: weight_decay must be a non-negative number, got {weight_decay!r}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum!r}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Muon: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        if ns_dtype not in COMPUTE_DTYPES:
            raise TypeError(f"Muon: ns_dtype must be torch.bfloat16 or torch.float32, got {ns_dtype}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() not in (2, 3):
                    raise ValueError(
                        f"Muon: parameters must be 2-D matrices or 3-D stacks [E, A, B], got shape {tuple(p.shape)}"
                    )
                if torch.is_complex(p):
                    raise ValueError("Muon: complex parameters are not supported")

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step; returns closure() when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        items = []
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Muon: sparse gradients are not supported")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                grad, buf = _local(grad), _local(state["momentum_buffer"])
                buf.lerp_(grad, 1 - mu)
                items.append((p, grad.lerp(buf, mu) if group["nesterov"] else buf, group))
        for (p, _, group), ortho in zip(items, self.orthogonalise(items), strict=True):
            lr = group["lr"]
            local = _local(p)
            local.mul_(1 - lr * group["weight_decay"])
            local.add_(ortho.to(local.dtype), alpha=-adjusted_lr(lr, group["adjust_lr_fn"], *p.shape[-2:]))
        return loss

    def orthogonalise(self, items: list[tuple[torch.Tensor, torch.Tensor, dict]]) -> list[torch.Tensor]:
        """Newton-Schulz of each (parameter, update, group)'s update, in the group's compute dtype. The
        distributed Muon (dist_muon.py) overrides this for sharded parameters."""
        return [ns_update(update, group) for _, update, group in items]


def ns_update(update: torch.Tensor, group: dict) -> torch.Tensor:
    """newton_schulz of one update [A, B] or [E, A, B] with a Muon param group's settings."""
    return newton_schulz(update, group["ns_steps"], group["ns_coefficients"], group["eps"], group["ns_dtype"])


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2-sharded parameters and their states); a plain tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t

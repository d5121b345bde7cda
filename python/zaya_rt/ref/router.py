"""Reference ZAYA1 router (SPEC section 3, step 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zaya_rt.ref.norms import rms_norm


def zaya_router(
    x: torch.Tensor,
    z_prev: torch.Tensor | None,
    down_w: torch.Tensor,
    down_b: torch.Tensor,
    eda_scale: torch.Tensor | None,
    norm_w: torch.Tensor,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor,
    out_w: torch.Tensor,
    balancing_bias: torch.Tensor,
    eps: float,
):
    """x [T, D], z_prev [T, R] or None (first layer), weights in nn.Linear layout, balancing_bias [E + 1] fp32.

    Returns logits [T, E + 1], gate [T] (probability of the choice, 0 for skip), choice [T] int64 (E = skip),
    z [T, R] (this layer's router state for the next layer's EDA).
    """
    z = F.linear(x, down_w, down_b)
    if z_prev is not None and eda_scale is not None:
        z = z + z_prev * eda_scale
    hidden = F.gelu(F.linear(rms_norm(z, norm_w, eps), fc1_w, fc1_b))
    hidden = F.gelu(F.linear(hidden, fc2_w, fc2_b))
    logits = F.linear(hidden, out_w)
    probs = torch.softmax(logits, dim=-1)
    biased = probs.detach().to(torch.promote_types(probs.dtype, torch.float32)) + balancing_bias
    choice = biased.argmax(dim=-1)
    num_experts = logits.shape[-1] - 1
    gate = probs.gather(-1, choice[..., None]).squeeze(-1)
    gate = gate.masked_fill(choice == num_experts, 0)
    return logits, gate, choice, z

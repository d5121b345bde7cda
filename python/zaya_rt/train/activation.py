"""Per-layer activation checkpointing of a ZayaForCausalLM (torch.utils.checkpoint, non-reentrant)."""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from zaya_rt.model.modeling import ZayaDecoderLayer


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Makes every decoder layer of `model` recompute its activations in the backward pass instead of keeping
    them (only while gradients are enabled). Returns the number of layers wrapped; idempotent.

    The recompute runs the layer's forward again, router included, so forward hooks fire twice per layer and
    step: loads for the router balancer must be counted outside the backward (see Trainer)."""
    wrapped = 0
    for layer in model.modules():
        if not isinstance(layer, ZayaDecoderLayer) or "forward" in vars(layer):
            continue
        plain = layer.forward

        @functools.wraps(plain)
        def forward(*args, _plain=plain, **kwargs):
            if not torch.is_grad_enabled():
                return _plain(*args, **kwargs)
            return checkpoint(_plain, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
        wrapped += 1
    return wrapped

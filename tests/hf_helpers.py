"""Builders for randomised transformers Zaya models (test-only; needs transformers>=5.23)."""

from __future__ import annotations

import torch

transformers = __import__("pytest").importorskip("transformers")
from transformers import ZayaConfig as HFZayaConfig  # noqa: E402
from transformers import ZayaForCausalLM as HFZayaForCausalLM  # noqa: E402


def hf_config(**overrides) -> HFZayaConfig:
    base = dict(
        vocab_size=97,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        moe_intermediate_size=24,
        num_experts=5,
        router_hidden_size=20,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    base.update(overrides)
    return HFZayaConfig(**base)


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values for every parameter and buffer, including the ones transformers initialises to 0 or 1
    (temperatures, residual scales and biases, balancing biases, EDA scales)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("scale") or leaf == "weight" and "norm" in name:
            p.copy_(1.0 + 0.2 * noise)
        elif leaf == "temp":
            p.copy_(0.5 + 0.5 * noise.abs())
        elif leaf.endswith("bias") and ("residual" in name or "hidden_states" in name):
            p.copy_(0.1 * noise)
        elif "router_mlp" in name:
            p.copy_(0.6 * noise)  # spread the router's probabilities so choices differ between tokens
        else:
            p.copy_(0.08 * noise)
    for name, b in model.named_buffers():
        if name.endswith("balancing_biases"):
            b.copy_(0.05 * torch.randn(b.shape, generator=gen))
    return model


def hf_model(seed: int = 0, attn_implementation: str = "eager", **overrides) -> HFZayaForCausalLM:
    cfg = hf_config(**overrides)
    cfg._attn_implementation = attn_implementation
    model = HFZayaForCausalLM(cfg)
    return randomise(model, seed).eval()

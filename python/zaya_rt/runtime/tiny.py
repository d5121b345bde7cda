"""The embedded tiny random-weight ZAYA model (byte-level vocabulary), for demos, the CLI and soak tests."""

from __future__ import annotations

import torch

from zaya_rt.model import ZayaConfig, ZayaForCausalLM


def tiny_config() -> ZayaConfig:
    """256-token (byte) vocabulary, 4 layers (full and sliding-window attention), 8 experts."""
    return ZayaConfig(
        vocab_size=256, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, moe_intermediate_size=256, num_experts=8, router_hidden_size=64, max_position_embeddings=4096,
        layer_types=["hybrid", "hybrid_sliding"] * 2, sliding_window=128, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> ZayaForCausalLM:
    """The tiny model with random weights from `seed`, in `dtype` (balancing biases stay fp32)."""
    model = ZayaForCausalLM(tiny_config()).init_random(seed=seed).eval()
    if dtype != torch.float32:
        model = model.to(dtype)
        for layer in model.model.layers:
            layer.mlp.gate.balancing_biases.data = layer.mlp.gate.balancing_biases.float()
    return model

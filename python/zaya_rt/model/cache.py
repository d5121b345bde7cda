"""A simple contiguous decode cache for ZayaForCausalLM (the paged cache lives in zaya_rt.runtime).

Per layer: K and V after qk norm and RoPE [B, S_max, Hk, d], the last (k0-1)+(k1-1) pre-conv q/k columns
[B, C, K], and the last token's delayed value projection [B, Hk*d/2]. `valid` [B, S_max] marks real
(non-padding) positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zaya_rt.model.config import ZayaConfig


@dataclass
class LayerCache:
    k: torch.Tensor
    v: torch.Tensor
    conv_state: torch.Tensor
    v_state: torch.Tensor


class ZayaCache:
    """Preallocated K/V and CCA state for `batch_size` sequences of up to `max_seq_len` tokens."""

    def __init__(
        self,
        config: ZayaConfig,
        batch_size: int,
        max_seq_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be positive, got {batch_size}, {max_seq_len}")
        hk, d = config.num_key_value_heads, config.head_dim
        channels = (config.num_attention_heads + hk) * d
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self.layers = [
            LayerCache(
                k=torch.zeros(batch_size, max_seq_len, hk, d, dtype=dtype, device=device),
                v=torch.zeros(batch_size, max_seq_len, hk, d, dtype=dtype, device=device),
                conv_state=torch.zeros(batch_size, channels, config.conv_state_len, dtype=dtype, device=device),
                v_state=torch.zeros(batch_size, hk * d // 2, dtype=dtype, device=device),
            )
            for _ in range(config.num_hidden_layers)
        ]
        self.valid = torch.zeros(batch_size, max_seq_len, dtype=torch.bool, device=device)
        self.length = 0

    def reserve(self, batch_size: int, new_tokens: int) -> None:
        """Checks that `new_tokens` more tokens for `batch_size` sequences fit."""
        if batch_size != self.batch_size:
            raise ValueError(f"cache holds {self.batch_size} sequences, input has {batch_size}")
        if self.length + new_tokens > self.max_seq_len:
            raise ValueError(
                f"cache holds at most {self.max_seq_len} tokens; {self.length} stored + {new_tokens} new do not fit"
            )

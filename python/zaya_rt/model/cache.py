"""A simple contiguous decode cache for ZayaForCausalLM (the paged cache lives in zaya_rt.runtime).

Per layer: K and V after qk norm and RoPE [B, S_cap, Hk, d] (S_cap = max_seq_len rounded up to whole pages), the last (k0-1)+(k1-1) pre-conv q/k columns
[B, C, K], and the last token's delayed value projection [B, Hk*d/2]. `valid` [B, S_max] marks real
(non-padding) positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zaya_rt.model.config import ZayaConfig


PAGE_SIZE = 16  # the contiguous K/V read as pages of this many tokens by zaya_rt.ops.attention_decode


@dataclass
class LayerCache:
    k: torch.Tensor
    v: torch.Tensor
    conv_state: torch.Tensor
    v_state: torch.Tensor
    block_table: torch.Tensor  # [B, S_cap / PAGE_SIZE] int32: row b's pages are b * S_cap / PAGE_SIZE + i

    def pages(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k_pages, v_pages [B * S_cap / PAGE_SIZE, PAGE_SIZE, Hk, d], block_table): views, no copies."""
        B, S, hk, d = self.k.shape
        return (self.k.view(B * S // PAGE_SIZE, PAGE_SIZE, hk, d), self.v.view(B * S // PAGE_SIZE, PAGE_SIZE, hk, d),
                self.block_table)


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
        capacity = -(-max_seq_len // PAGE_SIZE) * PAGE_SIZE
        pages_per_row = capacity // PAGE_SIZE
        block_table = (torch.arange(batch_size, dtype=torch.int32)[:, None] * pages_per_row
                       + torch.arange(pages_per_row, dtype=torch.int32)[None]).to(device)
        self.layers = [
            LayerCache(
                k=torch.zeros(batch_size, capacity, hk, d, dtype=dtype, device=device),
                v=torch.zeros(batch_size, capacity, hk, d, dtype=dtype, device=device),
                conv_state=torch.zeros(batch_size, channels, config.conv_state_len, dtype=dtype, device=device),
                v_state=torch.zeros(batch_size, hk * d // 2, dtype=dtype, device=device),
                block_table=block_table,
            )
            for _ in range(config.num_hidden_layers)
        ]
        self.valid = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self.length = 0
        self.padded = False  # some row had padding: attention then takes the explicit-mask path

    def reserve(self, batch_size: int, new_tokens: int) -> None:
        """Checks that `new_tokens` more tokens for `batch_size` sequences fit."""
        if batch_size != self.batch_size:
            raise ValueError(f"cache holds {self.batch_size} sequences, input has {batch_size}")
        if self.length + new_tokens > self.max_seq_len:
            raise ValueError(
                f"cache holds at most {self.max_seq_len} tokens; {self.length} stored + {new_tokens} new do not fit"
            )

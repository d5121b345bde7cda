"""The memory-bandwidth floor of batch-1 decode (SPEC section 8).

One greedy token at batch 1 must read every weight it uses once: the attention, norms and router of every
layer, one expert per layer (the router picks one of E, or none), the final norm and the LM head (tied to the
embedding in the 124M config: read once, as the LM head). The host's read bandwidth over those bytes bounds
the tokens per second; `zaya-rt bench e2e` reports the fraction of that floor the Engine reaches.
"""

from __future__ import annotations

import time

import torch


def read_bandwidth_gb_s(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """The host's read bandwidth in GB/s (1e9 bytes/s): best of `repeats` fp32 sums over `nbytes` of memory."""
    if nbytes < 4 or repeats < 1:
        raise ValueError(f"read_bandwidth_gb_s needs nbytes >= 4 and repeats >= 1, got {nbytes}, {repeats}")
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()  # first touch outside the timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return buf.numel() * 4 / best / 1e9


def decode_bytes_per_token(model) -> int:
    """Bytes of the weights one batch-1 decode token reads from `model` (a zaya_rt ZayaForCausalLM): every
    parameter and buffer once (shared tensors once), except the experts (1/E of each layer's expert weights)
    and the input embedding (one row, unless it is the LM head's weight)."""
    lm_head = model.lm_head.weight
    embed = model.model.embed_tokens.weight
    experts = {id(p): p.shape[0] for layer in model.model.layers
               for p in (layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj)}
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        nbytes = t.numel() * t.element_size()
        if id(t) in experts:
            nbytes //= experts[id(t)]
        elif t is embed and embed.untyped_storage().data_ptr() != lm_head.untyped_storage().data_ptr():
            nbytes = embed.shape[1] * embed.element_size()
        total += nbytes
    return total

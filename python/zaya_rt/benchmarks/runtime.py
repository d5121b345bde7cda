"""Runtime op benchmark cases: the fused sampler against the same rule in PyTorch ops, and the page write
against PyTorch's index_copy_."""

from __future__ import annotations

import torch

from zaya_rt import ops
from zaya_rt.benchmarks.harness import Case
from zaya_rt.ops.runtime import gather_tail_torch
from zaya_rt.ops.sampling import _torch_path


def sampling_cases(device: str = "cpu", batches=(1, 16), vocab: int = 262272):
    """Greedy and top-p/top-k sampling over a ZAYA1-sized vocabulary."""
    cases = []
    for B in batches:
        gen = torch.Generator().manual_seed(B)
        logits = (2 * torch.randn(B, vocab, generator=gen)).to(device=device, dtype=torch.bfloat16)
        for label, temp, top_k, top_p in (("greedy", 0.0, 0, 1.0), ("t1 top_p0.9", 1.0, 0, 0.9),
                                          ("t1 top_k50", 1.0, 50, 1.0)):
            args = (torch.full((B,), temp, device=device), torch.full((B,), top_k, dtype=torch.int32, device=device),
                    torch.full((B,), top_p, device=device), torch.zeros(B, device=device),
                    torch.arange(B, device=device), torch.zeros(B, dtype=torch.int64, device=device))
            cases.append(Case(
                "sample_tokens", f"{B}x{vocab} {label}", "bfloat16",
                ours=lambda logits=logits, args=args: ops.sample_tokens(logits, *args),
                peer=lambda logits=logits, args=args: _torch_path(logits, *args),
                peer_name="PyTorch sort/cumsum composition", bytes_moved=B * vocab * 2,
            ))
    return cases


def page_cases(device: str = "cpu", tokens=(16, 2048), heads: int = 2, head_dim: int = 128, page_size: int = 16):
    """kv_write of N new token rows into a paged layer cache; gather_tail of 4096 cached rows per sequence."""
    cases = []
    dtype = torch.bfloat16
    for N in tokens:
        pages = max(64, 2 * N // page_size)
        k_cache = torch.zeros(pages, page_size, heads, head_dim, dtype=dtype, device=device)
        v_cache = torch.zeros_like(k_cache)
        k = torch.randn(N, heads, head_dim, device=device).to(dtype)
        v = torch.randn(N, heads, head_dim, device=device).to(dtype)
        slots = torch.randperm(pages * page_size, device=device)[:N].int()
        slots_long = slots.long()

        def peer(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slots=slots_long):
            k_cache.view(-1, heads, head_dim).index_copy_(0, slots, k)
            v_cache.view(-1, heads, head_dim).index_copy_(0, slots, v)

        cases.append(Case(
            "kv_write", f"{N} rows {heads}x{head_dim}", "bfloat16",
            ours=lambda k=k, v=v, k_cache=k_cache, v_cache=v_cache, slots=slots: ops.kv_write(k, v, k_cache, v_cache,
                                                                                             slots),
            peer=peer, peer_name="index_copy_", bytes_moved=4 * k.numel() * 2,
        ))
    B, span = 4, 4096
    pages = B * span // page_size
    cache = torch.randn(pages, page_size, heads, head_dim, device=device).to(dtype)
    table = torch.randperm(pages, device=device).int().view(B, -1)
    lens = torch.full((B,), span, dtype=torch.int32, device=device)
    cases.append(Case(
        "gather_tail", f"{B}x{span} rows {heads}x{head_dim}", "bfloat16",
        ours=lambda: ops.gather_tail(cache, table, lens, span),
        peer=lambda: gather_tail_torch(cache, table, lens, span),
        peer_name="PyTorch gather", bytes_moved=2 * B * span * heads * head_dim * 2,
    ))
    return cases

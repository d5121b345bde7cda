"""Attention benchmark cases: varlen prefill against PyTorch's scaled_dot_product_attention (its CPU flash
kernel / the GPU flash backend) on the same single sequence, and paged decode against SDPA over a contiguous
cache, reported in GB/s of the K/V bytes decode must read."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zaya_rt import ops
from zaya_rt.benchmarks.harness import Case

HQ, HK, D = 8, 2, 128
PREFILL_TOKENS = {"cpu": (2048,), "cuda": (2048, 8192, 16384)}  # add 8192,16384 on CPU with --tokens
DECODE_SHAPES = {  # (batch, context)
    "cpu": [(1, 4096), (1, 32768), (16, 8192), (64, 4096)],
    "cuda": [(1, 32768), (16, 16384), (64, 8192), (64, 32768)],
}


def prefill_cases(device: str = "cpu", tokens=None, dtypes=(torch.bfloat16, torch.float32)):
    """One causal sequence of T tokens, Hq=8, Hk=2, d=128: attention_varlen vs SDPA(is_causal, enable_gqa)."""
    cases = []
    for dtype in dtypes:
        for T in tokens or PREFILL_TOKENS[device]:
            gen = torch.Generator().manual_seed(T)
            q = torch.randn(T, HQ, D, generator=gen).to(device=device, dtype=dtype)
            k = torch.randn(T, HK, D, generator=gen).to(device=device, dtype=dtype)
            v = torch.randn(T, HK, D, generator=gen).to(device=device, dtype=dtype)
            cu = torch.tensor([0, T], dtype=torch.int32, device=device)
            qs, ks, vs = (t.transpose(0, 1)[None].contiguous() for t in (q, k, v))
            flops = 4 * T * T * D * HQ // 2  # causal: half the score matrix
            cases.append(Case(
                "attention_prefill", f"T{T} Hq{HQ} Hk{HK} d{D}", str(dtype).removeprefix("torch."),
                ours=lambda q=q, k=k, v=v, cu=cu: ops.attention_varlen(q, k, v, cu, cu),
                peer=lambda q=qs, k=ks, v=vs: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                             enable_gqa=True),
                peer_name="F.scaled_dot_product_attention (causal, GQA)", flops=flops,
                bytes_moved=(q.numel() * 2 + k.numel() * 2) * q.element_size(),
            ))
    return cases


def decode_cases(device: str = "cpu", shapes=None, dtypes=(torch.bfloat16,), page_size: int = 16):
    """One new token per sequence against `context` cached tokens in shuffled pages: attention_decode vs SDPA
    on the same K/V stored contiguously ([B, Hk, L, d]). GB/s counts the K and V bytes read."""
    cases = []
    for dtype in dtypes:
        for B, L in shapes or DECODE_SHAPES[device]:
            gen = torch.Generator().manual_seed(B * L)
            pages_per_seq = L // page_size
            P = B * pages_per_seq
            k_cache = torch.randn(P, page_size, HK, D, generator=gen).to(device=device, dtype=dtype)
            v_cache = torch.randn(P, page_size, HK, D, generator=gen).to(device=device, dtype=dtype)
            table = torch.randperm(P, generator=gen).view(B, pages_per_seq).to(device=device, dtype=torch.int32)
            lens = torch.full((B,), L, dtype=torch.int32, device=device)
            q = torch.randn(B, 1, HQ, D, generator=gen).to(device=device, dtype=dtype)
            flat = table.long().flatten()
            kc = k_cache[flat].view(B, L, HK, D).transpose(1, 2).contiguous()
            vc = v_cache[flat].view(B, L, HK, D).transpose(1, 2).contiguous()
            qs = q.transpose(1, 2).contiguous()
            kv_bytes = 2 * B * L * HK * D * k_cache.element_size()
            cases.append(Case(
                "attention_decode", f"B{B} L{L} page{page_size}", str(dtype).removeprefix("torch."),
                ours=lambda q=q, kc=k_cache, vc=v_cache, t=table, s=lens: ops.attention_decode(q, kc, vc, t, s),
                peer=lambda q=qs, k=kc, v=vc: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                peer_name="SDPA over a contiguous cache", bytes_moved=kv_bytes, flops=4 * B * L * HQ * D,
            ))
    return cases


def attention_cases(device: str = "cpu", tokens=None):
    return prefill_cases(device, tokens=tokens) + decode_cases(device)

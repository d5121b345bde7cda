"""Attention benchmark cases: varlen prefill against PyTorch's scaled_dot_product_attention (its CPU flash
kernel / the GPU flash backend) on the same single sequence, forward + backward of a packed batch against SDPA
under autograd, and paged decode against SDPA over a contiguous cache, reported in GB/s of the K/V bytes decode
must read."""

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


# (sequence lengths, head dim, sliding window) of the forward + backward cases, Hq=8, Hk=2 (a training step's
# attention: equal-length packed sequences, a sliding-window layer, a ragged varlen batch).
FWD_BWD_SHAPES = {
    "cpu": [((512,) * 4, 64, None), ((512,) * 4, 128, None), ((512,) * 4, 64, 128), ((700, 300, 37, 500), 64, None)],
    "cuda": [((2048,) * 4, 128, None), ((2048,) * 4, 128, 512)],
}


def _window_mask(T: int, window: int | None, device) -> torch.Tensor | None:
    """SDPA's boolean attn_mask for causal attention within the last `window` keys (None: plain causal)."""
    if window is None:
        return None
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (i - j < window)


def _fwd_bwd(fn, leaves, grads):
    """Forward + backward of fn(*leaves) with autograd on (also under the harness's inference mode)."""
    with torch.inference_mode(False), torch.enable_grad():
        outs = fn(*leaves)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return torch.autograd.grad(outs, leaves, grads)


def attention_fwd_bwd_cases(device: str = "cpu", shapes=None, dtypes=(torch.bfloat16, torch.float32)):
    """Forward + backward (dq, dk, dv) of causal GQA attention, Hq=8, Hk=2, over packed sequences of the given
    lengths: zaya_rt's attention_varlen under autograd against torch autograd through
    F.scaled_dot_product_attention(is_causal=True, enable_gqa=True) on [B, H, T, d] (equal lengths), per
    sequence (ragged lengths), or with a boolean causal-window attn_mask (sliding window). `shapes`: a list of
    (lengths, d, window or None)."""
    cases = []
    for dtype in dtypes:
        for lengths, d, window in shapes or FWD_BWD_SHAPES[device]:
            gen = torch.Generator().manual_seed(sum(lengths) + d)
            T = sum(lengths)
            q = torch.randn(T, HQ, d, generator=gen).to(device=device, dtype=dtype)
            k = torch.randn(T, HK, d, generator=gen).to(device=device, dtype=dtype)
            v = torch.randn(T, HK, d, generator=gen).to(device=device, dtype=dtype)
            grad = torch.randn(T, HQ, d, generator=gen).to(device=device, dtype=dtype)
            cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(device=device, dtype=torch.int32)
            leaves = [t.requires_grad_() for t in (q, k, v)]

            def ours(leaves=leaves, grad=grad, cu=cu, window=window):
                return _fwd_bwd(lambda q, k, v: ops.attention_varlen(q, k, v, cu, cu, window=window), leaves, [grad])

            equal = len(set(lengths)) == 1
            if equal:  # [B, H, L, d] views of the same tokens, made contiguous as a model would hold them
                B, L = len(lengths), lengths[0]
                peer_leaves = [t.detach().view(B, L, -1, d).transpose(1, 2).contiguous().requires_grad_()
                               for t in (q, k, v)]
                peer_grads = [grad.view(B, L, HQ, d).transpose(1, 2).contiguous()]
                mask = _window_mask(L, window, device)

                def sdpa(q, k, v, mask=mask):
                    if mask is None:
                        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
                peer_name = "SDPA fwd+bwd (autograd, " + ("causal" if window is None else "window mask") + ", GQA)"
            else:  # one SDPA call per sequence
                peer_leaves, peer_grads = [], []
                for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
                    for t in (q, k, v):
                        peer_leaves.append(t.detach()[a:b].transpose(0, 1)[None].contiguous().requires_grad_())
                    peer_grads.append(grad[a:b].transpose(0, 1)[None].contiguous())
                masks = [_window_mask(b - a, window, device) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]

                def sdpa(*qkv, masks=masks):
                    outs = []
                    for i, mask in enumerate(masks):
                        q, k, v = qkv[3 * i : 3 * i + 3]
                        if mask is None:
                            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
                        else:
                            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
                    return outs
                peer_name = "SDPA fwd+bwd per sequence (autograd, causal, GQA)"

            def peer(leaves=peer_leaves, grads=peer_grads, fn=sdpa):
                return _fwd_bwd(fn, leaves, grads)

            reach = [min(n, window) if window else (n + 1) / 2 for n in lengths]
            flops = int(sum(4 * n * r * d * HQ for n, r in zip(lengths, reach)) * 3.5)  # fwd 2 GEMMs, bwd 5
            label = ("B%dxT%d" % (len(lengths), lengths[0]) if equal else "T" + ",".join(map(str, lengths)))
            label += f" Hq{HQ} Hk{HK} d{d}" + (f" w{window}" if window else "")
            cases.append(Case(
                "attention_fwd_bwd", label, str(dtype).removeprefix("torch."), ours=ours, peer=peer,
                peer_name=peer_name, flops=flops,
                bytes_moved=(2 * q.numel() + 2 * k.numel() + 2 * v.numel()) * q.element_size(),
            ))
    return cases


def attention_cases(device: str = "cpu", tokens=None):
    return prefill_cases(device, tokens=tokens) + decode_cases(device)

"""Norms benchmark cases: zaya_rt against the same math in PyTorch eager (transformers' ZayaRMSNorm and
ZayaResidualScaling)."""

from __future__ import annotations

import torch

from zaya_rt import ops
from zaya_rt.benchmarks.harness import Case

DEFAULT_TOKENS = {"cpu": (1, 16, 4096), "cuda": (1, 16, 4096, 16384)}


def _eager_rms_norm(x, weight, eps=1e-5):
    xf = x.to(torch.float32)
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(weight.dtype)


def _eager_residual_rms_norm(y, h, yb, ys, hb, hs, weight, eps=1e-5):
    r = (y + yb) * ys + (h + hb) * hs
    return r, _eager_rms_norm(r, weight, eps)


def norm_cases(device: str = "cpu", tokens=None, hidden: int = 2048, dtypes=(torch.float32, torch.bfloat16)):
    """RMSNorm of the fp32 residual stream and residual scaling + RMSNorm, at decode and prefill sizes."""
    cases = []
    for dtype in dtypes:
        for t in tokens or DEFAULT_TOKENS[device]:
            gen = torch.Generator(device="cpu").manual_seed(t)
            h = torch.randn(t, hidden, generator=gen).to(device)
            y = torch.randn(t, hidden, generator=gen).to(device=device, dtype=dtype)
            w = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(device=device, dtype=dtype)
            params = [torch.randn(hidden, generator=gen).to(device=device, dtype=dtype) for _ in range(4)]
            esize = torch.finfo(dtype).bits // 8
            name = str(dtype).removeprefix("torch.")
            cases.append(Case(
                "rms_norm", f"{t}x{hidden}", name,
                ours=lambda h=h, w=w: ops.rms_norm(h, w),
                peer=lambda h=h, w=w: _eager_rms_norm(h, w),
                peer_name="eager (transformers ZayaRMSNorm)",
                bytes_moved=t * hidden * (4 + esize),
            ))
            cases.append(Case(
                "residual_rms_norm", f"{t}x{hidden}", name,
                ours=lambda y=y, h=h, p=params, w=w: ops.residual_rms_norm(y, h, *p, w),
                peer=lambda y=y, h=h, p=params, w=w: _eager_residual_rms_norm(y, h, *p, w),
                peer_name="eager residual scaling + RMSNorm",
                bytes_moved=t * hidden * (esize + 4 + 4 + esize),
            ))
    return cases

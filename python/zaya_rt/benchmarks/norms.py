"""Norms benchmark cases: zaya_rt against the same math in PyTorch eager (transformers' ZayaRMSNorm and
ZayaResidualScaling)."""

from __future__ import annotations

import torch

from zaya_rt import ops, ref
from zaya_rt.benchmarks.autograd_call import fwd_bwd_call
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


FWD_BWD_SHAPES = {"cpu": [(2048, 512), (2048, 2048)], "cuda": [(16384, 2048)]}


def norm_fwd_bwd_cases(device: str = "cpu", shapes=None, dtypes=(torch.bfloat16, torch.float32), eps: float = 1e-5):
    """(T, D) shapes: rms_norm (x and weight in dtype) and residual_rms_norm (y and parameters in dtype, the
    residual stream h fp32, as the model runs them) forward + backward against zaya_rt.ref's norms in the op's
    dtypes under autograd."""
    cases = []
    for dtype in dtypes:
        for T, D in shapes or FWD_BWD_SHAPES[device]:
            gen = torch.Generator().manual_seed(T + D)
            x = torch.randn(T, D, generator=gen).to(device=device, dtype=dtype)
            h = torch.randn(T, D, generator=gen).to(device)
            w = (1 + 0.1 * torch.randn(D, generator=gen)).to(device=device, dtype=dtype)
            params = [(0.1 * torch.randn(D, generator=gen)).to(device=device, dtype=dtype) for _ in range(4)]
            name, esize = str(dtype).removeprefix("torch."), x.element_size()
            cases.append(Case(
                "rms_norm fwd+bwd", f"{T}x{D}", name,
                ours=fwd_bwd_call(lambda x, w: ops.rms_norm(x, w, eps), (x, w)),
                peer=fwd_bwd_call(lambda x, w: ref.rms_norm(x, w, eps), (x, w)),
                peer_name="ref.rms_norm under autograd", bytes_moved=T * D * 4 * esize))
            cases.append(Case(
                "residual_rms_norm fwd+bwd", f"{T}x{D}", name,
                ours=fwd_bwd_call(lambda *a: ops.residual_rms_norm(*a, eps), (x, h, *params, w)),
                peer=fwd_bwd_call(lambda *a: ref.residual_rms_norm(*a, eps), (x, h, *params, w)),
                peer_name="ref.residual_rms_norm under autograd", bytes_moved=T * D * (3 * esize + 4 * 4)))
    return cases

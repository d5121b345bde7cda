"""Router benchmark cases: the fused zaya_router against the unfused PyTorch composition (transformers'
ZayaRouter forward), on the CPU or (device="cuda") the GPU, where the peer runs cuBLAS plus PyTorch's elementwise
kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zaya_rt import ops, ref
from zaya_rt.benchmarks.autograd_call import fwd_bwd_call
from zaya_rt.benchmarks.harness import Case

DEFAULT_TOKENS = {"cpu": (1, 16, 4096, 16384), "cuda": (1, 16, 4096, 16384)}


def _unfused(x, z_prev, down_w, down_b, eda, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, bias, eps=1e-5):
    z = F.linear(x, down_w, down_b)
    if z_prev is not None:
        z = z + z_prev * eda
    zf = z.float()
    n = (zf * torch.rsqrt(zf.pow(2).mean(-1, keepdim=True) + eps)).to(norm_w.dtype) * norm_w
    logits = F.linear(F.gelu(F.linear(F.gelu(F.linear(n, fc1_w, fc1_b)), fc2_w, fc2_b)), out_w)
    p = torch.softmax(logits, dim=-1)
    choice = (p.float() + bias).argmax(-1)
    gate = p.gather(-1, choice[:, None]).masked_fill(choice[:, None] == out_w.shape[0] - 1, 0)
    return logits, gate, choice, z


def router_cases(device: str = "cpu", tokens=None, D: int = 2048, R: int = 256, E: int = 16,
                 dtypes=(torch.float32, torch.bfloat16)):
    cases = []
    for dtype in dtypes:
        for T in tokens or DEFAULT_TOKENS[device]:
            gen = torch.Generator().manual_seed(T)
            mk = lambda *s, scale=0.05: (scale * torch.randn(*s, generator=gen)).to(device=device, dtype=dtype)  # noqa: E731
            args = (mk(T, D, scale=1.0), mk(T, R, scale=1.0), mk(R, D), mk(R), 1 + mk(R), 1 + mk(R), mk(R, R), mk(R),
                    mk(R, R), mk(R), mk(E + 1, R, scale=0.5), (0.01 * torch.randn(E + 1, generator=gen)).to(device))
            name = str(dtype).removeprefix("torch.")
            flops = 2 * T * (D * R + 2 * R * R + R * (E + 1))
            cases.append(Case("zaya_router", f"T{T} D{D} R{R} E{E}", name,
                              ours=lambda a=args: ops.zaya_router(*a), peer=lambda a=args: _unfused(*a),
                              peer_name="unfused PyTorch (transformers ZayaRouter)", flops=flops,
                              bytes_moved=(T * D + R * D + 2 * R * R) * args[0].element_size()))
    return cases


FWD_BWD_SHAPES = {"cpu": [(2048, 512), (2048, 2048)], "cuda": [(16384, 2048)]}


def router_fwd_bwd_cases(device: str = "cpu", shapes=None, R: int = 256, E: int = 16,
                         dtypes=(torch.bfloat16, torch.float32)):
    """(T, D) shapes of a later layer (z_prev fp32, as the previous router returns it): zaya_router forward +
    backward (its training form, zaya_router_train; gradients of logits, gate and z reaching x, z_prev and every
    weight) against zaya_rt.ref.zaya_router
    in the op's dtype under autograd."""
    cases = []
    for dtype in dtypes:
        for T, D in shapes or FWD_BWD_SHAPES[device]:
            gen = torch.Generator().manual_seed(T + D)
            mk = lambda *s, scale=0.05: (scale * torch.randn(*s, generator=gen)).to(device=device, dtype=dtype)  # noqa: E731
            inputs = (mk(T, D, scale=1.0), torch.randn(T, R, generator=gen).to(device), mk(R, D), mk(R), mk(R),
                      1 + mk(R), mk(R, R), mk(R), mk(R, R), mk(R), mk(E + 1, R, scale=0.5),
                      (0.01 * torch.randn(E + 1, generator=gen)).to(device))
            flops = 3 * 2 * T * (D * R + 2 * R * R + R * (E + 1))
            cases.append(Case(
                "zaya_router fwd+bwd", f"T{T} D{D} R{R} E{E}", str(dtype).removeprefix("torch."),
                ours=fwd_bwd_call(lambda *a: ops.zaya_router(*a, 1e-5), inputs, frozen=(11,)),
                peer=fwd_bwd_call(lambda *a: ref.zaya_router(*a, 1e-5), inputs, frozen=(11,)),
                peer_name="ref.zaya_router under autograd", flops=flops,
                bytes_moved=(2 * T * D + R * D) * inputs[0].element_size()))
    return cases

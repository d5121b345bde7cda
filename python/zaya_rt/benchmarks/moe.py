"""MoE benchmark cases: zaya_rt's fused experts against transformers' eager expert loop, torch._grouped_mm and
a dense matmul chain with the same FLOPs (every token through one [2I, D] and one [D, I] matmul)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zaya_rt import ops
from zaya_rt.benchmarks.autograd_call import fwd_bwd_call
from zaya_rt.benchmarks.harness import Case

DEFAULT_SHAPES = {
    "cpu": [(4096, 512, 512, 16), (16, 512, 512, 16), (1, 512, 512, 16), (64, 512, 512, 16)],
    "cuda": [(16384, 2048, 2048, 16), (4096, 2048, 2048, 16), (64, 2048, 2048, 16), (16, 2048, 2048, 16),
             (1, 2048, 2048, 16)],
}


def _eager_loop(x, index, gate, w1, w2):
    """transformers' ZayaExperts eager forward (loop over the experts that received tokens)."""
    out = torch.zeros_like(x)
    for e in index.unique().tolist():
        if e >= w1.shape[0]:
            continue
        tokens = torch.where(index == e)[0]
        g, u = F.linear(x[tokens], w1[e]).chunk(2, dim=-1)
        y = F.linear(F.silu(g) * u, w2[e]) * gate[tokens, None]
        out.index_add_(0, tokens, y.to(out.dtype))
    return out


def _grouped_mm(x, index, gate, w1, w2):
    order = index.argsort()
    counts = torch.bincount(index, minlength=w1.shape[0] + 1)[: w1.shape[0]]
    offsets = counts.cumsum(0).to(torch.int32)
    xs = x[order]
    g, u = torch._grouped_mm(xs, w1.transpose(1, 2), offs=offsets).chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(g) * u, w2.transpose(1, 2), offs=offsets) * gate[order, None]
    return torch.zeros_like(x).index_add_(0, order, y)


def bf16_path_report() -> str:
    """One line naming the CPU bf16 GEMM path zaya_rt uses on this host (vdpbf16ps or fp32 FMAs) with the one-thread
    GFLOP/s it was chosen by: a bf16 GEMM through each path and each instruction's register-only peak."""
    from zaya_rt import _C

    r = _C.cpu_bf16_gemm_rates()
    if not r["has_dot"]:
        return f"cpu bf16 GEMM path: fp32 FMAs (the {_C.cpu_isa()} build has no vdpbf16ps)"
    path = "vdpbf16ps" if r["dot_chosen"] else "fp32 FMAs"
    forced = _C.cpu_bf16_dot() >= 0
    how = "forced by ZAYA_RT_CPU_BF16_DOT / set_cpu_bf16_dot" if forced else "the faster GEMM, measured once"
    return (f"cpu bf16 GEMM path: {path} ({how}); 1 thread, best of 7: GEMM via vdpbf16ps "
            f"{r['dot_gemm_gflops']:.0f} GFLOP/s ({r['dot_gemm_gflops'] / r['dot_peak_gflops']:.0%} of its "
            f"{r['dot_peak_gflops']:.0f} peak), via fp32 FMAs {r['fma_gemm_gflops']:.0f} GFLOP/s "
            f"({r['fma_gemm_gflops'] / r['fma_peak_gflops']:.0%} of its {r['fma_peak_gflops']:.0f} peak)")


def moe_cases(device: str = "cpu", shapes=None, dtypes=(torch.bfloat16, torch.float32), peers=None):
    """(T, D, I, E) shapes; peers from 'dense', 'transformers', 'grouped_mm'."""
    peers = peers or ("dense", "transformers", "grouped_mm")
    cases = []
    for dtype in dtypes:
        for T, D, I, E in shapes or DEFAULT_SHAPES[device]:
            gen = torch.Generator().manual_seed(T + D)
            x = torch.randn(T, D, generator=gen).to(device=device, dtype=dtype)
            w1 = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(device=device, dtype=dtype)
            w2 = (torch.randn(E, D, I, generator=gen) / I**0.5).to(device=device, dtype=dtype)
            index = torch.randint(0, E, (T,), generator=gen).to(device)
            gate = torch.rand(T, generator=gen).to(device=device, dtype=dtype)
            dense1, dense2 = w1[0].clone(), w2[0].clone()
            flops = 2 * T * D * 3 * I
            hit = int(torch.unique(index).numel())
            weight_bytes = hit * 3 * I * D * x.element_size()
            name = str(dtype).removeprefix("torch.")
            ours = lambda x=x, i=index, g=gate, a=w1, b=w2: ops.moe_experts(x, i, g, a, b)
            peer_fns = {
                "dense": (lambda x=x, a=dense1, b=dense2: F.linear(
                    (lambda h: F.silu(h[:, : h.shape[1] // 2]) * h[:, h.shape[1] // 2 :])(F.linear(x, a)), b),
                    "dense matmul chain, same FLOPs"),
                "transformers": (lambda x=x, i=index, g=gate, a=w1, b=w2: _eager_loop(x, i, g, a, b),
                                 "transformers eager expert loop"),
                "grouped_mm": (lambda x=x, i=index, g=gate, a=w1, b=w2: _grouped_mm(x, i, g, a, b),
                               "torch._grouped_mm"),
            }
            for peer in peers:
                fn, label = peer_fns[peer]
                cases.append(Case("moe_experts", f"T{T} D{D} I{I} E{E}", name, ours=ours, peer=fn, peer_name=label,
                                  bytes_moved=weight_bytes, flops=flops))
    return cases


GROUPED_SHAPES = {
    "cpu": [(4096, 1024, 512, 16)],
    "cuda": [(16384, 4096, 2048, 16), (16384, 2048, 2048, 16), (4096, 4096, 2048, 16)],
}


def grouped_gemm_cases(device: str = "cpu", shapes=None, dtypes=(torch.bfloat16,)):
    """(M, N, K, G) with rows spread evenly over the groups: zaya_rt.ops.grouped_gemm against one dense
    [M, K] x [K, N] matmul (cuBLAS / oneDNN, the same FLOPs) and torch._grouped_mm."""
    cases = []
    for dtype in dtypes:
        for M, N, K, G in shapes or GROUPED_SHAPES[device]:
            gen = torch.Generator().manual_seed(M + N)
            a = torch.randn(M, K, generator=gen).to(device=device, dtype=dtype)
            b = (torch.randn(G, N, K, generator=gen) / K**0.5).to(device=device, dtype=dtype)
            offsets = (torch.arange(1, G + 1) * (M // G)).to(device=device, dtype=torch.int32)
            dense = b[0].clone()
            name = str(dtype).removeprefix("torch.")
            flops = 2 * M * N * K
            nbytes = (M * K + G * N * K + M * N) * a.element_size()
            ours = lambda a=a, b=b, o=offsets: ops.grouped_gemm(a, b, o)
            for fn, label in (
                (lambda a=a, w=dense: a @ w.T, "dense matmul, same FLOPs"),
                (lambda a=a, b=b, o=offsets: torch._grouped_mm(a, b.transpose(1, 2), offs=o), "torch._grouped_mm"),
            ):
                cases.append(Case("grouped_gemm", f"M{M} N{N} K{K} G{G}", name, ours=ours, peer=fn,
                                  peer_name=label, bytes_moved=nbytes, flops=flops))
    return cases


def dispatch_cases(device: str = "cpu", tokens=(16, 4096, 16384), num_experts: int = 16):
    """moe_dispatch (stable sort of token slots by expert with offsets and inverse rows) against the PyTorch
    composition transformers uses (sort + histc + cumsum + inverse permutation)."""
    cases = []
    for T in tokens:
        gen = torch.Generator().manual_seed(T)
        index = torch.randint(0, num_experts + 1, (T,), generator=gen).to(device)

        def peer(index=index):
            ids, perm = torch.sort(index, stable=True)
            counts = torch.histc(ids.float(), bins=num_experts, min=0, max=num_experts - 1)
            offsets = counts.cumsum(0).to(torch.int32)
            rows = torch.empty_like(perm)
            rows[perm] = torch.arange(perm.numel(), device=perm.device)
            return offsets, perm, rows

        cases.append(Case("moe_dispatch", f"T{T} E{num_experts}", "int64",
                          ours=lambda index=index: ops.moe_dispatch(index, num_experts), peer=peer,
                          peer_name="torch.sort + histc + cumsum + inverse", bytes_moved=T * (8 + 4 + 4)))
    return cases


FWD_BWD_SHAPES = {"cpu": [(2048, 512, 512, 16)], "cuda": [(16384, 2048, 2048, 16)]}


def _grouped_mm_block(x, index, gate, w1, w2):
    """The expert block composed of torch._grouped_mm (top-1; index E = skip), differentiable by autograd."""
    num_experts = w1.shape[0]
    order = index.argsort(stable=True)
    offsets = torch.bincount(index, minlength=num_experts + 1)[:num_experts].cumsum(0).to(torch.int32)
    kept = order[: int(offsets[-1])]  # rows past the last offset are undefined in _grouped_mm's output
    g, u = torch._grouped_mm(x[kept], w1.transpose(1, 2), offs=offsets).chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(g) * u, w2.transpose(1, 2), offs=offsets) * gate[kept, None]
    return torch.zeros_like(x).index_add(0, kept, y)


def _moe_experts_kept(x, index, gate, w1, w2):
    """moe_experts with its gate-up activations kept for the backward (memory [T*k, 2I] for speed)."""
    return ops.moe_experts(x, index, gate, w1, w2, keep_activations=True)


def moe_fwd_bwd_cases(device: str = "cpu", shapes=None, dtypes=(torch.bfloat16, torch.float32)):
    """(T, D, I, E) shapes, top-1 routing with about one token in E + 1 skipped: moe_experts forward + backward
    (gradients of hidden, gate and both weights) against the torch._grouped_mm composition under autograd."""
    cases = []
    for dtype in dtypes:
        for T, D, I, E in shapes or FWD_BWD_SHAPES[device]:
            gen = torch.Generator().manual_seed(T + D + E)
            x = torch.randn(T, D, generator=gen).to(device=device, dtype=dtype)
            w1 = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(device=device, dtype=dtype)
            w2 = (torch.randn(E, D, I, generator=gen) / I**0.5).to(device=device, dtype=dtype)
            index = torch.randint(0, E + 1, (T,), generator=gen).to(device)
            gate = torch.rand(T, generator=gen).to(device=device, dtype=dtype)
            kept = int((index < E).sum())
            inputs = (x, index, gate, w1, w2)
            for label, forward in (("moe_experts fwd+bwd", ops.moe_experts),
                                   ("moe_experts fwd+bwd keep_activations", _moe_experts_kept)):
                cases.append(Case(
                    label, f"T{T} D{D} I{I} E{E}", str(dtype).removeprefix("torch."),
                    ours=fwd_bwd_call(forward, inputs), peer=fwd_bwd_call(_grouped_mm_block, inputs),
                    peer_name="torch._grouped_mm under autograd", bytes_moved=3 * 3 * E * I * D * x.element_size(),
                    flops=3 * 2 * kept * D * 3 * I))
    return cases

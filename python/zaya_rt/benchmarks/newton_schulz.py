"""Newton-Schulz benchmark case: zaya_rt's batched kernel against torch.optim.Muon's bf16 composition
(matmul + addmm per step) over the same stack of matrices, run as one batched composition (bmm + baddbmm)."""

from __future__ import annotations

import torch

from zaya_rt import ops
from zaya_rt.benchmarks.harness import Case
from zaya_rt.ops.newton_schulz import DEFAULT_COEFFICIENTS

DEFAULT_SHAPES = {"cpu": ((16, 1024, 512),), "cuda": ((16, 1024, 512), (64, 2048, 1024))}


def torch_newton_schulz(x: torch.Tensor, steps: int = 5, coefficients=DEFAULT_COEFFICIENTS, eps: float = 1e-7):
    """torch.optim.Muon's `_zeropower_via_newtonschulz`, batched over the leading dimension."""
    a, b, c = coefficients
    X = x.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        X = X.mT
    X = X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = X @ X.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        X = torch.baddbmm(X, update, X, beta=a)
    return X.mT if tall else X


def newton_schulz_cases(device: str = "cpu", shapes=None, steps: int = 5):
    """bf16 Newton-Schulz over [E, A, B] stacks (the Muon update of an expert stack)."""
    cases = []
    for shape in shapes or DEFAULT_SHAPES[device]:
        E, A, B = shape
        gen = torch.Generator(device="cpu").manual_seed(A * B + E)
        x = torch.randn(shape, generator=gen).to(device=device, dtype=torch.bfloat16)
        m, n = min(A, B), max(A, B)
        cases.append(Case(
            "newton_schulz", f"{E}x{A}x{B}", "bfloat16",
            ours=lambda x=x: ops.newton_schulz(x, steps),
            peer=lambda x=x: torch_newton_schulz(x, steps),
            peer_name="torch.optim.Muon's composition (bmm/baddbmm)",
            flops=E * steps * 2 * (2 * m * m * n + m * m * m),
        ))
    return cases

"""Reference Newton-Schulz orthogonalisation (see zaya_rt.ops.newton_schulz), in the dtype it is given."""

import torch


def newton_schulz(x: torch.Tensor, steps: int, coefficients: tuple[float, float, float], eps: float) -> torch.Tensor:
    """x [..., A, B] -> [..., A, B]: per matrix X = x (transposed when A > B) / max(||x||_F, eps), then `steps`
    times S = X X^T, X = a X + (b S + c S S) X; transposed back. Works in x's dtype (float64 for tests)."""
    a, b, c = coefficients
    tall = x.shape[-2] > x.shape[-1]
    X = x.mT if tall else x
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    X = X / norm.clamp(min=eps)
    for _ in range(steps):
        S = X @ X.mT
        X = a * X + (b * S + c * S @ S) @ X
    return X.mT if tall else X

"""Reference grouped GEMM (the contract of torch._grouped_mm with offs)."""

import torch


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """a [M, K], b [G, N, K], offsets [G] cumulative row ends -> [M, N]; rows past offsets[-1] are zero."""
    out = a.new_zeros(a.shape[0], b.shape[1])
    start = 0
    for g, end in enumerate(offsets.tolist()):
        out[start:end] = a[start:end] @ b[g].T
        start = end
    return out

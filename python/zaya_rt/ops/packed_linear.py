"""Packed-weight linear layer (CPU): the arguments of `_C.pack_linear_weight` and `_C.packed_linear`
(csrc/include/zaya_rt/packed_linear.h), field by field. Not a torch op: the runtime's fast path
(zaya_rt.runtime.direct.Linear) packs a weight once and runs decode-sized products on it.
"""

from __future__ import annotations

import torch

from zaya_rt import _C
from zaya_rt.ops._lib import DTYPE_CODES


def pack_linear_weight_params(weight: torch.Tensor, bias: torch.Tensor | None,
                              packed: torch.Tensor | None) -> _C.PackLinearParams:
    """weight [N, K] (unit inner stride), bias [N] in weight's dtype or None, packed: a 64-byte aligned uint8
    tensor of packed_linear_bytes bytes, or None to ask for that size first."""
    p = _C.PackLinearParams()
    p.weight, p.weight_row_stride = weight.data_ptr(), weight.stride(0)
    p.bias = 0 if bias is None else bias.data_ptr()
    p.packed, p.packed_bytes = (0, 0) if packed is None else (packed.data_ptr(), packed.numel())
    p.dtype = DTYPE_CODES[weight.dtype]
    p.N, p.K = weight.shape
    return p


def packed_linear_params(x: torch.Tensor, packed: torch.Tensor, out: torch.Tensor) -> _C.PackedLinearParams:
    """x [M, K] and out [M, N] (unit inner stride) in the packed weight's dtype; packed from pack_linear_weight
    with that dtype, N and K. No workspace yet (packed_linear_workspace sizes it)."""
    p = _C.PackedLinearParams()
    M, K = x.shape
    p.x, p.x_row_stride = x.data_ptr(), x.stride(0) if M > 1 else K
    p.packed = packed.data_ptr()
    p.out, p.out_row_stride = out.data_ptr(), out.stride(0) if M > 1 else out.shape[1]
    p.dtype = DTYPE_CODES[x.dtype]
    p.M, p.N, p.K = M, out.shape[1], K
    p.workspace, p.workspace_bytes = 0, 0
    return p

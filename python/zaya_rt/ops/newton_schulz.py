"""Batched Newton-Schulz orthogonalisation, Muon's update direction (SPEC section 7).

Op (namespace `torch.ops.zaya_rt`), with a fake kernel and no autograd (an optimizer step runs it without):
  newton_schulz(x[..., A, B], steps, coefficients[3], eps, compute_dtype) -> [..., A, B] in compute_dtype
The math and its rounding points are those of torch.optim.Muon's bf16 composition (zaya_rt/newton_schulz.h);
each [A, B] matrix of the stack is orthogonalised on its own, all of them in one kernel call.
"""

from __future__ import annotations

import math
import threading

import torch

from zaya_rt import _C
from zaya_rt.ops._lib import DTYPE_CODES, check_tensor, device_args, lib, register_kernels, set_workspace

lib.define(
    "newton_schulz(Tensor x, int steps, float[] coefficients, float eps, ScalarType compute_dtype) -> Tensor"
)

COMPUTE_DTYPES = (torch.bfloat16, torch.float32)
_held = threading.local()
DEFAULT_COEFFICIENTS = (3.4445, -4.775, 2.0315)


def _check_args(x, steps, coefficients, eps, compute_dtype) -> None:
    op = "newton_schulz"
    check_tensor(op, "x", x)
    if x.dim() < 2:
        raise ValueError(f"zaya_rt.{op}: x must have at least 2 dimensions [..., A, B], got shape {tuple(x.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 100:
        raise ValueError(f"zaya_rt.{op}: steps must be an int in [0, 100), got {steps!r}")
    coefficients = tuple(coefficients) if isinstance(coefficients, (tuple, list)) else None
    if coefficients is None or len(coefficients) != 3 or not all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in coefficients
    ):
        raise ValueError(f"zaya_rt.{op}: coefficients must be three finite numbers (a, b, c)")
    if not isinstance(eps, (int, float)) or not (eps >= 0.0) or not math.isfinite(eps):
        raise ValueError(f"zaya_rt.{op}: eps must be a finite non-negative number, got {eps!r}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise TypeError(f"zaya_rt.{op}: compute_dtype must be torch.bfloat16 or torch.float32, got {compute_dtype}")


def _workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    """The kernel's workspace. On the CPU each thread keeps one growing buffer: an optimizer calls the op with
    the same shapes every step, and a fresh allocation of the ~100 MB a large expert stack needs would cost
    every call its page faults."""
    if device.type != "cpu":
        return torch.empty(max(nbytes, 64), dtype=torch.uint8, device=device)
    buf = getattr(_held, "buf", None)
    if buf is None or buf.numel() < nbytes:
        buf = _held.buf = torch.empty(max(nbytes, 64), dtype=torch.uint8)
    return buf


def newton_schulz_params(x3: torch.Tensor, out: torch.Tensor, steps: int, coefficients,
                         eps: float) -> _C.NewtonSchulzParams:
    """The kernel's arguments, field by field: x3 [batch, rows, cols] and out (contiguous, same shape) in the
    compute dtype, the coefficients (a, b, c) and eps. No workspace yet (newton_schulz_workspace sizes it)."""
    p = _C.NewtonSchulzParams()
    p.x = x3.data_ptr()
    p.x_batch_stride, p.x_row_stride, p.x_col_stride = x3.stride()
    p.out = out.data_ptr()
    p.dtype = DTYPE_CODES[x3.dtype]
    p.batch, p.rows, p.cols = x3.shape
    p.steps = steps
    p.a, p.b, p.c = (float(v) for v in coefficients)
    p.eps = float(eps)
    p.workspace, p.workspace_bytes = 0, 0
    return p


def _newton_schulz_impl(x, steps, coefficients, eps, compute_dtype):
    _check_args(x, steps, coefficients, eps, compute_dtype)
    rows, cols = x.shape[-2:]
    out = torch.empty(x.shape, dtype=compute_dtype, device=x.device)
    if out.numel() == 0:
        return out
    x3 = x.to(compute_dtype).reshape(-1, rows, cols)  # a view when the leading dimensions allow one
    dev = device_args(x)
    p = newton_schulz_params(x3, out, steps, coefficients, eps)
    ws = _workspace(_C.newton_schulz_workspace(p, dev[0]), x.device)
    _C.newton_schulz(set_workspace(p, ws), *dev)
    return out


def _newton_schulz_fake(x, steps, coefficients, eps, compute_dtype):
    _check_args(x, steps, coefficients, eps, compute_dtype)
    return x.new_empty(x.shape, dtype=compute_dtype)


register_kernels("newton_schulz", _newton_schulz_impl, _newton_schulz_fake)


def newton_schulz(
    x: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
    eps: float = 1e-7,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Orthogonalises each matrix of x [..., A, B] (float32/float16/bfloat16) by `steps` quintic Newton-Schulz
    iterations with coefficients (a, b, c), after scaling it to unit Frobenius norm (floored at eps).

    Computes and returns in compute_dtype (bfloat16 by default, as torch.optim.Muon; float32 selectable), with
    fp32 accumulation. Returns [..., A, B]: approximately U V^T of each matrix's SVD U S V^T.
    """
    _check_args(x, steps, coefficients, eps, compute_dtype)
    return torch.ops.zaya_rt.newton_schulz(x, steps, [float(v) for v in coefficients], float(eps), compute_dtype)

"""Fused softmax-cross-entropy rows (CPU), the post-GEMM half of the chunked LM-head loss (model/loss.py).

  cross_entropy_rows(logits![n, V], targets[n] int64, ignore_index, grad_scale) -> losses[n] float32
      per row, in fp32: losses = logsumexp(row) - row[target]; the row is overwritten IN PLACE with
      (softmax(row) - onehot(target)) * grad_scale, rounded once to the logits' dtype. A row whose target is
      ignore_index gets loss 0 and a zero gradient; a row holding a NaN or +inf, or only -inf, gets a NaN loss
      and a NaN gradient (as log_softmax gives). Elements of a strided row buffer past V are never touched.

logits float32/float16/bfloat16 with unit inner stride (any row stride); every non-ignored target must lie in
[0, V) (ValueError naming the row otherwise). The kernel is csrc/cpu/cross_entropy.cpp; not differentiable (it
writes the gradient itself).
"""

from __future__ import annotations

import math

import torch

from zaya_rt import _C
from zaya_rt.ops._lib import DTYPE_CODES, call_op, check_same_device, check_tensor, device_args, lib, register_kernels

_OP = "cross_entropy_rows"

lib.define("cross_entropy_rows(Tensor(a!) logits, Tensor targets, int ignore_index, float grad_scale) -> Tensor")


def cross_entropy_rows_params(logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, ignore_index: int,
                              grad_scale: float) -> _C.CrossEntropyRowsParams:
    """logits [n, V] (unit inner stride), targets [n] int64 and losses [n] float32 contiguous."""
    p = _C.CrossEntropyRowsParams()
    n, V = logits.shape
    p.logits, p.logits_row_stride = logits.data_ptr(), logits.stride(0) if n > 1 else V
    p.targets, p.losses = targets.data_ptr(), losses.data_ptr()
    p.dtype, p.rows, p.vocab = DTYPE_CODES[logits.dtype], n, V
    p.ignore_index, p.grad_scale = ignore_index, grad_scale
    return p


def _check(logits, targets, ignore_index, grad_scale) -> None:
    check_tensor(_OP, "logits", logits, ndim=2)
    check_tensor(_OP, "targets", targets, dtypes=(torch.int64,), ndim=1)
    if logits.device.type not in ("cpu", "meta"):
        raise ValueError(f"zaya_rt.{_OP}: runs on the CPU only, got logits on {logits.device}")
    check_same_device(_OP, logits=logits, targets=targets)
    n, V = logits.shape
    if V < 1:
        raise ValueError(f"zaya_rt.{_OP}: logits must have at least one column, got shape {tuple(logits.shape)}")
    if targets.shape[0] != n:
        raise ValueError(f"zaya_rt.{_OP}: targets has {targets.shape[0]} entries for {n} logits rows")
    if V > 1 and n and logits.stride(1) != 1:
        raise ValueError(f"zaya_rt.{_OP}: logits rows must have unit inner stride, got strides {logits.stride()}")
    if n > 1 and logits.stride(0) < V:
        raise ValueError(f"zaya_rt.{_OP}: logits rows overlap (row stride {logits.stride(0)} < {V})")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"zaya_rt.{_OP}: ignore_index must be an int, got {type(ignore_index).__name__}")
    if not isinstance(grad_scale, (int, float)) or isinstance(grad_scale, bool) or not math.isfinite(grad_scale):
        raise ValueError(f"zaya_rt.{_OP}: grad_scale must be a finite number, got {grad_scale!r}")


def _cross_entropy_rows(logits, targets, ignore_index, grad_scale):
    _check(logits, targets, ignore_index, grad_scale)
    losses = torch.empty(logits.shape[0], dtype=torch.float32)
    if logits.shape[0]:
        # _C checks every target against [0, V) and ignore_index (ValueError naming the row).
        _C.cross_entropy_rows(cross_entropy_rows_params(logits, targets.contiguous(), losses, ignore_index,
                                                        float(grad_scale)), *device_args(logits))
    return losses


def _cross_entropy_rows_fake(logits, targets, ignore_index, grad_scale):
    _check(logits, targets, ignore_index, grad_scale)
    return logits.new_empty(logits.shape[0], dtype=torch.float32)


register_kernels(_OP, _cross_entropy_rows, _cross_entropy_rows_fake)


def cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                       grad_scale: float = 1.0) -> torch.Tensor:
    """Losses [n] float32 of logits [n, V] (float32/float16/bfloat16, CPU, unit inner stride) against targets [n]
    int64; overwrites logits with (softmax - one-hot) * grad_scale in their dtype. See the module docstring."""
    for name, t in (("logits", logits), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"zaya_rt.{_OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return call_op(torch.ops.zaya_rt.cross_entropy_rows.default, (logits, targets, ignore_index, grad_scale),
                   _cross_entropy_rows)

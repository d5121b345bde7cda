"""Norms family: RMSNorm, and residual scaling fused with the following RMSNorm (SPEC section 3, steps 1, 5, 8).

Ops (namespace `torch.ops.zaya_rt`), each with a fake kernel and autograd:
  rms_norm(x[..., D], weight[D], eps) -> (out[..., D] in weight.dtype, rstd[...] fp32)
  residual_rms_norm(y[..., D], h[..., D], y_bias, y_scale, h_bias, h_scale, weight, eps)
      -> (r[..., D] fp32, out[..., D] in weight.dtype, rstd[...] fp32)
with r = (y + y_bias) * y_scale + (h + h_bias) * h_scale and out = RMSNorm(r) * weight.
"""

from __future__ import annotations

import torch

from zaya_rt import _C
from zaya_rt.ops._lib import (
    DTYPE_CODES, FLOAT_DTYPES, as_rows, check_eps, check_same_device, check_tensor, device_args, lib,
    register_kernels, row_stride,
)

lib.define("rms_norm(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)")
lib.define("rms_norm_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)")
lib.define(
    "residual_rms_norm(Tensor y, Tensor h, Tensor y_bias, Tensor y_scale, Tensor h_bias, Tensor h_scale, "
    "Tensor weight, float eps) -> (Tensor, Tensor, Tensor)"
)
lib.define(
    "residual_rms_norm_backward(Tensor grad_r, Tensor grad_out, Tensor y, Tensor h, Tensor y_bias, "
    "Tensor y_scale, Tensor h_bias, Tensor h_scale, Tensor weight, Tensor r, Tensor rstd) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)

_PARAM_NAMES = ("y_bias", "y_scale", "h_bias", "h_scale")


def _check_norm_args(op: str, x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    check_tensor(op, "x", x)
    check_tensor(op, "weight", weight, ndim=1)
    if x.dim() < 1:
        raise ValueError(f"zaya_rt.{op}: x must have at least one dimension, got a scalar")
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"zaya_rt.{op}: x's last dimension ({x.shape[-1]}) does not match weight ({weight.shape[0]})"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"zaya_rt.{op}: hidden size must be positive")
    check_same_device(op, x=x, weight=weight)
    check_eps(op, eps)


def _residual_args_ok(y, h, params, weight, eps) -> bool:
    """Cheap test of the common, valid case; _check_residual_args explains any failure."""
    w_shape, w_dtype, dev = weight.shape, weight.dtype, weight.device
    if not (
        y.dtype in FLOAT_DTYPES and h.dtype in FLOAT_DTYPES and w_dtype in FLOAT_DTYPES and len(w_shape) == 1
        and y.shape == h.shape and y.dim() >= 1 and y.shape[-1] == w_shape[0] and w_shape[0] > 0
        and y.device == dev and h.device == dev and 0.0 <= eps < float("inf")
    ):
        return False
    return all(p.shape == w_shape and p.dtype == w_dtype and p.device == dev for p in params)


def _check_residual_args(op, y, h, params, weight, eps) -> None:
    check_tensor(op, "y", y)
    check_tensor(op, "h", h)
    _check_norm_args(op, y, weight, eps)
    if h.shape != y.shape:
        raise ValueError(f"zaya_rt.{op}: h has shape {tuple(h.shape)} but y has {tuple(y.shape)}")
    for name, p in zip(_PARAM_NAMES, params):
        check_tensor(op, name, p, ndim=1)
        if p.shape != weight.shape:
            raise ValueError(f"zaya_rt.{op}: {name} has shape {tuple(p.shape)}, expected {tuple(weight.shape)}")
        if p.dtype != weight.dtype:
            raise TypeError(f"zaya_rt.{op}: {name} has dtype {p.dtype}, expected the norm weight's {weight.dtype}")
    check_same_device(op, y=y, h=h, weight=weight, **dict(zip(_PARAM_NAMES, params)))


# ---- the kernels' arguments (csrc/bindings_norms.cpp), field by field --------------------------------------------


def rms_norm_fwd_params(x2: torch.Tensor, weight: torch.Tensor, out2: torch.Tensor, rstd: torch.Tensor,
                        eps: float) -> _C.RmsNormFwdParams:
    """x2 [rows, dim] and out2 [rows, dim] (unit inner stride; out2 in weight's dtype), weight [dim]
    contiguous, rstd [rows] fp32 contiguous."""
    p = _C.RmsNormFwdParams()
    p.x, p.x_row_stride, p.x_dtype = x2.data_ptr(), row_stride(x2), DTYPE_CODES[x2.dtype]
    p.weight, p.w_dtype = weight.data_ptr(), DTYPE_CODES[weight.dtype]
    p.out, p.out_row_stride = out2.data_ptr(), row_stride(out2)
    p.rstd = rstd.data_ptr()
    p.rows, p.dim = x2.shape
    p.eps = float(eps)
    return p


def rms_norm_bwd_params(go2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                        grad_x: torch.Tensor, partials: torch.Tensor, grad_w: torch.Tensor) -> _C.RmsNormBwdParams:
    """go2 [rows, dim] in weight's dtype, x2 and grad_x [rows, dim] in x's dtype (unit inner stride), weight
    [dim], rstd [rows] fp32, partials [num_partials, dim] fp32 and grad_w [dim] fp32, all contiguous."""
    p = _C.RmsNormBwdParams()
    p.grad_out, p.grad_out_row_stride = go2.data_ptr(), row_stride(go2)
    p.x, p.x_row_stride, p.x_dtype = x2.data_ptr(), row_stride(x2), DTYPE_CODES[x2.dtype]
    p.weight, p.w_dtype = weight.data_ptr(), DTYPE_CODES[weight.dtype]
    p.rstd = rstd.data_ptr()
    p.grad_x, p.grad_x_row_stride = grad_x.data_ptr(), row_stride(grad_x)
    p.partials, p.num_partials = partials.data_ptr(), partials.shape[0]
    p.grad_weight = grad_w.data_ptr()
    p.rows, p.dim = x2.shape
    return p


def _set_residual_fields(p, y2, h2, params, weight, r2) -> None:
    """The fields ResidualRmsNormFwdParams and ResidualRmsNormBwdParams share."""
    p.y, p.y_row_stride, p.y_dtype = y2.data_ptr(), row_stride(y2), DTYPE_CODES[y2.dtype]
    p.h, p.h_row_stride, p.h_dtype = h2.data_ptr(), row_stride(h2), DTYPE_CODES[h2.dtype]
    p.y_bias, p.y_scale, p.h_bias, p.h_scale = (t.data_ptr() for t in params)
    p.p_dtype = DTYPE_CODES[params[0].dtype]
    p.weight, p.w_dtype = weight.data_ptr(), DTYPE_CODES[weight.dtype]
    p.r, p.r_row_stride = r2.data_ptr(), row_stride(r2)
    p.rows, p.dim = y2.shape


def residual_rms_norm_fwd_params(y2, h2, params, weight, r2, out2, rstd, eps) -> _C.ResidualRmsNormFwdParams:
    """y2, h2 [rows, dim] (any float dtypes, unit inner stride), params (y_bias, y_scale, h_bias, h_scale) and
    weight [dim] contiguous in one dtype, r2 [rows, dim] fp32 and out2 [rows, dim] in weight's dtype (unit inner
    stride), rstd [rows] fp32 contiguous."""
    p = _C.ResidualRmsNormFwdParams()
    _set_residual_fields(p, y2, h2, params, weight, r2)
    p.out, p.out_row_stride = out2.data_ptr(), row_stride(out2)
    p.rstd = rstd.data_ptr()
    p.eps = float(eps)
    return p


def residual_rms_norm_bwd_params(gr2, go2, y2, h2, params, weight, r2, rstd, grad_y, grad_h, partials,
                                 grad_params) -> _C.ResidualRmsNormBwdParams:
    """gr2 [rows, dim] fp32, go2 [rows, dim] in weight's dtype, y2/h2 and grad_y/grad_h [rows, dim] (unit inner
    stride), params and weight as in residual_rms_norm_fwd_params, r2 [rows, dim] fp32, rstd [rows] fp32,
    partials [num_partials, 5, dim] fp32 and grad_params [5, dim] fp32 contiguous."""
    p = _C.ResidualRmsNormBwdParams()
    p.grad_r, p.grad_r_row_stride = gr2.data_ptr(), row_stride(gr2)
    p.grad_out, p.grad_out_row_stride = go2.data_ptr(), row_stride(go2)
    _set_residual_fields(p, y2, h2, params, weight, r2)
    p.rstd = rstd.data_ptr()
    p.grad_y, p.grad_y_row_stride = grad_y.data_ptr(), row_stride(grad_y)
    p.grad_h, p.grad_h_row_stride = grad_h.data_ptr(), row_stride(grad_h)
    p.partials, p.num_partials = partials.data_ptr(), partials.shape[0]
    p.grad_params = grad_params.data_ptr()
    return p


# ---- rms_norm ---------------------------------------------------------------------------------------------


def _rms_norm_impl(x: torch.Tensor, weight: torch.Tensor, eps: float):
    _check_norm_args("rms_norm", x, weight, eps)
    dim = weight.shape[0]
    x2 = as_rows(x, dim)
    weight = weight.contiguous()
    out = torch.empty(x.shape, dtype=weight.dtype, device=x.device)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    _C.rms_norm_fwd(rms_norm_fwd_params(x2, weight, out.view(-1, dim), rstd, eps), *device_args(x))
    return out, rstd


def _rms_norm_fake(x, weight, eps):
    _check_norm_args("rms_norm", x, weight, eps)
    return x.new_empty(x.shape, dtype=weight.dtype), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _rms_norm_backward_impl(grad_out, x, weight, rstd):
    dim = weight.shape[0]
    x2 = as_rows(x, dim)
    go2 = as_rows(grad_out.to(weight.dtype), dim)
    weight = weight.contiguous()
    rstd = rstd.contiguous()
    rows = x2.shape[0]
    grad_x = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    dev = device_args(x)
    num_partials = _C.norm_bwd_num_partials(dev[0], rows, dim)
    partials = torch.empty((num_partials, dim), dtype=torch.float32, device=x.device)
    grad_w = torch.empty(dim, dtype=torch.float32, device=x.device)
    _C.rms_norm_bwd(rms_norm_bwd_params(go2, x2, weight, rstd, grad_x, partials, grad_w), *dev)
    return grad_x.view(x.shape), grad_w.to(weight.dtype)


def _rms_norm_backward_fake(grad_out, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])


def _rms_norm_backward(ctx, grad_out, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    grad_x, grad_w = torch.ops.zaya_rt.rms_norm_backward(grad_out, x, weight, rstd)
    return grad_x, grad_w, None


# ---- residual_rms_norm ------------------------------------------------------------------------------------


def _residual_rms_norm_impl(y, h, y_bias, y_scale, h_bias, h_scale, weight, eps):
    params = (y_bias, y_scale, h_bias, h_scale)
    if not _residual_args_ok(y, h, params, weight, eps):
        _check_residual_args("residual_rms_norm", y, h, params, weight, eps)
    dim = weight.shape[0]
    y2, h2 = as_rows(y, dim), as_rows(h, dim)
    yb, ys, hb, hs, weight = (p.contiguous() for p in (*params, weight))
    rows = y2.shape[0]
    r = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    out = torch.empty(y.shape, dtype=weight.dtype, device=y.device)
    rstd = torch.empty(y.shape[:-1], dtype=torch.float32, device=y.device)
    _C.residual_rms_norm_fwd(
        residual_rms_norm_fwd_params(y2, h2, (yb, ys, hb, hs), weight, r.view(rows, dim), out.view(rows, dim),
                                     rstd, eps),
        *device_args(y),
    )
    return r, out, rstd


def _residual_rms_norm_fake(y, h, y_bias, y_scale, h_bias, h_scale, weight, eps):
    _check_residual_args("residual_rms_norm", y, h, (y_bias, y_scale, h_bias, h_scale), weight, eps)
    return (
        y.new_empty(y.shape, dtype=torch.float32),
        y.new_empty(y.shape, dtype=weight.dtype),
        y.new_empty(y.shape[:-1], dtype=torch.float32),
    )


def _residual_rms_norm_backward_impl(grad_r, grad_out, y, h, y_bias, y_scale, h_bias, h_scale, weight, r, rstd):
    dim = weight.shape[0]
    y2, h2, r2 = as_rows(y, dim), as_rows(h, dim), as_rows(r, dim)
    gr2 = as_rows(grad_r.to(torch.float32), dim)
    go2 = as_rows(grad_out.to(weight.dtype), dim)
    yb, ys, hb, hs, weight = (p.contiguous() for p in (y_bias, y_scale, h_bias, h_scale, weight))
    rstd = rstd.contiguous()
    rows = y2.shape[0]
    grad_y = torch.empty((rows, dim), dtype=y.dtype, device=y.device)
    grad_h = torch.empty((rows, dim), dtype=h.dtype, device=y.device)
    dev = device_args(y)
    num_partials = _C.norm_bwd_num_partials(dev[0], rows, dim)
    partials = torch.empty((num_partials, 5, dim), dtype=torch.float32, device=y.device)
    grad_params = torch.empty((5, dim), dtype=torch.float32, device=y.device)
    _C.residual_rms_norm_bwd(
        residual_rms_norm_bwd_params(gr2, go2, y2, h2, (yb, ys, hb, hs), weight, r2, rstd, grad_y, grad_h,
                                     partials, grad_params),
        *dev,
    )
    gw, gyb, gys, ghb, ghs = (g.to(weight.dtype, copy=True) for g in grad_params)  # 5 unaliased outputs
    return grad_y.view(y.shape), grad_h.view(h.shape), gyb, gys, ghb, ghs, gw


def _residual_rms_norm_backward_fake(grad_r, grad_out, y, h, y_bias, y_scale, h_bias, h_scale, weight, r, rstd):
    return (
        torch.empty_like(y), torch.empty_like(h), torch.empty_like(y_bias), torch.empty_like(y_scale),
        torch.empty_like(h_bias), torch.empty_like(h_scale), torch.empty_like(weight),
    )


def _residual_rms_norm_setup(ctx, inputs, output):
    y, h, y_bias, y_scale, h_bias, h_scale, weight, _ = inputs
    r, _, rstd = output
    ctx.save_for_backward(y, h, y_bias, y_scale, h_bias, h_scale, weight, r, rstd)
    ctx.mark_non_differentiable(rstd)


def _residual_rms_norm_backward(ctx, grad_r, grad_out, _grad_rstd):
    return (*torch.ops.zaya_rt.residual_rms_norm_backward(grad_r, grad_out, *ctx.saved_tensors), None)


register_kernels("rms_norm_backward", _rms_norm_backward_impl, _rms_norm_backward_fake)
register_kernels("residual_rms_norm_backward", _residual_rms_norm_backward_impl, _residual_rms_norm_backward_fake)
register_kernels("rms_norm", _rms_norm_impl, _rms_norm_fake, (_rms_norm_setup, _rms_norm_backward))
register_kernels("residual_rms_norm", _residual_rms_norm_impl, _residual_rms_norm_fake,
                 (_residual_rms_norm_setup, _residual_rms_norm_backward))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dimension.

    x: [..., D] float32/float16/bfloat16; weight: [D]. Returns [..., D] in weight.dtype:
    weight * cast(x * rsqrt(mean(x^2) + eps)), statistics in fp32.
    """
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        _check_norm_args("rms_norm", x, weight, eps)  # raises the TypeError naming the argument
    return torch.ops.zaya_rt.rms_norm(x, weight, eps)[0]


def residual_rms_norm(
    y: torch.Tensor,
    h: torch.Tensor,
    y_bias: torch.Tensor,
    y_scale: torch.Tensor,
    h_bias: torch.Tensor,
    h_scale: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ZAYA residual scaling fused with the next RMSNorm.

    y (sub-layer output) and h (residual stream): [..., D]; y_bias, y_scale, h_bias, h_scale, weight: [D],
    all in weight's dtype. Returns (r, out): r = (y + y_bias) * y_scale + (h + h_bias) * h_scale in fp32
    and out = rms_norm(r, weight, eps) in weight.dtype.
    """
    if not all(isinstance(t, torch.Tensor) for t in (y, h, y_bias, y_scale, h_bias, h_scale, weight)):
        _check_residual_args("residual_rms_norm", y, h, (y_bias, y_scale, h_bias, h_scale), weight, eps)
    r, out, _ = torch.ops.zaya_rt.residual_rms_norm(y, h, y_bias, y_scale, h_bias, h_scale, weight, eps)
    return r, out

"""ZAYA1 router (SPEC section 3, step 6) as one op.

  zaya_router(x[T, D], z_prev[T, R]?, down_w[R, D], down_b[R], eda_scale[R]?, norm_w[R], fc1_w[R, R], fc1_b[R],
              fc2_w[R, R], fc2_b[R], out_w[C, R], balancing_bias[C] fp32, eps)
      -> (logits[T, C] fp32, gate[T] fp32, choice[T] int64, z[T, R] fp32)

z = x W_down^T + b (+ eda_scale * z_prev), logits = W_out GELU(W2 GELU(W1 RMSNorm(z) + b1) + b2), p = softmax,
choice = argmax(p + balancing_bias) (C - 1 = skip), gate = p[choice] (0 for skip). Gradients flow through
logits, gate and z to every weight, x and z_prev; choice and balancing_bias get none.
Fused kernels run on the CPU and, in a CUDA or HIP build, on the GPU (f32/f16/bf16). On the GPU, batches of more
than _GPU_FUSED_DOWN_MAX_TOKENS tokens take the down projection from torch (a cuBLAS/hipBLAS GEMM) and the kernel
does the rest; smaller ones (decode) run all of it in the kernels. float64 (for gradcheck) and GPUs without a GPU
build of _C use the same math composed of PyTorch ops.

Training: when a gradient is wanted for bf16 or fp32 on the CPU, zaya_router() runs zaya_router_train instead, the same router
composed of PyTorch products (oneDNN's GEMMs on the CPU) and zaya_rt's RMSNorm, which also returns rstd and the MLP's
activations so that its backward recomputes nothing (torch.ops.zaya_rt.zaya_router under autograd keeps the
kernel forward and recomputes the R-wide middle in its backward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zaya_rt import _C, ref
from zaya_rt.ops._lib import (
    DTYPE_CODES, FLOAT_DTYPES, call_op, check_eps, check_same_device, check_tensor, device_args, lib,
    register_autograd, register_kernels, set_workspace, workspace,
)

lib.define(
    "zaya_router(Tensor x, Tensor? z_prev, Tensor down_w, Tensor down_b, Tensor? eda_scale, Tensor norm_w, "
    "Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor out_w, Tensor balancing_bias, float eps) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)
# The training form: the same outputs, then what the backward reuses instead of recomputing (see _train_impl).
lib.define(
    "zaya_router_train(Tensor x, Tensor? z_prev, Tensor down_w, Tensor down_b, Tensor? eda_scale, Tensor norm_w, "
    "Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor out_w, Tensor balancing_bias, float eps) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)

_ALL_FLOATS = (*FLOAT_DTYPES, torch.float64)
_FAST_DTYPES = frozenset(FLOAT_DTYPES)
_BIAS_DTYPES = frozenset((torch.float32, torch.float64))
# Above this many tokens the GPU path computes x W_down^T + b with torch (a real GEMM by then; see
# cuda/router_kernels.cuh); at or below it the router's own down-projection kernel does.
_GPU_FUSED_DOWN_MAX_TOKENS = 64
_TENSOR_OR_NONE = frozenset((torch.Tensor, type(None)))
_CPU_DEVICE_ARGS = (0, 0, 0)  # device_args() of a CPU tensor
_WEIGHT_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))  # what the fast path takes as a weight
_NAMES = ("x", "z_prev", "down_w", "down_b", "eda_scale", "norm_w", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w",
          "balancing_bias")


def _check(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps):
    op = "zaya_router"
    check_tensor(op, "x", x, dtypes=_ALL_FLOATS, ndim=2)
    T, D = x.shape
    check_tensor(op, "down_w", down_w, dtypes=_ALL_FLOATS, ndim=2)
    R = down_w.shape[0]
    check_tensor(op, "out_w", out_w, dtypes=_ALL_FLOATS, ndim=2)
    C = out_w.shape[0]
    want = {"down_w": (R, D), "down_b": (R,), "norm_w": (R,), "fc1_w": (R, R), "fc1_b": (R,), "fc2_w": (R, R),
            "fc2_b": (R,), "out_w": (C, R), "z_prev": (T, R), "eda_scale": (R,)}
    given = dict(zip(_NAMES, (x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w)))
    if (z_prev is None) != (eda_scale is None):
        raise ValueError(f"zaya_rt.{op}: z_prev and eda_scale come together (both None on the first layer)")
    for name, shape in want.items():
        t = given[name]
        if t is None:
            continue
        check_tensor(op, name, t, dtypes=_ALL_FLOATS)
        if tuple(t.shape) != shape:
            raise ValueError(f"zaya_rt.{op}: {name} has shape {tuple(t.shape)}, expected {shape}")
        if name != "z_prev" and t.dtype != x.dtype:
            raise TypeError(f"zaya_rt.{op}: {name} has dtype {t.dtype}, x has {x.dtype}")
    check_tensor(op, "balancing_bias", balancing_bias, dtypes=(torch.float32, torch.float64), ndim=1)
    if balancing_bias.shape[0] != C or C < 2:
        raise ValueError(f"zaya_rt.{op}: balancing_bias has {balancing_bias.shape[0]} entries for {C} classes "
                         "(experts + skip, at least 2)")
    check_same_device(op, **{k: v for k, v in given.items() if v is not None}, balancing_bias=balancing_bias)
    check_eps(op, eps)


def _reference(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps):
    """zaya_rt.ref.zaya_router at max(dtype, fp32) precision: the op's path off the CPU and for float64."""
    wide = torch.promote_types(x.dtype, torch.float32)
    tensors = (x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w)
    return ref.zaya_router(*(None if t is None else t.to(wide) for t in tensors), balancing_bias, eps)


def _well_formed_cpu(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                     balancing_bias, eps) -> bool:
    """True when every argument is one that _check accepts, for CPU tensors of one f32/f16/bf16 dtype with
    contiguous weights, vectors and z_prev: the inference hot path (straight to _launch), checked in a few
    microseconds. Anything else goes through _check (which raises the precise error, or accepts float64, GPU and
    strided inputs)."""
    dt = x.dtype
    if dt not in _FAST_DTYPES or not x.is_cpu or x.dim() != 2:
        return False
    for w in (down_w, out_w):
        if type(w) not in _WEIGHT_TYPES or w.dtype is not dt or w.dim() != 2 or not w.is_cpu:
            return False
    T, D = x.shape
    R, C = down_w.shape[0], out_w.shape[0]
    if (down_w.shape[1] != D or out_w.shape[1] != R or C < 2 or balancing_bias.dtype not in _BIAS_DTYPES
            or balancing_bias.shape != (C,) or not balancing_bias.is_cpu or type(eps) is not float
            or not 0.0 <= eps < math.inf):
        return False
    vec, mat = (R,), (R, R)
    for t, shape in ((down_b, vec), (norm_w, vec), (fc1_w, mat), (fc1_b, vec), (fc2_w, mat), (fc2_b, vec)):
        if type(t) not in _WEIGHT_TYPES or t.dtype is not dt or t.shape != shape or not t.is_cpu:
            return False
    if not all(t.is_contiguous() for t in (down_w, down_b, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias)):
        return False
    if z_prev is None:
        return eda_scale is None
    return (eda_scale is not None and eda_scale.dtype is dt and eda_scale.shape == vec and eda_scale.is_cpu
            and z_prev.dtype in _FAST_DTYPES and z_prev.shape == (T, R) and z_prev.is_cpu
            and eda_scale.is_contiguous() and z_prev.is_contiguous())


def route(device_type: str, dtype: torch.dtype, gpu_backend: str | None = None) -> str:
    """The forward's implementation for x of `dtype` on a `device_type` device with _C built for `gpu_backend`
    (default: this _C's): "kernel", or "reference" (float64, or no GPU backend off the CPU). The backward is
    differentiated by hand (_backward) either way."""
    backend = _C.gpu_backend if gpu_backend is None else gpu_backend
    if dtype == torch.float64 or (device_type != "cpu" and backend == "none"):
        return "reference"
    return "kernel"


def _impl(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps):
    args = (x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps)
    if not _well_formed_cpu(*args):
        _check(*args)
        if route(x.device.type, x.dtype) == "reference":
            return _reference(*args)
        down_w, down_b, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias = (
            t.contiguous() for t in (down_w, down_b, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias))
        eda_scale = eda_scale.contiguous() if eda_scale is not None else None
        z_prev = z_prev.contiguous() if z_prev is not None else None
        eps = float(eps)
    return _launch(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
                   eps)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def zaya_router_params(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, bias, eps,
                       logits, gate, choice, z, z0=None) -> _C.RouterParams:
    """The kernel's arguments, field by field: x [T, D] (unit inner stride), z_prev [T, R] contiguous or None
    (with eda_scale), the weights contiguous in x's dtype (shapes in the module docstring), bias [C] fp32,
    outputs logits [T, C], gate [T], z [T, R] fp32 and choice [T] int64, contiguous; z0 [T, R] fp32, the down
    projection precomputed for the GPU kernel, or None. No workspace yet (zaya_router_workspace sizes it)."""
    p = _C.RouterParams()
    T, D = x.shape
    R, C = down_w.shape[0], out_w.shape[0]
    p.x, p.x_row_stride = x.data_ptr(), x.stride(0) if T > 1 else D
    p.z_prev, p.z_prev_row_stride = _ptr(z_prev), R
    p.z_prev_dtype = 0 if z_prev is None else DTYPE_CODES[z_prev.dtype]
    p.down_w, p.down_b, p.eda_scale = down_w.data_ptr(), down_b.data_ptr(), _ptr(eda_scale)
    p.norm_w, p.fc1_w, p.fc1_b = norm_w.data_ptr(), fc1_w.data_ptr(), fc1_b.data_ptr()
    p.fc2_w, p.fc2_b, p.out_w = fc2_w.data_ptr(), fc2_b.data_ptr(), out_w.data_ptr()
    p.balancing_bias = bias.data_ptr()
    p.dtype, p.eps = DTYPE_CODES[x.dtype], float(eps)
    p.logits, p.gate, p.choice, p.z = logits.data_ptr(), gate.data_ptr(), choice.data_ptr(), z.data_ptr()
    p.T, p.D, p.R, p.C = T, D, R, C
    p.workspace, p.workspace_bytes = 0, 0
    p.z0, p.z0_row_stride = _ptr(z0), 0 if z0 is None else z0.stride(0)
    return p


def _launch(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps):
    """The _C kernel on checked arguments: contiguous weights, vectors and z_prev, eps a float."""
    on_gpu = not x.is_cpu
    T, D = x.shape
    R, C = down_w.shape[0], out_w.shape[0]
    if D > 1 and x.stride(1) != 1:
        x = x.contiguous()
    bias = balancing_bias if balancing_bias.dtype is torch.float32 else balancing_bias.to(torch.float32)
    logits = x.new_empty((T, C), dtype=torch.float32)
    gate = x.new_empty((T,), dtype=torch.float32)
    choice = x.new_empty((T,), dtype=torch.int64)
    z = x.new_empty((T, R), dtype=torch.float32)
    z0 = F.linear(x, down_w, down_b) if on_gpu and T > _GPU_FUSED_DOWN_MAX_TOKENS else None
    p = zaya_router_params(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, bias,
                           eps, logits, gate, choice, z, z0)
    dev = device_args(x) if on_gpu else _CPU_DEVICE_ARGS
    if on_gpu:  # the GPU kernel needs no workspace
        _C.zaya_router(p, *dev)
    else:
        ws = workspace(_C.zaya_router_workspace(p, dev[0]), x.device)
        _C.zaya_router(set_workspace(p, ws), *dev)
    return logits, gate, choice, z


def _fake(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps):
    _check(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps)
    T, R, C = x.shape[0], down_w.shape[0], out_w.shape[0]
    wide = torch.promote_types(x.dtype, torch.float32)
    return (x.new_empty((T, C), dtype=wide), x.new_empty((T,), dtype=wide), x.new_empty((T,), dtype=torch.int64),
            x.new_empty((T, R), dtype=wide))


def _setup(ctx, inputs, output):
    x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, _, eps = inputs
    logits, _, choice, z = output
    ctx.eps = eps
    ctx.has_prev = z_prev is not None
    prev = (z_prev, eda_scale) if z_prev is not None else ()
    ctx.save_for_backward(x, down_w, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, logits, choice, z, *prev)
    ctx.mark_non_differentiable(choice)


def _matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """Products take bf16 operands when the op's dtype is bf16 (fp32 accumulation), as the forward's do; else
    max(dtype, fp32)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.promote_types(dtype, torch.float32)


def _fused_norm(z: torch.Tensor) -> bool:
    """zaya_rt's norm kernels take the router's RMSNorm (fp32 z on the CPU); float64 and the GPU compose it."""
    return z.is_cpu and z.dtype == torch.float32


def _backward(ctx, g_logits, g_gate, _g_choice, g_z):
    """Differentiates by hand (no autograd inside backward, so torch.compile can trace it) from the saved outputs
    z and logits: only the R-wide middle (RMSNorm, fc1, fc2) is recomputed. Elementwise math in max(dtype, fp32);
    matrix products in x's dtype where that is bf16 (fp32 accumulation), else in fp32."""
    x, down_w, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, logits, choice, z, *prev = ctx.saved_tensors
    md = _matmul_dtype(x.dtype)
    if _fused_norm(z):
        h0, rstd = torch.ops.zaya_rt.rms_norm(z, norm_w.to(md), ctx.eps)
    else:
        rstd = torch.rsqrt(z.pow(2).mean(-1) + ctx.eps)
        h0 = (z * rstd[:, None] * norm_w.to(z.dtype)).to(md)
    a1 = F.linear(h0, fc1_w.to(md), fc1_b.to(md))
    h1 = F.gelu(a1)
    a2 = F.linear(h1, fc2_w.to(md), fc2_b.to(md))
    h2 = F.gelu(a2)
    return _grads(ctx, g_logits, g_gate, g_z, x, prev, down_w, norm_w, fc1_w, fc2_w, out_w, logits, choice, z, rstd,
                  h0, a1, h1, a2, h2)


def _grads(ctx, g_logits, g_gate, g_z, x, prev, down_w, norm_w, fc1_w, fc2_w, out_w, logits, choice, z, rstd, h0, a1,
           h1, a2, h2):
    """The router's input and weight gradients from the forward's values (g_logits, g_gate, g_z may be None:
    no gradient reached that output): z [T, R] and logits [T, C] in
    max(dtype, fp32), rstd [T] fp32, and h0 = RMSNorm(z), a1 = h0 W1^T + b1, h1 = GELU(a1), a2 = h1 W2^T + b2,
    h2 = GELU(a2) [T, R] in the products' dtype md (_matmul_dtype). The chain through the MLP runs in md, as
    autograd would run it on md tensors (bf16 products accumulate in fp32); the softmax, the RMSNorm backward,
    bias and EDA gradients in max(dtype, fp32). Weights are used in their own dtype: no fp32 copy of a matrix."""
    z_prev, eda = prev if ctx.has_prev else (None, None)
    wide = torch.promote_types(x.dtype, torch.float32)
    md = _matmul_dtype(x.dtype)
    mm = lambda a, b: torch.mm(a.to(md), b.to(md))  # noqa: E731
    dlogits = torch.zeros_like(logits, dtype=wide) if g_logits is None else g_logits.to(wide)
    if g_gate is not None:
        p = torch.softmax(logits.to(wide), dim=-1)
        # softmax backward of the gate term: dp is g_gate at the choice (0 for skip), so <dp, p> = g_gate * p[choice]
        g_gate = g_gate.to(wide).masked_fill(choice == p.shape[-1] - 1, 0)[:, None]
        dlogits = torch.addcmul(dlogits, p, p.gather(-1, choice[:, None]) * g_gate, value=-1)
        dlogits.scatter_add_(-1, choice[:, None], p.gather(-1, choice[:, None]) * g_gate)
    dlogits = dlogits.to(md)
    da2 = torch.ops.aten.gelu_backward(mm(dlogits, out_w), a2)
    da1 = torch.ops.aten.gelu_backward(mm(da2, fc2_w), a1)
    dh0 = mm(da1, fc1_w)
    nw = norm_w.to(wide)  # a [R] vector
    if _fused_norm(z):
        dz, g_norm_w = torch.ops.zaya_rt.rms_norm_backward(dh0, z, nw, rstd)
    else:
        dh0 = dh0.to(wide)
        n = z * rstd[:, None]
        dn = dh0 * nw
        dz, g_norm_w = rstd[:, None] * (dn - n * (dn * n).mean(-1, keepdim=True)), (dh0 * n).sum(0)
    if g_z is not None:
        dz += g_z.to(wide)
    dz_x = dz.to(x.dtype)
    grads = {
        "x": dz_x @ down_w, "down_w": dz_x.T @ x, "down_b": dz.sum(0), "norm_w": g_norm_w,
        "fc1_w": mm(da1.T, h0), "fc1_b": da1.sum(0, dtype=wide), "fc2_w": mm(da2.T, h1),
        "fc2_b": da2.sum(0, dtype=wide), "out_w": mm(dlogits.T, h2),
    }
    dtype = {"x": x.dtype}
    if z_prev is not None:
        grads["z_prev"], grads["eda_scale"] = dz * eda.to(wide), (dz * z_prev.to(wide)).sum(0)
        dtype["z_prev"] = z_prev.dtype
    out = [grads.get(name) for name in _NAMES[:11]]
    out = [None if g is None else g.to(dtype.get(name, x.dtype)) for g, name in zip(out, _NAMES[:11])]
    return (*out, None, None)


def _train_impl(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
                eps):
    """The router composed of PyTorch products (oneDNN's bf16 GEMMs) and zaya_rt's RMSNorm, rounded as the
    kernel rounds (each linear's result in x's dtype, z and the probabilities too), keeping the activations.

    Returns (logits [T, C], gate [T], choice [T] int64, z [T, R]) as zaya_router, then rstd [T] fp32 and
    h0 = RMSNorm(z), a1 = h0 W1^T + b1, h1 = GELU(a1), a2 = h1 W2^T + b2, h2 = GELU(a2), [T, R] each in the
    products' dtype (bf16 for bf16, else max(dtype, fp32))."""
    _check(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps)
    dt, wide, md = x.dtype, torch.promote_types(x.dtype, torch.float32), _matmul_dtype(x.dtype)
    z = F.linear(x, down_w, down_b)
    if z_prev is not None:  # z + round(z_prev * eda), rounded to x's dtype (as the kernel's carry)
        z = z + (z_prev * eda_scale).to(dt)
    z = z.to(wide)
    if _fused_norm(z):
        h0, rstd = torch.ops.zaya_rt.rms_norm(z, norm_w.to(md), eps)
    else:
        rstd = torch.rsqrt(z.pow(2).mean(-1) + eps)
        h0 = (z * rstd[:, None] * norm_w.to(wide)).to(md)
    a1 = F.linear(h0, fc1_w.to(md), fc1_b.to(md))
    h1 = F.gelu(a1)
    a2 = F.linear(h1, fc2_w.to(md), fc2_b.to(md))
    h2 = F.gelu(a2)
    logits = F.linear(h2.to(dt), out_w).to(wide)
    probs = torch.softmax(logits, dim=-1).to(dt).to(wide)
    choice = (probs + balancing_bias.to(wide)).argmax(-1)
    gate = probs.gather(-1, choice[:, None]).squeeze(-1).masked_fill(choice == logits.shape[-1] - 1, 0)
    return logits, gate, choice, z, rstd, h0, a1, h1, a2, h2


def _train_fake(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias,
                eps):
    logits, gate, choice, z = _fake(x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                                    balancing_bias, eps)
    T, R = z.shape
    md = _matmul_dtype(x.dtype)
    acts = [x.new_empty((T, R), dtype=md) for _ in range(5)]
    rstd = x.new_empty((T,), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return logits, gate, choice, z, rstd, *acts


def _train_setup(ctx, inputs, output):
    x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, _, eps = inputs
    logits, _, choice, z, *kept = output
    ctx.has_prev = z_prev is not None
    prev = (z_prev, eda_scale) if z_prev is not None else ()
    ctx.mark_non_differentiable(choice, *kept)
    # The kept activations never get a gradient: no [T, R] zero tensors for them (_grads takes None as zero).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, down_w, norm_w, fc1_w, fc2_w, out_w, logits, choice, z, *kept, *prev)


def _train_backward(ctx, g_logits, g_gate, _g_choice, g_z, *_g_kept):
    x, down_w, norm_w, fc1_w, fc2_w, out_w, logits, choice, z, rstd, h0, a1, h1, a2, h2, *prev = ctx.saved_tensors
    return _grads(ctx, g_logits, g_gate, g_z, x, prev, down_w, norm_w, fc1_w, fc2_w, out_w, logits, choice, z, rstd,
                  h0, a1, h1, a2, h2)


register_kernels("zaya_router", _impl, _fake)
register_autograd("zaya_router", _setup, _backward)
register_kernels("zaya_router_train", _train_impl, _train_fake, (_train_setup, _train_backward))


def zaya_router(x: torch.Tensor, z_prev: torch.Tensor | None, down_w: torch.Tensor, down_b: torch.Tensor,
                eda_scale: torch.Tensor | None, norm_w: torch.Tensor, fc1_w: torch.Tensor, fc1_b: torch.Tensor,
                fc2_w: torch.Tensor, fc2_b: torch.Tensor, out_w: torch.Tensor, balancing_bias: torch.Tensor,
                eps: float = 1e-5):
    """The ZAYA1 router; see the module docstring for shapes. Returns (logits, gate, choice, z).

    When a gradient is wanted for bf16 or fp32 on the CPU it runs zaya_router_train (oneDNN's products keeping
    the activations, so that the backward recomputes nothing; faster there than the kernel's forward plus the
    recomputing backward, which fp16 and other devices keep)."""
    args = (x, z_prev, down_w, down_b, eda_scale, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, balancing_bias, eps)
    if not _TENSOR_OR_NONE.issuperset(map(type, args[:-1])):  # cheap test first: parameters are subclasses
        if not all(t is None or isinstance(t, torch.Tensor) for t in args[:-1]):
            _check(*args)
    if ((x.dtype is torch.bfloat16 or x.dtype is torch.float32) and x.device.type == "cpu" and torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in args[:-1])):
        return torch.ops.zaya_rt.zaya_router_train(*args)[:4]
    return call_op(torch.ops.zaya_rt.zaya_router.default, args, cpu_impl=_impl)

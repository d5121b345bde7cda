"""CCA prep (SPEC section 3, steps 2-4) as one op: convolved q/k with residual paths, L2 qk norm, key temperature,
partial RoPE and the value shift, over packed variable-length sequences with conv/value state in and out.

  cca_prep(qp[T, Hq*d], kp[T, Hk*d], v_cur[T, V], v_del[T, V], conv0_w[C, 1, k0], conv0_b[C],
           conv1_w[C, d, k1], conv1_b[C], temp[Hk], positions[T] int32/int64, cu_seqlens[B+1] int32,
           conv_state[B, C, K]?, v_state[B, V]?, num_q_heads, num_kv_heads, rope_dims, rope_theta)
      -> (q[T, Hq, d], k[T, Hk, d], v[T, Hk, d], conv_state_out[B, C, K], v_state_out[B, V])

with C = (Hq + Hk) * d, V = Hk * d / 2, K = (k0 - 1) + (k1 - 1). The math is zaya_rt.ref.cca_prep (and
csrc/include/zaya_rt/cca.h); the conv and the value shift never cross a sequence boundary.

Numerics: everything inside runs in fp32 and outputs are rounded once to the activations' dtype; the norm is
clamped at the activations' dtype eps (as transformers does). Weights (conv, temp) may be the activations'
dtype or fp32; states come back in the states' dtype (the activations' when both states are None).

Sequence start: a None state means zeros. When the model's `v_proj_delayed` has a bias, the value a new
sequence shifts in is that bias (the projection of a zero input), so the caller passes v_state filled with it.

The fused kernels (forward and backward) run on the CPU and on CUDA/HIP devices for float32/float16/bfloat16;
float64 (gradcheck), other devices and a _C without a GPU backend use zaya_rt.ref.cca_prep (see `route`).
"""

from __future__ import annotations

import math

import torch

from zaya_rt import _C, ref
from zaya_rt.ops._lib import (
    DTYPE_CODES, FLOAT_DTYPES, lib, register_autograd, register_kernels, run_kernel,
)

lib.define(
    "cca_prep(Tensor qp, Tensor kp, Tensor v_cur, Tensor v_del, Tensor conv0_w, Tensor conv0_b, Tensor conv1_w, "
    "Tensor conv1_b, Tensor temp, Tensor positions, Tensor cu_seqlens, Tensor? conv_state, Tensor? v_state, "
    "int num_q_heads, int num_kv_heads, int rope_dims, float rope_theta) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
lib.define(
    "cca_prep_backward(Tensor? grad_q, Tensor? grad_k, Tensor? grad_v, Tensor? grad_conv_state, "
    "Tensor? grad_v_state, Tensor qp, Tensor kp, Tensor v_cur, Tensor conv0_w, Tensor conv0_b, Tensor conv1_w, "
    "Tensor conv1_b, Tensor temp, Tensor positions, Tensor cu_seqlens, Tensor? conv_state, Tensor? v_state, "
    "int num_q_heads, int num_kv_heads, int rope_dims, float rope_theta) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)

_OP = "cca_prep"
_ALL_FLOATS = (*FLOAT_DTYPES, torch.float64)
_INV_FREQ: dict[tuple[int, float, str], torch.Tensor] = {}


def _fail(exc, msg: str):
    raise exc(f"zaya_rt.{_OP}: {msg}")


def _tensor(name: str, t, dtypes, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        _fail(TypeError, f"{name} has dtype {t.dtype}, expected one of {[str(d) for d in dtypes]}")
    if t.dim() != ndim:
        _fail(ValueError, f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")


def _int_arg(name: str, v, minimum: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        _fail(ValueError, f"{name} must be an integer >= {minimum}, got {v!r}")


def _check(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
           v_state, num_q_heads, num_kv_heads, rope_dims, rope_theta):
    """Validates everything but the values of cu_seqlens (checked by the kernel); returns (T, B, d, k0, k1)."""
    _int_arg("num_q_heads", num_q_heads, 1)
    _int_arg("num_kv_heads", num_kv_heads, 1)
    if num_q_heads % num_kv_heads:
        _fail(ValueError, f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    _tensor("qp", qp, _ALL_FLOATS, 2)
    dtype = qp.dtype
    for name, t in (("kp", kp), ("v_cur", v_cur), ("v_del", v_del)):
        _tensor(name, t, (dtype,), 2)
    T = qp.shape[0]
    if qp.shape[1] % num_q_heads or qp.shape[1] == 0:
        _fail(ValueError, f"qp width {qp.shape[1]} is not num_q_heads ({num_q_heads}) x head_dim")
    d = qp.shape[1] // num_q_heads
    if d % 2:
        _fail(ValueError, f"head_dim must be even, got {d}")
    Hq, Hk = num_q_heads, num_kv_heads
    C, V = (Hq + Hk) * d, Hk * d // 2
    want = {"kp": (T, Hk * d), "v_cur": (T, V), "v_del": (T, V)}
    for name, t in (("kp", kp), ("v_cur", v_cur), ("v_del", v_del)):
        if tuple(t.shape) != want[name]:
            _fail(ValueError, f"{name} has shape {tuple(t.shape)}, expected {want[name]}")
    wdt = (dtype, torch.float32) if dtype != torch.float64 else (dtype,)
    _tensor("conv0_w", conv0_w, wdt, 3)
    _tensor("conv1_w", conv1_w, (conv0_w.dtype,), 3)
    k0, k1 = conv0_w.shape[2], conv1_w.shape[2]
    if conv0_w.shape[:2] != (C, 1) or k0 < 1:
        _fail(ValueError, f"conv0_w has shape {tuple(conv0_w.shape)}, expected ({C}, 1, k0) with k0 >= 1")
    if conv1_w.shape[:2] != (C, d) or k1 < 1:
        _fail(ValueError, f"conv1_w has shape {tuple(conv1_w.shape)}, expected ({C}, {d}, k1) with k1 >= 1")
    for name, t, n in (("conv0_b", conv0_b, C), ("conv1_b", conv1_b, C), ("temp", temp, Hk)):
        _tensor(name, t, (conv0_w.dtype,), 1)
        if t.shape[0] != n:
            _fail(ValueError, f"{name} has {t.shape[0]} entries, expected {n}")
    _tensor("positions", positions, (torch.int32, torch.int64), 1)
    if positions.shape[0] != T:
        _fail(ValueError, f"positions has {positions.shape[0]} entries for {T} tokens")
    _tensor("cu_seqlens", cu_seqlens, (torch.int32,), 1)
    if cu_seqlens.shape[0] < 1:
        _fail(ValueError, "cu_seqlens needs at least one entry (B + 1)")
    B, K = cu_seqlens.shape[0] - 1, (k0 - 1) + (k1 - 1)
    sdt = (dtype, torch.float32) if dtype != torch.float64 else (dtype,)
    if conv_state is not None:
        _tensor("conv_state", conv_state, sdt, 3)
        if tuple(conv_state.shape) != (B, C, K):
            _fail(ValueError, f"conv_state has shape {tuple(conv_state.shape)}, expected {(B, C, K)}")
    if v_state is not None:
        _tensor("v_state", v_state, sdt, 2)
        if tuple(v_state.shape) != (B, V):
            _fail(ValueError, f"v_state has shape {tuple(v_state.shape)}, expected {(B, V)}")
    if conv_state is not None and v_state is not None and conv_state.dtype != v_state.dtype:
        _fail(TypeError, f"conv_state ({conv_state.dtype}) and v_state ({v_state.dtype}) must share a dtype")
    _int_arg("rope_dims", rope_dims, 1)
    if rope_dims % 2 or rope_dims > d:
        _fail(ValueError, f"rope_dims must be even and at most head_dim ({d}), got {rope_dims}")
    if not isinstance(rope_theta, (int, float)) or not (math.isfinite(rope_theta) and rope_theta > 0):
        _fail(ValueError, f"rope_theta must be a finite positive number, got {rope_theta!r}")
    tensors = {"qp": qp, "kp": kp, "v_cur": v_cur, "v_del": v_del, "conv0_w": conv0_w, "conv0_b": conv0_b,
               "conv1_w": conv1_w, "conv1_b": conv1_b, "temp": temp, "positions": positions,
               "cu_seqlens": cu_seqlens, "conv_state": conv_state, "v_state": v_state}
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        _fail(ValueError, "all tensors must be on one device, got " + ", ".join(f"{n} on {v}" for n, v in devices.items()))
    if qp.device.type not in ("cpu", "cuda", "meta"):
        _fail(ValueError, f"unsupported device {qp.device}")
    return T, B, d, k0, k1


_EPS = {dt: torch.finfo(dt).eps for dt in _ALL_FLOATS}
_POS_DTYPES = (torch.int32, torch.int64)


def _cpu_args_ok(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
                 v_state, Hq, Hk, rd, theta) -> bool:
    """Cheap test of the common valid CPU case (the decode hot path); _check explains any failure."""
    if qp.dim() != 2 or conv0_w.dim() != 3 or conv1_w.dim() != 3 or cu_seqlens.dim() != 1:
        return False
    if not (isinstance(Hq, int) and isinstance(Hk, int) and isinstance(rd, int) and isinstance(theta, float)):
        return False
    T, QD = qp.shape
    if Hq < 1 or Hk < 1 or Hq % Hk or QD % Hq:
        return False
    d = QD // Hq
    C, V, k0, k1, B = (Hq + Hk) * d, Hk * d // 2, conv0_w.shape[2], conv1_w.shape[2], cu_seqlens.shape[0] - 1
    K, dt, wdt = k0 + k1 - 2, qp.dtype, conv0_w.dtype
    sdt = conv_state.dtype if conv_state is not None else (v_state.dtype if v_state is not None else dt)
    return (
        dt in FLOAT_DTYPES and d > 0 and d % 2 == 0 and 0 < rd <= d and rd % 2 == 0 and 0 < theta < math.inf
        and k0 >= 1 and k1 >= 1 and B >= 0 and kp.shape == (T, Hk * d) and v_cur.shape == (T, V)
        and v_del.shape == (T, V) and kp.dtype == dt and v_cur.dtype == dt and v_del.dtype == dt
        and conv0_w.shape == (C, 1, k0) and conv1_w.shape == (C, d, k1) and conv0_b.shape == (C,)
        and conv1_b.shape == (C,) and temp.shape == (Hk,) and (wdt == dt or wdt == torch.float32)
        and conv1_w.dtype == wdt and conv0_b.dtype == wdt and conv1_b.dtype == wdt and temp.dtype == wdt
        and positions.shape == (T,) and positions.dtype in _POS_DTYPES and cu_seqlens.dtype == torch.int32
        and (sdt == dt or sdt == torch.float32)
        and (conv_state is None or (conv_state.shape == (B, C, K) and conv_state.dtype == sdt and conv_state.is_cpu))
        and (v_state is None or (v_state.shape == (B, V) and v_state.dtype == sdt and v_state.is_cpu))
        and qp.is_cpu and kp.is_cpu and v_cur.is_cpu and v_del.is_cpu and conv0_w.is_cpu and conv0_b.is_cpu
        and conv1_w.is_cpu and conv1_b.is_cpu and temp.is_cpu and positions.is_cpu and cu_seqlens.is_cpu
    )


def _state_dtype(qp, conv_state, v_state) -> torch.dtype:
    for s in (conv_state, v_state):
        if s is not None:
            return s.dtype
    return qp.dtype


def _inv_freq(rope_dims: int, rope_theta: float, device) -> torch.Tensor:
    key = (rope_dims, float(rope_theta), device)
    t = _INV_FREQ.get(key)
    if t is None:
        t = ref.rope_inv_freq(rope_dims, float(rope_theta), torch.float32).to(device)
        _INV_FREQ[key] = t
    return t


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _rs(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else t.shape[-1]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _stride(t: torch.Tensor | None, dim: int) -> int:
    return 0 if t is None else t.stride(dim)


# ---- the kernels' arguments (csrc/bindings_cca.cpp), field by field ----------------------------------------------


def _set_common_fields(p, qp, kp, weights, cs_in, positions, cu_seqlens, inv_freq, state_dtype) -> None:
    """The fields CcaPrepFwdParams and CcaPrepBwdParams share; the sizes follow from qp, kp, the weights (temp
    [Hk]) and inv_freq [rope_dims / 2], the norm eps is the activations' dtype eps."""
    conv0_w, conv0_b, conv1_w, conv1_b, temp = weights
    p.qp, p.qp_row_stride = qp.data_ptr(), _rs(qp)
    p.kp, p.kp_row_stride = kp.data_ptr(), _rs(kp)
    p.dtype = DTYPE_CODES[qp.dtype]
    p.conv0_w, p.conv0_b, p.conv1_w, p.conv1_b = (t.data_ptr() for t in (conv0_w, conv0_b, conv1_w, conv1_b))
    p.temp, p.w_dtype = temp.data_ptr(), DTYPE_CODES[conv0_w.dtype]
    p.conv_state_in, p.cs_in_batch_stride, p.cs_in_channel_stride = _ptr(cs_in), _stride(cs_in, 0), _stride(cs_in, 1)
    p.state_dtype = DTYPE_CODES[state_dtype]
    p.positions, p.pos_dtype = positions.data_ptr(), DTYPE_CODES[positions.dtype]
    p.cu_seqlens, p.inv_freq = cu_seqlens.data_ptr(), inv_freq.data_ptr()
    Hk = temp.shape[0]
    d = kp.shape[1] // Hk
    p.T, p.B, p.Hq, p.Hk, p.d = qp.shape[0], cu_seqlens.shape[0] - 1, qp.shape[1] // d, Hk, d
    p.k0, p.k1, p.rd = conv0_w.shape[2], conv1_w.shape[2], 2 * inv_freq.shape[0]
    p.norm_eps = _EPS[qp.dtype]
    p.workspace, p.workspace_bytes = 0, 0


def cca_prep_fwd_params(qp, kp, v_cur, v_del, weights, cs_in, vs_in, positions, cu_seqlens, inv_freq, q, k, v,
                        cs_out, vs_out) -> _C.CcaPrepFwdParams:
    """qp [T, Hq*d], kp [T, Hk*d], v_cur/v_del [T, V] (unit inner stride); weights = (conv0_w, conv0_b, conv1_w,
    conv1_b, temp) contiguous in one dtype; cs_in [B, C, K] (unit inner stride) and vs_in [B, V] (unit inner
    stride) in the states' dtype, or None; positions [T] int32/int64 and cu_seqlens [B + 1] int32 contiguous;
    inv_freq [rope_dims / 2] fp32; outputs q [T, Hq, d], k/v [T, Hk, d], cs_out [B, C, K], vs_out [B, V]
    contiguous. No workspace yet."""
    p = _C.CcaPrepFwdParams()
    _set_common_fields(p, qp, kp, weights, cs_in, positions, cu_seqlens, inv_freq, cs_out.dtype)
    p.v_cur, p.v_cur_row_stride = v_cur.data_ptr(), _rs(v_cur)
    p.v_del, p.v_del_row_stride = v_del.data_ptr(), _rs(v_del)
    p.v_state_in, p.vs_in_batch_stride = _ptr(vs_in), _stride(vs_in, 0)
    p.q, (p.q_row_stride, p.q_head_stride) = q.data_ptr(), q.stride()[:2]
    p.k, (p.k_row_stride, p.k_head_stride) = k.data_ptr(), k.stride()[:2]
    p.v, p.v_row_stride = v.data_ptr(), v.stride(0)
    p.conv_state_out, (p.cs_out_batch_stride, p.cs_out_channel_stride) = cs_out.data_ptr(), cs_out.stride()[:2]
    p.v_state_out, p.vs_out_batch_stride = vs_out.data_ptr(), vs_out.stride(0)
    return p


def cca_prep_bwd_params(gq, gk, gv, gcs, gvs, qp, kp, weights, cs_in, positions, cu_seqlens, inv_freq, g_qp, g_kp,
                        g_vc, g_vd, g_cs, g_vs, param_grads) -> _C.CcaPrepBwdParams:
    """Incoming gradients gq [T, Hq, d], gk [T, Hk, d], gv [T, Hk*d] (unit inner stride, activations' dtype),
    gcs [B, C, K], gvs [B, V] (unit inner stride, states' dtype), each or None; qp, kp, weights, cs_in,
    positions, cu_seqlens and inv_freq as in cca_prep_fwd_params; outgoing g_qp [T, Hq*d], g_kp [T, Hk*d],
    g_vc/g_vd [T, V], g_cs [B, C, K], g_vs [B, V] contiguous and param_grads = fp32 (conv0_w, conv0_b, conv1_w,
    conv1_b, temp) gradients contiguous. The workspace is set by run_kernel."""
    p = _C.CcaPrepBwdParams()
    _set_common_fields(p, qp, kp, weights, cs_in, positions, cu_seqlens, inv_freq, g_cs.dtype)
    p.grad_q, p.gq_row_stride, p.gq_head_stride = _ptr(gq), _stride(gq, 0), _stride(gq, 1)
    p.grad_k, p.gk_row_stride, p.gk_head_stride = _ptr(gk), _stride(gk, 0), _stride(gk, 1)
    p.grad_v, p.gv_row_stride = _ptr(gv), _stride(gv, 0)
    p.grad_conv_state_out, p.gcs_batch_stride, p.gcs_channel_stride = _ptr(gcs), _stride(gcs, 0), _stride(gcs, 1)
    p.grad_v_state_out, p.gvs_batch_stride = _ptr(gvs), _stride(gvs, 0)
    p.grad_qp, p.gqp_row_stride = g_qp.data_ptr(), g_qp.stride(0)
    p.grad_kp, p.gkp_row_stride = g_kp.data_ptr(), g_kp.stride(0)
    p.grad_v_cur, p.gvc_row_stride = g_vc.data_ptr(), g_vc.stride(0)
    p.grad_v_del, p.gvd_row_stride = g_vd.data_ptr(), g_vd.stride(0)
    p.grad_conv_state_in, p.grad_v_state_in = g_cs.data_ptr(), g_vs.data_ptr()
    p.grad_conv0_w, p.grad_conv0_b, p.grad_conv1_w, p.grad_conv1_b, p.grad_temp = (t.data_ptr() for t in param_grads)
    return p


def _reference(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
               v_state, num_q_heads, num_kv_heads, rope_dims, rope_theta):
    """zaya_rt.ref.cca_prep at max(dtype, fp32) precision: the op's path off the CPU and for float64."""
    wide = torch.promote_types(qp.dtype, torch.float32)
    sdt = _state_dtype(qp, conv_state, v_state)
    w = lambda t: None if t is None else t.to(wide)  # noqa: E731
    q, k, v, cs, vs = ref.cca_prep(
        w(qp), w(kp), w(v_cur), w(v_del), w(conv0_w), w(conv0_b), w(conv1_w), w(conv1_b), w(temp), positions,
        cu_seqlens, w(conv_state), w(v_state), num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
        rope_dims=rope_dims, rope_theta=rope_theta, norm_eps=torch.finfo(qp.dtype).eps,
    )
    return q.to(qp.dtype), k.to(qp.dtype), v.to(qp.dtype), cs.to(sdt), vs.to(sdt)


def route(device_type: str, dtype: torch.dtype, gpu_backend: str | None = None) -> str:
    """Which implementation cca_prep (forward and backward alike) takes for activations of `dtype` on a device of
    `device_type` ("cpu", "cuda", ...), with _C built for `gpu_backend` (default: this _C's): "kernel" (zaya_rt's
    fused kernels) or "reference" (autograd through zaya_rt.ref.cca_prep)."""
    backend = _C.gpu_backend if gpu_backend is None else gpu_backend
    if dtype == torch.float64:
        return "reference"
    if device_type == "cpu" or (device_type == "cuda" and backend != "none"):
        return "kernel"
    return "reference"


def _fused_forward(qp: torch.Tensor) -> bool:
    return route(qp.device.type, qp.dtype) == "kernel"


def _impl(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
          v_state, num_q_heads, num_kv_heads, rope_dims, rope_theta):
    args = (qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
            v_state, num_q_heads, num_kv_heads, rope_dims, rope_theta)
    if not _cpu_args_ok(*args):
        _check(*args)
        if not _fused_forward(qp):
            return _reference(*args)
    T, d, k0, k1 = qp.shape[0], qp.shape[1] // num_q_heads, conv0_w.shape[2], conv1_w.shape[2]
    B = cu_seqlens.shape[0] - 1
    Hq, Hk = num_q_heads, num_kv_heads
    C, V, K = (Hq + Hk) * d, Hk * d // 2, (k0 - 1) + (k1 - 1)
    sdt = _state_dtype(qp, conv_state, v_state)
    qp, kp, v_cur, v_del = (_rows(t) for t in (qp, kp, v_cur, v_del))
    conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens = (
        t.contiguous() for t in (conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens))
    cs_in = conv_state.to(sdt) if conv_state is not None else None
    if cs_in is not None and K > 0 and cs_in.stride(2) != 1:
        cs_in = cs_in.contiguous()
    vs_in = _rows(v_state.to(sdt)) if v_state is not None else None
    q = qp.new_empty((T, Hq, d))
    k = qp.new_empty((T, Hk, d))
    v = qp.new_empty((T, Hk, d))
    cs_out = qp.new_empty((B, C, K), dtype=sdt)
    vs_out = qp.new_empty((B, V), dtype=sdt)
    inv = _inv_freq(rope_dims, rope_theta, qp.device)
    p = cca_prep_fwd_params(qp, kp, v_cur, v_del, (conv0_w, conv0_b, conv1_w, conv1_b, temp), cs_in, vs_in,
                            positions, cu_seqlens, inv, q, k, v, cs_out, vs_out)
    run_kernel(_C.cca_prep_fwd, _C.cca_prep_fwd_workspace, p, qp)  # the fused forward also runs on CUDA/HIP
    return q, k, v, cs_out, vs_out


def _fake(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
          v_state, num_q_heads, num_kv_heads, rope_dims, rope_theta):
    T, B, d, k0, k1 = _check(qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens,
                             conv_state, v_state, num_q_heads, num_kv_heads, rope_dims, rope_theta)
    Hq, Hk = num_q_heads, num_kv_heads
    sdt = _state_dtype(qp, conv_state, v_state)
    return (qp.new_empty((T, Hq, d)), qp.new_empty((T, Hk, d)), qp.new_empty((T, Hk, d)),
            qp.new_empty((B, (Hq + Hk) * d, (k0 - 1) + (k1 - 1)), dtype=sdt),
            qp.new_empty((B, Hk * d // 2), dtype=sdt))


# ---- backward ------------------------------------------------------------------------------------------------


def _backward_sizes(qp, conv0_w, conv1_w, cu_seqlens, conv_state, v_state, Hq, Hk):
    """(T tokens, d head dim, k0 and k1 conv widths, B sequences, C conv channels, V value-shift width,
    K conv-state length, state dtype) of a cca_prep backward."""
    T, d = qp.shape[0], qp.shape[1] // Hq
    k0, k1 = conv0_w.shape[2], conv1_w.shape[2]
    return (T, d, k0, k1, cu_seqlens.shape[0] - 1, (Hq + Hk) * d, Hk * d // 2, (k0 - 1) + (k1 - 1),
            _state_dtype(qp, conv_state, v_state))


def _backward_impl(grad_q, grad_k, grad_v, grad_cs, grad_vs, qp, kp, v_cur, conv0_w, conv0_b, conv1_w, conv1_b,
                   temp, positions, cu_seqlens, conv_state, v_state, num_q_heads, num_kv_heads, rope_dims,
                   rope_theta):
    Hq, Hk = num_q_heads, num_kv_heads
    T, d, k0, k1, B, C, V, K, sdt = _backward_sizes(qp, conv0_w, conv1_w, cu_seqlens, conv_state, v_state, Hq, Hk)
    qp, kp = _rows(qp), _rows(kp)
    conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens = (
        t.contiguous() for t in (conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens))
    cs_in = conv_state.to(sdt) if conv_state is not None else None
    if cs_in is not None and K > 0 and cs_in.stride(2) != 1:
        cs_in = cs_in.contiguous()
    head_grad = lambda g: None if g is None else (g.to(qp.dtype) if g.stride(-1) == 1 else g.to(qp.dtype).contiguous())  # noqa: E731
    gq, gk, gv = head_grad(grad_q), head_grad(grad_k), head_grad(grad_v)
    gv = None if gv is None else gv.reshape(T, Hk * d)
    gcs = None if grad_cs is None else grad_cs.to(sdt)
    if gcs is not None and K > 0 and gcs.stride(2) != 1:
        gcs = gcs.contiguous()
    gvs = None if grad_vs is None else _rows(grad_vs.to(sdt))
    g_qp = qp.new_empty((T, Hq * d))
    g_kp = qp.new_empty((T, Hk * d))
    g_vc = qp.new_empty((T, V))
    g_vd = qp.new_empty((T, V))
    g_cs = qp.new_empty((B, C, K), dtype=sdt)
    g_vs = qp.new_empty((B, V), dtype=sdt)
    f32 = dict(dtype=torch.float32, device=qp.device)
    g_w0, g_b0 = torch.empty((C, 1, k0), **f32), torch.empty(C, **f32)
    g_w1, g_b1, g_t = torch.empty((C, d, k1), **f32), torch.empty(C, **f32), torch.empty(Hk, **f32)
    inv = _inv_freq(rope_dims, rope_theta, qp.device)
    p = cca_prep_bwd_params(gq, gk, gv, gcs, gvs, qp, kp, (conv0_w, conv0_b, conv1_w, conv1_b, temp), cs_in,
                            positions, cu_seqlens, inv, g_qp, g_kp, g_vc, g_vd, g_cs, g_vs,
                            (g_w0, g_b0, g_w1, g_b1, g_t))
    run_kernel(_C.cca_prep_bwd, _C.cca_prep_bwd_workspace, p, qp)
    wd = conv0_w.dtype
    return (g_qp, g_kp, g_vc, g_vd, g_w0.to(wd), g_b0.to(wd), g_w1.to(wd), g_b1.to(wd), g_t.to(wd), g_cs, g_vs)


def _backward_fake(grad_q, grad_k, grad_v, grad_cs, grad_vs, qp, kp, v_cur, conv0_w, conv0_b, conv1_w, conv1_b,
                   temp, positions, cu_seqlens, conv_state, v_state, num_q_heads, num_kv_heads, rope_dims,
                   rope_theta):
    Hq, Hk = num_q_heads, num_kv_heads
    T, d, k0, k1, B, C, V, K, sdt = _backward_sizes(qp, conv0_w, conv1_w, cu_seqlens, conv_state, v_state, Hq, Hk)
    return (qp.new_empty((T, Hq * d)), qp.new_empty((T, Hk * d)), qp.new_empty((T, V)), qp.new_empty((T, V)),
            torch.empty_like(conv0_w), torch.empty_like(conv0_b), torch.empty_like(conv1_w),
            torch.empty_like(conv1_b), torch.empty_like(temp), qp.new_empty((B, C, K), dtype=sdt),
            qp.new_empty((B, V), dtype=sdt))


def _setup(ctx, inputs, output):
    (qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state, v_state,
     *attrs) = inputs
    ctx.attrs = attrs
    ctx.has_state = (conv_state is not None, v_state is not None)
    ctx.state_dtypes = tuple(None if s is None else s.dtype for s in (conv_state, v_state))
    ctx.v_dtypes = (v_cur.dtype, v_del.dtype)
    states = tuple(s for s in (conv_state, v_state) if s is not None)
    ctx.save_for_backward(qp, kp, v_cur, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, *states)


def _reference_grads(ctx, grads, saved):
    """Where route() says "reference": differentiate zaya_rt.ref.cca_prep with autograd."""
    qp, kp, v_cur, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, *states = saved
    conv_state = states.pop(0) if ctx.has_state[0] else None
    v_state = states.pop(0) if ctx.has_state[1] else None
    v_del = torch.zeros_like(v_cur)
    leaves = [t.detach().requires_grad_() for t in (qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp)]
    st = [None if s is None else s.detach().requires_grad_() for s in (conv_state, v_state)]
    with torch.enable_grad():
        out = _reference(*leaves, positions, cu_seqlens, *st, *ctx.attrs)
        pairs = [(o, g) for o, g in zip(out, grads) if g is not None]
        inputs = leaves + [s for s in st if s is not None]
        got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True) \
            if pairs else [None] * len(inputs)
    got = [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs)]
    result = got[:9]
    rest = got[9:]
    return (*result, rest.pop(0) if st[0] is not None else None, rest.pop(0) if st[1] is not None else None)


def _backward(ctx, g_q, g_k, g_v, g_cs, g_vs):
    saved = ctx.saved_tensors
    qp = saved[0]
    if not _fused_forward(qp):
        out = _reference_grads(ctx, (g_q, g_k, g_v, g_cs, g_vs), saved)
        g_qp, g_kp, g_vc, g_vd, g_w0, g_b0, g_w1, g_b1, g_t, g_cs_in, g_vs_in = out
    else:
        qp, kp, v_cur, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, *states = saved
        conv_state = states[0] if ctx.has_state[0] else None
        v_state = states[-1] if ctx.has_state[1] else None
        (g_qp, g_kp, g_vc, g_vd, g_w0, g_b0, g_w1, g_b1, g_t, g_cs_in, g_vs_in) = torch.ops.zaya_rt.cca_prep_backward(
            g_q, g_k, g_v, g_cs, g_vs, qp, kp, v_cur, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions,
            cu_seqlens, conv_state, v_state, *ctx.attrs,
        )
    cs_dt, vs_dt = ctx.state_dtypes
    return (g_qp, g_kp, g_vc.to(ctx.v_dtypes[0]), g_vd.to(ctx.v_dtypes[1]), g_w0, g_b0, g_w1, g_b1, g_t, None, None,
            None if cs_dt is None else g_cs_in.to(cs_dt), None if vs_dt is None else g_vs_in.to(vs_dt),
            None, None, None, None)


register_kernels("cca_prep", _impl, _fake)
register_kernels("cca_prep_backward", _backward_impl, _backward_fake)
register_autograd("cca_prep", _setup, _backward)


def cca_prep(qp: torch.Tensor, kp: torch.Tensor, v_cur: torch.Tensor, v_del: torch.Tensor, conv0_w: torch.Tensor,
             conv0_b: torch.Tensor, conv1_w: torch.Tensor, conv1_b: torch.Tensor, temp: torch.Tensor,
             positions: torch.Tensor, cu_seqlens: torch.Tensor, conv_state: torch.Tensor | None = None,
             v_state: torch.Tensor | None = None, *, num_q_heads: int, num_kv_heads: int, rope_dims: int,
             rope_theta: float):
    """CCA prep over packed sequences; see the module docstring for shapes, dtypes and the math.
    Returns (q, k, v, conv_state_out, v_state_out)."""
    args = (qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, positions, cu_seqlens, conv_state,
            v_state, num_q_heads, num_kv_heads, rope_dims, rope_theta)
    if not all(isinstance(t, torch.Tensor) for t in args[:11]) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in args[13:16]
    ) or not isinstance(rope_theta, (int, float)) or isinstance(rope_theta, bool):
        _check(*args)
    return torch.ops.zaya_rt.cca_prep(*args[:16], float(rope_theta))

"""MoE family (SPEC section 4): token dispatch, grouped GEMM, and the fused ZAYA1 expert block.

Legend: T tokens, k slots per token, E experts (= groups G), M grouped rows, D hidden, I expert width.
Ops (namespace `torch.ops.zaya_rt`):
  moe_dispatch(expert_index[T] or [T, k], E) -> (offsets[E] int32, sorted_slots[T*k] int32, slot_rows[T*k] int32)
  grouped_gemm(a[M, K], b[G, N, K], offsets[G] int32) -> out[M, N]         (autograd for a and b)
  grouped_gemm_weight_grad(dy[M, N], a[M, K], offsets[G] int32) -> [G, N, K]
  moe_experts(hidden[T, D], expert_index, gate, gate_up_proj[E, 2I, D], down_proj[E, D, I]) -> [T, D]
                                                                             (autograd for hidden, gate, weights)
  moe_experts_keep(same inputs) -> (out[T, D], offsets[E], sorted_slots[T*k], slot_rows[T*k], h[T*k, 2I])
      the same block returning what its backward reuses: the dispatch and the gate-up products h in dispatch
      order (the kept-activation path of moe_experts(keep_activations=True)); on CPU the fused kernel stores them
  moe_experts_backward(hidden, grad_out, gate, gate_up_proj, down_proj, offsets, sorted_slots, slot_rows, h?,
                       needs[4]) -> (grad_hidden, grad_gate, grad_gate_up, grad_down)
      the CPU backward of both in one call (an unwanted gradient comes back as an empty tensor)
Offsets are cumulative group ends on the tensors' device (torch._grouped_mm's `offs`); nothing reads them on
the host, so the ops are CUDA-graph friendly.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from zaya_rt import _C
from zaya_rt.ops._lib import (
    DTYPE_CODES, call_op, check_same_device, check_tensor, device_args, lib, register_kernels, run_kernel,
    set_workspace, workspace,
)

INDEX_DTYPES = (torch.int32, torch.int64)

lib.define("moe_dispatch(Tensor expert_index, int num_experts) -> (Tensor, Tensor, Tensor)")
lib.define("grouped_gemm(Tensor a, Tensor b, Tensor offsets) -> Tensor")
lib.define("grouped_gemm_weight_grad(Tensor dy, Tensor a, Tensor offsets) -> Tensor")
lib.define(
    "moe_experts(Tensor hidden, Tensor expert_index, Tensor gate, Tensor gate_up_proj, Tensor down_proj) -> Tensor"
)
lib.define(
    "moe_experts_keep(Tensor hidden, Tensor expert_index, Tensor gate, Tensor gate_up_proj, Tensor down_proj) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
lib.define(
    "moe_experts_backward(Tensor hidden, Tensor grad_out, Tensor gate, Tensor gate_up_proj, Tensor down_proj, "
    "Tensor offsets, Tensor sorted_slots, Tensor slot_rows, Tensor? h, bool[] needs) -> (Tensor, Tensor, Tensor, Tensor)"
)


def _unit_inner(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


# ---- the kernels' arguments (csrc/bindings_moe.cpp), field by field ----------------------------------------------


def moe_dispatch_params(idx: torch.Tensor, num_experts: int, offsets: torch.Tensor, sorted_slots: torch.Tensor,
                        slot_rows: torch.Tensor, counts: torch.Tensor) -> _C.MoeDispatchParams:
    """idx: the expert ids, contiguous int32/int64 (any shape); offsets and counts [E], sorted_slots and
    slot_rows [idx.numel()], all int32 contiguous."""
    p = _C.MoeDispatchParams()
    p.expert_index, p.index_dtype = idx.data_ptr(), DTYPE_CODES[idx.dtype]
    p.num_slots, p.num_experts = idx.numel(), num_experts
    p.offsets, p.sorted_slots, p.slot_rows = offsets.data_ptr(), sorted_slots.data_ptr(), slot_rows.data_ptr()
    p.counts = counts.data_ptr()
    return p


def grouped_gemm_params(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor | None,
                        out: torch.Tensor) -> _C.GroupedGemmParams:
    """a [M, K], b [G, N, K] (any strides), offsets [G] int32 contiguous (None: not set, for
    _C.grouped_gemm_path), out [M, N] with unit inner stride; no workspace yet."""
    p = _C.GroupedGemmParams()
    p.a, (p.a_row_stride, p.a_col_stride) = a.data_ptr(), a.stride()
    p.b, (p.b_group_stride, p.b_row_stride, p.b_col_stride) = b.data_ptr(), b.stride()
    p.offsets = 0 if offsets is None else offsets.data_ptr()
    p.out, p.out_row_stride = out.data_ptr(), out.stride(0)
    p.dtype = DTYPE_CODES[a.dtype]
    (p.M, p.K), (p.G, p.N, _) = a.shape, b.shape
    p.workspace, p.workspace_bytes = 0, 0
    return p


def grouped_gemm_weight_grad_params(dy: torch.Tensor, a: torch.Tensor, offsets: torch.Tensor,
                                    grad: torch.Tensor) -> _C.GroupedGemmWeightGradParams:
    """dy [M, N] and a [M, K] (any strides, one dtype), offsets [G] int32 contiguous, grad [G, N, K] with unit
    inner stride (any float dtype); no workspace yet."""
    p = _C.GroupedGemmWeightGradParams()
    p.dy, (p.dy_row_stride, p.dy_col_stride) = dy.data_ptr(), dy.stride()
    p.a, (p.a_row_stride, p.a_col_stride) = a.data_ptr(), a.stride()
    p.offsets = offsets.data_ptr()
    p.grad_b, p.grad_b_group_stride, p.grad_b_row_stride = grad.data_ptr(), grad.stride(0), grad.stride(1)
    p.dtype, p.grad_dtype = DTYPE_CODES[a.dtype], DTYPE_CODES[grad.dtype]
    (p.M, p.N), p.K, p.G = dy.shape, a.shape[1], grad.shape[0]
    p.workspace, p.workspace_bytes = 0, 0
    return p


def moe_experts_params(hidden: torch.Tensor, idx: torch.Tensor, gate: torch.Tensor, w1: torch.Tensor,
                       w2: torch.Tensor, out: torch.Tensor, keep: tuple | None = None) -> _C.MoeExpertsParams:
    """hidden [T, D] and out [T, D] (unit inner stride), idx [T] or [T, k] int32/int64 and gate (its shape, any
    float dtype) contiguous, w1 = gate_up_proj [E, 2I, D] and w2 = down_proj [E, D, I] with unit inner stride;
    keep: None, or (offsets [E], sorted_slots [T*k], slot_rows [T*k] int32, h [T*k, 2I] in hidden's dtype), all
    contiguous, for the CPU kernel to store the dispatch and the gate-up products in. No workspace yet."""
    p = _C.MoeExpertsParams()
    keep_ptrs = (0, 0, 0, 0) if keep is None else tuple(t.data_ptr() for t in keep)
    p.keep_offsets, p.keep_sorted_slots, p.keep_slot_rows, p.keep_h = keep_ptrs
    T, D = hidden.shape
    p.hidden, p.hidden_row_stride = hidden.data_ptr(), hidden.stride(0) if T > 1 else D
    p.expert_index, p.index_dtype = idx.data_ptr(), DTYPE_CODES[idx.dtype]
    p.gate, p.gate_dtype = gate.data_ptr(), DTYPE_CODES[gate.dtype]
    p.top_k = 1 if idx.dim() == 1 else idx.shape[1]
    p.gate_up, p.gate_up_expert_stride, p.gate_up_row_stride = w1.data_ptr(), w1.stride(0), w1.stride(1)
    p.down, p.down_expert_stride, p.down_row_stride = w2.data_ptr(), w2.stride(0), w2.stride(1)
    p.out, p.out_row_stride = out.data_ptr(), out.stride(0) if T > 1 else D
    p.dtype = DTYPE_CODES[hidden.dtype]
    p.T, p.D, p.I, p.E = T, D, w2.shape[2], w1.shape[0]
    p.workspace, p.workspace_bytes = 0, 0
    return p


def moe_experts_backward_params(hidden: torch.Tensor, grad_out: torch.Tensor, gate: torch.Tensor, w1: torch.Tensor,
                                w2: torch.Tensor, offsets: torch.Tensor, sorted_slots: torch.Tensor,
                                slot_rows: torch.Tensor, h: torch.Tensor | None, grad_hidden: torch.Tensor | None,
                                grad_gate: torch.Tensor | None, grad_w1: torch.Tensor | None,
                                grad_w2: torch.Tensor | None) -> _C.MoeExpertsBackwardParams:
    """hidden, grad_out [T, D] and grad_hidden [T, D] (unit inner stride), gate [T] or [T, k] contiguous (any
    float dtype) and grad_gate its shape and dtype, w1 [E, 2I, D] and w2 [E, D, I] with unit inner stride,
    offsets [E], sorted_slots and slot_rows [T*k] int32 contiguous, h [T*k, 2I] contiguous or None, grad_w1
    and grad_w2 contiguous in the weights' shapes; a None gradient is not computed. No workspace yet."""
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    p = _C.MoeExpertsBackwardParams()
    T, D = hidden.shape
    p.hidden, p.hidden_row_stride = hidden.data_ptr(), hidden.stride(0) if T > 1 else D
    p.grad_out, p.grad_out_row_stride = grad_out.data_ptr(), grad_out.stride(0) if T > 1 else D
    p.gate, p.gate_dtype = gate.data_ptr(), DTYPE_CODES[gate.dtype]
    p.top_k = 1 if gate.dim() == 1 else gate.shape[1]
    p.gate_up, p.gate_up_expert_stride, p.gate_up_row_stride = w1.data_ptr(), w1.stride(0), w1.stride(1)
    p.down, p.down_expert_stride, p.down_row_stride = w2.data_ptr(), w2.stride(0), w2.stride(1)
    p.offsets, p.sorted_slots, p.slot_rows = offsets.data_ptr(), sorted_slots.data_ptr(), slot_rows.data_ptr()
    p.h = ptr(h)
    p.grad_hidden = ptr(grad_hidden)
    p.grad_hidden_row_stride = D if grad_hidden is None or T <= 1 else grad_hidden.stride(0)
    p.grad_gate, p.grad_gate_up, p.grad_down = ptr(grad_gate), ptr(grad_w1), ptr(grad_w2)
    p.dtype = DTYPE_CODES[hidden.dtype]
    p.T, p.D, p.I, p.E = T, D, w2.shape[2], w1.shape[0]
    p.workspace, p.workspace_bytes = 0, 0
    return p


# ---- moe_dispatch -------------------------------------------------------------------------------------------


def _check_dispatch(expert_index, num_experts):
    check_tensor("moe_dispatch", "expert_index", expert_index, dtypes=INDEX_DTYPES)
    if expert_index.dim() not in (1, 2):
        raise ValueError(f"zaya_rt.moe_dispatch: expert_index must be [T] or [T, k], got {tuple(expert_index.shape)}")
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"zaya_rt.moe_dispatch: num_experts must be a positive int, got {num_experts!r}")


def _moe_dispatch_impl(expert_index, num_experts):
    _check_dispatch(expert_index, num_experts)
    idx = expert_index.contiguous()
    slots = idx.numel()
    dev = idx.device
    offsets = torch.empty(num_experts, dtype=torch.int32, device=dev)
    counts = torch.empty(num_experts, dtype=torch.int32, device=dev)
    sorted_slots = torch.empty(slots, dtype=torch.int32, device=dev)
    slot_rows = torch.empty(slots, dtype=torch.int32, device=dev)
    _C.moe_dispatch(moe_dispatch_params(idx, num_experts, offsets, sorted_slots, slot_rows, counts),
                    *device_args(idx))
    return offsets, sorted_slots, slot_rows


def _moe_dispatch_fake(expert_index, num_experts):
    _check_dispatch(expert_index, num_experts)
    n = expert_index.numel()
    new = expert_index.new_empty
    return new(num_experts, dtype=torch.int32), new(n, dtype=torch.int32), new(n, dtype=torch.int32)


# ---- grouped_gemm -------------------------------------------------------------------------------------------


def _check_grouped(op, a, b, offsets):
    check_tensor(op, "a", a, ndim=2)
    check_tensor(op, "b", b, ndim=3)
    check_tensor(op, "offsets", offsets, dtypes=(torch.int32,), ndim=1)
    if b.dtype != a.dtype:
        raise TypeError(f"zaya_rt.{op}: b has dtype {b.dtype} but a has {a.dtype}")
    if b.shape[2] != a.shape[1]:
        raise ValueError(f"zaya_rt.{op}: a is [M, K={a.shape[1]}] but b is [G, N, K={b.shape[2]}]")
    if offsets.shape[0] != b.shape[0] or b.shape[0] < 1:
        raise ValueError(f"zaya_rt.{op}: offsets has {offsets.shape[0]} entries for {b.shape[0]} groups in b")
    check_same_device(op, a=a, b=b, offsets=offsets)


def _grouped_gemm_impl(a, b, offsets):
    _check_grouped("grouped_gemm", a, b, offsets)
    # The CPU packers read any strides: a transposed b (the backward's W^T) costs no copy there.
    a, b, offsets = _unit_inner(a), b if b.is_cpu else _unit_inner(b), offsets.contiguous()
    M, K = a.shape
    G, N, _ = b.shape
    if K == 0:  # an empty inner dimension: every product is an empty sum
        return torch.zeros((M, N), dtype=a.dtype, device=a.device)
    out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    p = grouped_gemm_params(a, b, offsets, out)
    run_kernel(_C.grouped_gemm, _C.grouped_gemm_workspace, p, a)
    return out


def _grouped_gemm_fake(a, b, offsets):
    _check_grouped("grouped_gemm", a, b, offsets)
    return a.new_empty((a.shape[0], b.shape[1]))


def _check_weight_grad(dy, a, offsets):
    op = "grouped_gemm_weight_grad"
    check_tensor(op, "dy", dy, ndim=2)
    check_tensor(op, "a", a, ndim=2)
    check_tensor(op, "offsets", offsets, dtypes=(torch.int32,), ndim=1)
    if dy.dtype != a.dtype or dy.shape[0] != a.shape[0]:
        raise ValueError(f"zaya_rt.{op}: dy {tuple(dy.shape)} {dy.dtype} and a {tuple(a.shape)} {a.dtype} must "
                         "share dtype and row count")
    if offsets.shape[0] < 1:
        raise ValueError(f"zaya_rt.{op}: offsets must name at least one group")
    check_same_device(op, dy=dy, a=a, offsets=offsets)


def _weight_grad_impl(dy, a, offsets):
    _check_weight_grad(dy, a, offsets)
    offsets = offsets.contiguous()
    M, N = dy.shape
    K = a.shape[1]
    G = offsets.shape[0]
    grad = torch.empty((G, N, K), dtype=a.dtype, device=a.device)
    p = grouped_gemm_weight_grad_params(dy, a, offsets, grad)
    run_kernel(_C.grouped_gemm_weight_grad, _C.grouped_gemm_weight_grad_workspace, p, a)
    return grad


def _weight_grad_fake(dy, a, offsets):
    _check_weight_grad(dy, a, offsets)
    return a.new_empty((offsets.shape[0], dy.shape[1], a.shape[1]))


def _grouped_gemm_setup(ctx, inputs, output):
    a, b, offsets = inputs
    ctx.save_for_backward(a, b, offsets)


def _grouped_gemm_backward(ctx, grad_out):
    a, b, offsets = ctx.saved_tensors
    grad_out = grad_out.to(a.dtype)
    grad_a = torch.ops.zaya_rt.grouped_gemm(grad_out, b.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
    grad_b = torch.ops.zaya_rt.grouped_gemm_weight_grad(grad_out, a, offsets) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None


# ---- moe_experts --------------------------------------------------------------------------------------------


def _check_experts(hidden, expert_index, gate, gate_up_proj, down_proj):
    op = "moe_experts"
    check_tensor(op, "hidden", hidden, ndim=2)
    check_tensor(op, "expert_index", expert_index, dtypes=INDEX_DTYPES)
    check_tensor(op, "gate", gate)
    check_tensor(op, "gate_up_proj", gate_up_proj, ndim=3)
    check_tensor(op, "down_proj", down_proj, ndim=3)
    T, D = hidden.shape
    if expert_index.dim() not in (1, 2) or expert_index.shape[0] != T:
        raise ValueError(f"zaya_rt.{op}: expert_index must be [T={T}] or [T, k], got {tuple(expert_index.shape)}")
    if gate.shape != expert_index.shape:
        raise ValueError(f"zaya_rt.{op}: gate has shape {tuple(gate.shape)}, expert_index {tuple(expert_index.shape)}")
    E, two_i, d_in = gate_up_proj.shape
    if d_in != D or two_i % 2:
        raise ValueError(f"zaya_rt.{op}: gate_up_proj must be [E, 2I, D={D}], got {tuple(gate_up_proj.shape)}")
    if down_proj.shape != (E, D, two_i // 2):
        raise ValueError(f"zaya_rt.{op}: down_proj must be [E={E}, D={D}, I={two_i // 2}], got {tuple(down_proj.shape)}")
    for name, t in (("gate_up_proj", gate_up_proj), ("down_proj", down_proj)):
        if t.dtype != hidden.dtype:
            raise TypeError(f"zaya_rt.{op}: {name} has dtype {t.dtype}, hidden has {hidden.dtype}")
    check_same_device(op, hidden=hidden, expert_index=expert_index, gate=gate, gate_up_proj=gate_up_proj,
                      down_proj=down_proj)
    if E < 1:
        raise ValueError(f"zaya_rt.{op}: need at least one expert")


def _moe_experts_impl(hidden, expert_index, gate, gate_up_proj, down_proj):
    _check_experts(hidden, expert_index, gate, gate_up_proj, down_proj)
    E, two_i, D = gate_up_proj.shape
    T = hidden.shape[0]
    if two_i == 0:  # experts of width 0 contribute nothing
        return torch.zeros((T, D), dtype=hidden.dtype, device=hidden.device)
    hidden, w1, w2 = _unit_inner(hidden), _unit_inner(gate_up_proj), _unit_inner(down_proj)
    idx, gate = expert_index.contiguous(), gate.contiguous()
    out = torch.empty((T, D), dtype=hidden.dtype, device=hidden.device)
    p = moe_experts_params(hidden, idx, gate, w1, w2, out)
    run_kernel(_C.moe_experts, _C.moe_experts_workspace, p, hidden)
    return out


def _moe_experts_fake(hidden, expert_index, gate, gate_up_proj, down_proj):
    _check_experts(hidden, expert_index, gate, gate_up_proj, down_proj)
    return hidden.new_empty(hidden.shape)


def _moe_experts_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _zero_width_grads(ctx, hidden, gate, w1, w2):
    """Gradients of experts of width 0, whose output was constant zero."""
    need = ctx.needs_input_grad
    z = lambda i, t: torch.zeros_like(t) if need[i] else None  # noqa: E731
    return z(0, hidden), None, z(2, gate), z(3, w1), z(4, w2)


def _moe_experts_backward(ctx, grad_out):
    """Differentiates the expert block from its saved inputs (no activation memory kept by the forward): the
    gate-up GEMM is recomputed, everything else runs once. CPU: _backward_routed; elsewhere _backward_composed."""
    hidden, expert_index, gate, w1, w2 = ctx.saved_tensors
    if w1.shape[1] == 0:
        return _zero_width_grads(ctx, hidden, gate, w1, w2)
    if hidden.device.type == "cpu":
        dispatch = torch.ops.zaya_rt.moe_dispatch(expert_index, w1.shape[0])
        return _backward_fused(ctx, grad_out, hidden, gate, w1, w2, dispatch, None)
    return _backward_composed(ctx, grad_out, hidden, expert_index, gate, w1, w2)


def _backward_fused(ctx, grad_out, hidden, gate, w1, w2, dispatch, h):
    """The CPU backward: one moe_experts_backward call over the dispatch (and the kept h, or None)."""
    need = ctx.needs_input_grad
    wanted = [need[0], need[2], need[3], need[4]]
    grads = torch.ops.zaya_rt.moe_experts_backward(hidden, grad_out, gate, w1, w2, *dispatch, h, wanted)
    grad_hidden, grad_gate, grad_w1, grad_w2 = (g if n else None for g, n in zip(grads, wanted))
    return grad_hidden, None, grad_gate, grad_w1, grad_w2


def _slot_tokens(sorted_slots: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot ids int64, their token rows int64) of a dispatch's sorted_slots."""
    slots = sorted_slots.long()
    return slots, slots if top_k == 1 else torch.div(slots, top_k, rounding_mode="floor")


def _backward_routed(ctx, grad_out, hidden, expert_index, gate, w1, w2, dispatch=None, h=None):
    """The CPU backward (and the kept-activation path's everywhere). With W2^T dout computed once before the gate
    is applied, the gate's gradient is <W2^T dout, act> and the down GEMM is not recomputed; the SwiGLU backward
    runs in place in fp32; token and gate gradients are gathered through slot_rows (no scatter-add). dispatch
    (offsets, sorted_slots, slot_rows) and h [T*k, 2I] (the gate-up products in dispatch order) come from the
    kept-activation forward, or are recomputed when None. No data-dependent shapes (traceable)."""
    need = ctx.needs_input_grad
    E, two_i, _ = w1.shape
    I = two_i // 2
    T, D = hidden.shape
    dtype = hidden.dtype
    top_k = 1 if expert_index.dim() == 1 else expert_index.shape[1]
    offsets, sorted_slots, slot_rows = dispatch or torch.ops.zaya_rt.moe_dispatch(expert_index, E)
    rows = T * top_k  # skipped slots sort last, past offsets[-1]: the GEMMs give them zero rows
    slots, tokens = _slot_tokens(sorted_slots, top_k)
    x = hidden[tokens] if h is None or need[3] else None
    dout = grad_out.to(dtype)[tokens]
    if h is None:
        h = torch.ops.zaya_rt.grouped_gemm(x, w1, offsets)
    dact = torch.ops.zaya_rt.grouped_gemm(dout, w2.transpose(1, 2), offsets).float()  # W2^T dout, [rows, I]
    gate_rows = gate.reshape(-1)[slots].float()[:, None]
    hf = h.float()  # one conversion for both halves (none in fp32)
    g, u = hf[:, :I], hf[:, I:]
    s = torch.sigmoid(g)
    silu = g * s
    act = silu * u
    gather_rows = torch.where(slot_rows < 0, rows, slot_rows).long()  # skipped slots read an appended zero
    grad_gate = grad_w1 = grad_w2 = grad_hidden = None
    if need[2]:
        per_row = torch.cat([(dact * act).sum(-1), act.new_zeros(1)])
        grad_gate = per_row[gather_rows].view(gate.shape).to(gate.dtype)
    dact.mul_(gate_rows)
    dh = torch.empty((rows, two_i), dtype=dtype, device=hidden.device)
    torch.mul(dact, silu, out=dh[:, I:])
    dsilu = (1 - s).mul_(g).add_(1).mul_(s)  # d silu(g) / dg = s (1 + g (1 - s))
    torch.mul(dact.mul_(u), dsilu, out=dh[:, :I])
    if need[4]:
        dy = torch.empty((rows, D), dtype=dtype, device=hidden.device)
        torch.mul(dout, gate_rows, out=dy)
        grad_w2 = torch.ops.zaya_rt.grouped_gemm_weight_grad(dy, act.to(dtype), offsets)
    if need[3]:
        grad_w1 = torch.ops.zaya_rt.grouped_gemm_weight_grad(dh, x, offsets)
    if need[0]:
        dx = torch.ops.zaya_rt.grouped_gemm(dh, w1.transpose(1, 2), offsets)
        dx = torch.cat([dx, dx.new_zeros(1, D)])[gather_rows]
        grad_hidden = dx if top_k == 1 else dx.view(T, top_k, D).sum(1, dtype=torch.float32).to(dtype)
    return grad_hidden, None, grad_gate, grad_w1, grad_w2


def _backward_composed(ctx, grad_out, hidden, expert_index, gate, w1, w2):
    """The GPU backward: recomputes the expert activations from the saved inputs, then differentiates with
    grouped GEMMs over every slot (no host read of the routed row count); rows of skipped slots stay zero."""
    E, two_i, _ = w1.shape
    top_k = 1 if expert_index.dim() == 1 else expert_index.shape[1]
    offsets, sorted_slots, _ = torch.ops.zaya_rt.moe_dispatch(expert_index, E)
    sorted_slots = sorted_slots.long()
    tokens = torch.div(sorted_slots, top_k, rounding_mode="floor")
    x = hidden[tokens]
    h = torch.ops.zaya_rt.grouped_gemm(x, w1, offsets).float()
    g, u = h.split(two_i // 2, dim=-1)
    s = torch.sigmoid(g)
    act = (g * s * u).to(hidden.dtype)
    y = torch.ops.zaya_rt.grouped_gemm(act, w2, offsets)
    dout_rows = grad_out[tokens].float()
    gate_rows = gate.reshape(-1)[sorted_slots].float()
    grad_gate = None
    if ctx.needs_input_grad[2]:
        grad_gate = torch.zeros(gate.numel(), dtype=torch.float32, device=gate.device)
        grad_gate[sorted_slots] = (dout_rows * y.float()).sum(-1)
        grad_gate = grad_gate.view(gate.shape).to(gate.dtype)
    dy = (dout_rows * gate_rows[:, None]).to(hidden.dtype)
    grad_w2 = torch.ops.zaya_rt.grouped_gemm_weight_grad(dy, act, offsets) if ctx.needs_input_grad[4] else None
    dact = torch.ops.zaya_rt.grouped_gemm(dy, w2.transpose(1, 2), offsets).float()
    dh = torch.cat([dact * u * s * (1 + g * (1 - s)), dact * g * s], dim=-1).to(hidden.dtype)
    grad_w1 = torch.ops.zaya_rt.grouped_gemm_weight_grad(dh, x, offsets) if ctx.needs_input_grad[3] else None
    grad_hidden = None
    if ctx.needs_input_grad[0]:
        dx = torch.ops.zaya_rt.grouped_gemm(dh, w1.transpose(1, 2), offsets)
        grad_hidden = torch.zeros_like(hidden).index_add_(0, tokens, dx)
    return grad_hidden, None, grad_gate, grad_w1, grad_w2


# ---- moe_experts_backward: the CPU backward in one call ---------------------------------------------------


def _check_experts_backward(hidden, grad_out, gate, w1, w2, offsets, sorted_slots, slot_rows, h, needs):
    op = "moe_experts_backward"
    slots = gate.numel()
    for name, t, n in (("offsets", offsets, w1.shape[0]), ("sorted_slots", sorted_slots, slots),
                       ("slot_rows", slot_rows, slots)):
        check_tensor(op, name, t, dtypes=(torch.int32,), ndim=1)
        if t.shape[0] != n:
            raise ValueError(f"zaya_rt.{op}: {name} must have {n} entries, got {t.shape[0]}")
    _check_experts(hidden, slot_rows.view(gate.shape), gate, w1, w2)  # slot_rows stands in for the expert ids
    check_tensor(op, "grad_out", grad_out, ndim=2)
    if grad_out.shape != hidden.shape:
        raise ValueError(f"zaya_rt.{op}: grad_out {tuple(grad_out.shape)} must match hidden {tuple(hidden.shape)}")
    if h is not None:
        check_tensor(op, "h", h, ndim=2)
        if h.shape != (slots, w1.shape[1]) or h.dtype != hidden.dtype:
            raise ValueError(f"zaya_rt.{op}: h must be [{slots}, {w1.shape[1]}] in {hidden.dtype}, got "
                             f"{tuple(h.shape)} {h.dtype}")
    if len(needs) != 4:
        raise ValueError(f"zaya_rt.{op}: needs must name 4 gradients (hidden, gate, gate_up_proj, down_proj)")
    check_same_device(op, hidden=hidden, grad_out=grad_out, offsets=offsets, sorted_slots=sorted_slots,
                      slot_rows=slot_rows)


def _backward_outputs(hidden, gate, w1, w2, needs):
    """(grad_hidden, grad_gate, grad_gate_up, grad_down) in their inputs' shapes and dtypes, or empty where
    needs says a gradient is not wanted."""
    return tuple(torch.empty(t.shape if n else (0,), dtype=t.dtype, device=t.device)
                 for t, n in zip((hidden, gate, w1, w2), needs))


def _moe_experts_backward_impl(hidden, grad_out, gate, gate_up_proj, down_proj, offsets, sorted_slots, slot_rows,
                               h, needs):
    _check_experts_backward(hidden, grad_out, gate, gate_up_proj, down_proj, offsets, sorted_slots, slot_rows, h,
                            needs)
    outs = _backward_outputs(hidden, gate, gate_up_proj, down_proj, needs)
    if hidden.numel() == 0 or gate_up_proj.shape[1] == 0:  # no tokens, D = 0 or I = 0: all-zero gradients
        return tuple(o.zero_() for o in outs)
    hidden, w1, w2 = _unit_inner(hidden), _unit_inner(gate_up_proj), _unit_inner(down_proj)
    grad_out = _unit_inner(grad_out.to(hidden.dtype))
    gate = gate.contiguous()
    offsets, sorted_slots, slot_rows = offsets.contiguous(), sorted_slots.contiguous(), slot_rows.contiguous()
    h = None if h is None else h.contiguous()
    p = moe_experts_backward_params(hidden, grad_out, gate, w1, w2, offsets, sorted_slots, slot_rows, h,
                                    *(o if n else None for o, n in zip(outs, needs)))
    dev = device_args(hidden)
    ws = workspace(_C.moe_experts_backward_workspace(p, dev[0]), hidden.device, BACKWARD_SCRATCH_MAX_BYTES)
    _C.moe_experts_backward(set_workspace(p, ws), *dev)
    return outs


# moe_experts_backward's workspace holds the backward's row buffers, tens of MB at training sizes (39 MB at T 2048,
# D = I = 512, fp32): the shared scratch is reused up to this size for it.
BACKWARD_SCRATCH_MAX_BYTES = 256 << 20


def _moe_experts_backward_fake(hidden, grad_out, gate, gate_up_proj, down_proj, offsets, sorted_slots, slot_rows,
                               h, needs):
    _check_experts_backward(hidden, grad_out, gate, gate_up_proj, down_proj, offsets, sorted_slots, slot_rows, h,
                            needs)
    return _backward_outputs(hidden, gate, gate_up_proj, down_proj, needs)


# ---- moe_experts_keep: the kept-activation path ------------------------------------------------------------


def _moe_experts_keep_impl(hidden, expert_index, gate, gate_up_proj, down_proj):
    """The expert block as dispatch + gate-up grouped GEMM + SwiGLU (fp32, rounded once) + down grouped GEMM +
    gate scaling and combine (fp32, rounded once), returning the dispatch and the gate-up products h for the
    backward."""
    _check_experts(hidden, expert_index, gate, gate_up_proj, down_proj)
    E, two_i, D = gate_up_proj.shape
    T = hidden.shape[0]
    if hidden.is_cpu and hidden.numel() > 0 and two_i > 0:
        return _moe_experts_keep_fused(hidden, expert_index, gate, gate_up_proj, down_proj)
    top_k = 1 if expert_index.dim() == 1 else expert_index.shape[1]
    offsets, sorted_slots, slot_rows = torch.ops.zaya_rt.moe_dispatch(expert_index, E)
    rows = T * top_k
    slots, tokens = _slot_tokens(sorted_slots, top_k)
    h = torch.ops.zaya_rt.grouped_gemm(hidden[tokens], gate_up_proj, offsets)
    if two_i == 0:  # experts of width 0 contribute nothing
        return torch.zeros((T, D), dtype=hidden.dtype, device=hidden.device), offsets, sorted_slots, slot_rows, h
    hf = h.float()
    I = two_i // 2
    act = F.silu(hf[:, :I]).mul_(hf[:, I:]).to(hidden.dtype)
    y = torch.ops.zaya_rt.grouped_gemm(act, down_proj, offsets)  # rows past offsets[-1] (skipped slots) are 0
    gate_rows = gate.reshape(-1)[slots].float()[:, None]
    weighted = torch.cat([y.float().mul_(gate_rows), y.new_zeros(1, D, dtype=torch.float32)])
    gather_rows = torch.where(slot_rows < 0, rows, slot_rows).long()
    per_slot = weighted[gather_rows]  # [T*k, D] fp32, slot order
    out = per_slot if top_k == 1 else per_slot.view(T, top_k, D).sum(1)
    return out.to(hidden.dtype), offsets, sorted_slots, slot_rows, h


def _moe_experts_keep_fused(hidden, expert_index, gate, gate_up_proj, down_proj):
    """The CPU kept-activation forward: the fused moe_experts kernel, storing its dispatch and h as it goes."""
    hidden, w1, w2 = _unit_inner(hidden), _unit_inner(gate_up_proj), _unit_inner(down_proj)
    idx, gate = expert_index.contiguous(), gate.contiguous()
    E, two_i, _ = w1.shape
    n = idx.numel()
    out = torch.empty(hidden.shape, dtype=hidden.dtype)
    keep = (torch.empty(E, dtype=torch.int32), torch.empty(n, dtype=torch.int32), torch.empty(n, dtype=torch.int32),
            torch.empty((n, two_i), dtype=hidden.dtype))
    run_kernel(_C.moe_experts, _C.moe_experts_workspace, moe_experts_params(hidden, idx, gate, w1, w2, out, keep),
               hidden)
    return (out, *keep)


def _moe_experts_keep_fake(hidden, expert_index, gate, gate_up_proj, down_proj):
    _check_experts(hidden, expert_index, gate, gate_up_proj, down_proj)
    E, two_i, _ = gate_up_proj.shape
    n = expert_index.numel()
    index = lambda: expert_index.new_empty(n, dtype=torch.int32)  # noqa: E731
    return (hidden.new_empty(hidden.shape), expert_index.new_empty(E, dtype=torch.int32), index(), index(),
            hidden.new_empty((n, two_i)))


def _moe_experts_keep_setup(ctx, inputs, output):
    _, offsets, sorted_slots, slot_rows, h = output
    ctx.mark_non_differentiable(offsets, sorted_slots, slot_rows, h)
    ctx.save_for_backward(*inputs, offsets, sorted_slots, slot_rows, h)


def _moe_experts_keep_backward(ctx, grad_out, *_unused):
    hidden, expert_index, gate, w1, w2, offsets, sorted_slots, slot_rows, h = ctx.saved_tensors
    if w1.shape[1] == 0:
        return _zero_width_grads(ctx, hidden, gate, w1, w2)
    dispatch = (offsets, sorted_slots, slot_rows)
    if hidden.device.type == "cpu":
        return _backward_fused(ctx, grad_out, hidden, gate, w1, w2, dispatch, h)
    return _backward_routed(ctx, grad_out, hidden, expert_index, gate, w1, w2, dispatch, h)


register_kernels("moe_dispatch", _moe_dispatch_impl, _moe_dispatch_fake)
register_kernels("grouped_gemm", _grouped_gemm_impl, _grouped_gemm_fake, (_grouped_gemm_setup, _grouped_gemm_backward))
register_kernels("grouped_gemm_weight_grad", _weight_grad_impl, _weight_grad_fake)
register_kernels("moe_experts", _moe_experts_impl, _moe_experts_fake, (_moe_experts_setup, _moe_experts_backward))
register_kernels("moe_experts_backward", _moe_experts_backward_impl, _moe_experts_backward_fake)
register_kernels("moe_experts_keep", _moe_experts_keep_impl, _moe_experts_keep_fake,
                 (_moe_experts_keep_setup, _moe_experts_keep_backward))


def moe_dispatch(expert_index: torch.Tensor, num_experts: int):
    """Sorts token slots by expert. expert_index: [T] or [T, k] int32/int64, value num_experts = skip.

    Returns (offsets [E] int32 cumulative row ends, sorted_slots [T*k] int32 slot ids in expert order with the
    skipped slots last, slot_rows [T*k] int32 row of each slot or -1 when skipped)."""
    if not isinstance(expert_index, torch.Tensor):
        _check_dispatch(expert_index, num_experts)
    return torch.ops.zaya_rt.moe_dispatch(expert_index, num_experts)


def grouped_gemm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """out_g = a_g @ b_g^T over row groups: a [M, K], b [G, N, K], offsets [G] int32 cumulative group ends
    (the convention of `torch._grouped_mm(a, b.transpose(1, 2), offs=offsets)`). Returns [M, N] in a's dtype;
    rows past offsets[-1] are zero. Groups may be empty. Differentiable in a and b."""
    if not all(isinstance(t, torch.Tensor) for t in (a, b, offsets)):
        _check_grouped("grouped_gemm", a, b, offsets)
    return torch.ops.zaya_rt.grouped_gemm(a, b, offsets)


def moe_experts(
    hidden: torch.Tensor,
    expert_index: torch.Tensor,
    gate: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    keep_activations: bool = False,
) -> torch.Tensor:
    """The ZAYA1 expert block: y_t = sum_j gate[t, j] * down_e(SiLU(gate_e x_t) * up_e x_t), e = expert_index[t, j].

    hidden [T, D]; expert_index [T] or [T, k] int32/int64 where E (= gate_up_proj.shape[0]) means skip (no
    work, no output); gate same shape as expert_index, any float dtype; gate_up_proj [E, 2I, D] gate rows first;
    down_proj [E, D, I]; weights in hidden's dtype. Returns [T, D] in hidden's dtype. Differentiable in hidden,
    gate and both weights.

    keep_activations: when a gradient is wanted, keep the dispatch and the gate-up products ([T*k, 2I] in
    hidden's dtype) from the forward (moe_experts_keep) so that the backward skips the dispatch and the gate-up
    GEMM: memory for speed. Without a gradient it changes nothing."""
    args = (hidden, expert_index, gate, gate_up_proj, down_proj)
    if not isinstance(keep_activations, bool):
        raise TypeError(f"zaya_rt.moe_experts: keep_activations must be a bool, got {type(keep_activations).__name__}")
    if not all(isinstance(t, torch.Tensor) for t in args):
        _check_experts(*args)
    if keep_activations and torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return torch.ops.zaya_rt.moe_experts_keep(*args)[0]
    return call_op(torch.ops.zaya_rt.moe_experts.default, args, cpu_impl=_moe_experts_impl)

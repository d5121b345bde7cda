"""Direct `_C` calls for the runner's CPU hot path.

The runner builds every tensor it hands to these functions itself: shapes, dtypes, unit inner strides and the
device follow from the model and the cache, so the Python checks and the torch.library dispatch of
`zaya_rt.ops` (tens of microseconds per call, more than the kernels cost at decode sizes) are skipped here. The
C++ dispatch still validates sizes and index values (bad slots, pages, expert ids raise ValueError). CPU only:
the runner takes `zaya_rt.ops` on other devices. Legend: T rows, D hidden, N output features, R router width,
E experts, B sequences.

Every kernel's arguments come from its builder in `zaya_rt.ops` (the call contract, csrc/bindings_params.h).
A builder runs once per shape (and fixed tensors); later calls of that shape reuse its params object and set
only the addresses of their inputs and of the workspace: decode-sized calls also reuse the output buffers made
with the params (`REUSE_MAX_ROWS`), so a decode step allocates no kernel outputs.
"""

from __future__ import annotations

import threading

import torch

from zaya_rt import _C
from zaya_rt.ops.attention import attention_decode_params
from zaya_rt.ops.cca import cca_prep_fwd_params
from zaya_rt.ops.moe import grouped_gemm_params, moe_experts_params
from zaya_rt.ops.norms import residual_rms_norm_fwd_params
from zaya_rt.ops.packed_linear import pack_linear_weight_params, packed_linear_params
from zaya_rt.ops.router import zaya_router_params
from zaya_rt.ops.runtime import kv_write_params
from zaya_rt.ops.sampling import sample_tokens_params

_CPU = (0, 0, 0)
_recording = threading.local()  # .tape: the step_tape.StepTape recording this thread's step, if any


def start_recording(tape) -> None:
    """Every `_C` call this thread makes through this module is also appended to `tape` until
    `stop_recording()`."""
    _recording.tape = tape


def stop_recording() -> None:
    _recording.tape = None


def recording():
    """The tape recording this thread's calls, or None."""
    return getattr(_recording, "tape", None)


def _call(entry, p, keep: tuple = ()) -> None:
    """entry(p) on the CPU; while a step is recorded, also onto its tape with `keep`, the tensors p's addresses
    point into that the tape may not otherwise hold (outputs kept by a wrapper, the workspace)."""
    entry(p, *_CPU)
    tape = getattr(_recording, "tape", None)
    if tape is not None:
        tape.add_entry(entry, p, keep)


class Workspace:
    """One growing uint8 scratch buffer reused by consecutive kernel calls (CPU calls are synchronous)."""

    def __init__(self) -> None:
        self._buf = torch.empty(0, dtype=torch.uint8)
        self._ptr, self._size = 0, 0

    def get(self, nbytes: int) -> tuple[int, int]:
        """(address, size in bytes) of a buffer of at least nbytes."""
        if self._size < nbytes or self._size == 0:
            self._buf = torch.empty(max(int(nbytes), 64), dtype=torch.uint8)
            self._ptr, self._size = self._buf.data_ptr(), self._buf.numel()
        return self._ptr, self._size

    @property
    def buffer(self) -> torch.Tensor:
        """The current buffer (replaced when a call needs more)."""
        return self._buf


_MAX_CACHED = 64
# Kernel outputs of calls with up to this many rows (decode-sized steps) are buffers built once with the call's
# params and reused by every later call of that shape; larger calls (prefill, whose shapes vary with every
# prompt) take fresh tensors, so the cached shapes hold no prefill-sized memory.
REUSE_MAX_ROWS = 64


def _params_for(cache: dict, key, build):
    """cache[key], made by build() on a miss. Decode shapes repeat; prefill shapes vary with every prompt, so a
    cache holding _MAX_CACHED keys starts over."""
    got = cache.get(key)
    if got is None:
        if len(cache) >= _MAX_CACHED:
            cache.clear()
        got = cache[key] = build()
    return got


def _kept(outputs):
    """outputs, to keep with their params when they have at most REUSE_MAX_ROWS rows; else None."""
    first = outputs[0] if isinstance(outputs, tuple) else outputs
    return outputs if first.shape[0] <= REUSE_MAX_ROWS else None


def _row_stride(t: torch.Tensor) -> int:
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


class Linear:
    """y [T, N] = x [T, K] @ weight[N, K]^T (+ bias) in the weight's dtype with fp32 accumulation.

    Up to `PACKED_MAX_ROWS` rows (decode steps) run on a copy of the weight packed once into column panels
    (`_C.packed_linear`: outer products, no per-call packing); more rows take zaya_rt's GEMM (the grouped GEMM
    with one group). The packed copy costs as much memory as a bf16 or fp32 weight again (twice an fp16
    weight's, which is packed as fp32). The bias is taken in the weight's dtype.

    reuse_out: y of up to `REUSE_MAX_ROWS` rows is a buffer of this object, one per shape, overwritten by its
    next call of that shape (the runner's per-layer projections, consumed within the step); False returns a fresh
    tensor each call."""

    PACKED_MAX_ROWS = 64

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ws: Workspace, *,
                 reuse_out: bool = True) -> None:
        self.weight = weight.contiguous()
        self.bias = None if bias is None else bias.to(self.weight.dtype).contiguous()
        self.N, self.K = self.weight.shape
        self.ws = ws
        self.reuse_out = reuse_out
        nbytes = _C.packed_linear_bytes(pack_linear_weight_params(self.weight, self.bias, None), 0)
        buf = torch.empty(nbytes + 64, dtype=torch.uint8)
        self._packed = buf[(-buf.data_ptr()) % 64:][:nbytes]
        _C.pack_linear_weight(pack_linear_weight_params(self.weight, self.bias, self._packed), *_CPU)
        self._params: dict[tuple, tuple] = {}  # (T, x row stride, dtype) -> (params, workspace bytes, out, offsets)

    def _build(self, x: torch.Tensor) -> tuple:
        T = x.shape[0]
        out = torch.empty((T, self.N), dtype=self.weight.dtype)
        if T <= self.PACKED_MAX_ROWS:
            p = packed_linear_params(x, self._packed, out)
            return p, _C.packed_linear_workspace(p, 0), _kept(out), None
        offsets = torch.tensor([T], dtype=torch.int32)
        p = grouped_gemm_params(x, self.weight[None], offsets, out)
        return p, _C.grouped_gemm_workspace(p, 0), _kept(out), offsets

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        p, nbytes, out, offsets = _params_for(self._params, (T, _row_stride(x), x.dtype), lambda: self._build(x))
        if out is None or not self.reuse_out:
            out = torch.empty((T, self.N), dtype=self.weight.dtype)
            p.out = out.data_ptr()
        p.workspace, p.workspace_bytes = self.ws.get(nbytes)
        if T <= self.PACKED_MAX_ROWS:
            p.x = x.data_ptr()
            _call(_C.packed_linear, p, (self._packed, out, self.ws.buffer))
            return out
        p.a = x.data_ptr()
        _call(_C.grouped_gemm, p, (self.weight, out, offsets, self.ws.buffer))
        if self.bias is not None:
            out += self.bias
        return out


class ResidualNorm:
    """`ZayaResidualScaling.fused_with_norm` for one (scaling, norm) pair: y [T, D] any float dtype and h [T, D]
    fp32 (unit inner stride) -> (r [T, D] fp32, norm(r) [T, D] in norm's dtype) with
    r = (y + b_y) * s_y + (h + b_h) * s_h. Up to `REUSE_MAX_ROWS` rows, r and norm(r) are buffers of this
    object, one pair per shape, overwritten by its next call of that shape."""

    def __init__(self, scaling, norm) -> None:
        self.params = [t.detach().contiguous() for t in (
            scaling.hidden_states_bias, scaling.hidden_states_scale, scaling.residual_bias, scaling.residual_scale,
            norm.weight)]
        self.dtype = self.params[-1].dtype
        self.eps = float(norm.eps)
        self._rstd = torch.empty(0, dtype=torch.float32)  # the kernel's 1/rms per row, unused here
        self._cached: dict[tuple, tuple] = {}  # (T, y and h dtypes and row strides) -> (params, (r, out))

    def _build(self, y: torch.Tensor, h: torch.Tensor) -> tuple:
        T, D = y.shape
        if self._rstd.numel() < T:
            self._rstd = torch.empty(max(T, 16), dtype=torch.float32)
            self._cached.clear()
        outs = self._outputs(T, D)
        p = residual_rms_norm_fwd_params(y, h, self.params[:4], self.params[4], *outs, self._rstd, self.eps)
        return p, _kept(outs)

    def _outputs(self, T: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty((T, D), dtype=torch.float32), torch.empty((T, D), dtype=self.dtype)

    def __call__(self, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (y.shape[0], y.dtype, h.dtype, _row_stride(y), _row_stride(h))
        p, outs = _params_for(self._cached, key, lambda: self._build(y, h))
        if outs is None:
            outs = self._outputs(*y.shape)
            p.r, p.out = outs[0].data_ptr(), outs[1].data_ptr()
        p.y, p.h = y.data_ptr(), h.data_ptr()
        _call(_C.residual_rms_norm_fwd, p, (self.params, outs, self._rstd, y, h))
        return outs


class Router:
    """`ZayaRouter` of one layer: x [T, D], z_prev [T, R] fp32 or None -> (logits [T, E+1] fp32, gate [T] fp32,
    choice [T] int64, z [T, R] fp32); up to `REUSE_MAX_ROWS` rows, buffers of this object (one set per shape,
    overwritten by its next call of that shape)."""

    def __init__(self, router, ws: Workspace) -> None:
        mlp = router.router_mlp
        self.tensors = [t.detach().contiguous() for t in (
            router.down_proj.weight, router.down_proj.bias, mlp.norm.weight, mlp.fc1.weight, mlp.fc1.bias,
            mlp.fc2.weight, mlp.fc2.bias, mlp.out_proj.weight, router.balancing_biases.to(torch.float32))]
        scale = router.router_states_scale
        self.eda = None if scale is None else scale.detach().contiguous()
        self.eps = float(mlp.norm.eps)
        self.R, self.D = self.tensors[0].shape
        self.C = self.tensors[7].shape[0]
        self.ws = ws
        # (T, x dtype and row stride, z_prev dtype) -> (params, workspace bytes, (logits, gate, choice, z))
        self._cached: dict[tuple, tuple] = {}

    def _outputs(self, T: int) -> tuple:
        return (torch.empty((T, self.C), dtype=torch.float32), torch.empty((T,), dtype=torch.float32),
                torch.empty((T,), dtype=torch.int64), torch.empty((T, self.R), dtype=torch.float32))

    def _build(self, x: torch.Tensor, z_prev: torch.Tensor | None) -> tuple:
        outs = self._outputs(x.shape[0])
        down_w, down_b, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, bias = self.tensors
        p = zaya_router_params(x, z_prev, down_w, down_b, self.eda, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w,
                               bias, self.eps, *outs)
        return p, _C.zaya_router_workspace(p, 0), _kept(outs)

    def __call__(self, x: torch.Tensor, z_prev: torch.Tensor | None):
        key = (x.shape[0], x.dtype, _row_stride(x), None if z_prev is None else z_prev.dtype)
        p, nbytes, outs = _params_for(self._cached, key, lambda: self._build(x, z_prev))
        if outs is None:
            outs = self._outputs(x.shape[0])
            p.logits, p.gate, p.choice, p.z = (t.data_ptr() for t in outs)
        p.x, p.z_prev = x.data_ptr(), 0 if z_prev is None else z_prev.data_ptr()
        p.workspace, p.workspace_bytes = self.ws.get(nbytes)
        _call(_C.zaya_router, p, (self.tensors, self.eda, outs, self.ws.buffer))
        return outs


class Experts:
    """`ZayaExperts`: x [T, D], choice [T] int64 (E = skip), gate [T] fp32 -> [T, D] in x's dtype; up to
    `REUSE_MAX_ROWS` rows, a buffer of this object (one per shape, overwritten by its next call of that shape)."""

    def __init__(self, experts, ws: Workspace) -> None:
        self.w1 = experts.gate_up_proj.detach().contiguous()   # [E, 2I, D]
        self.w2 = experts.down_proj.detach().contiguous()      # [E, D, I]
        self.ws = ws
        self._cached: dict[tuple, tuple] = {}  # (T, dtypes, x row stride) -> (params, workspace bytes, out)

    def __call__(self, x: torch.Tensor, choice: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        def build():
            out = torch.empty(x.shape, dtype=x.dtype)
            p = moe_experts_params(x, choice, gate, self.w1, self.w2, out)
            return p, _C.moe_experts_workspace(p, 0), _kept(out)

        key = (x.shape[0], x.dtype, choice.dtype, gate.dtype, _row_stride(x))
        p, nbytes, out = _params_for(self._cached, key, build)
        if out is None:
            out = torch.empty(x.shape, dtype=x.dtype)
            p.out = out.data_ptr()
        p.hidden, p.expert_index, p.gate = x.data_ptr(), choice.data_ptr(), gate.data_ptr()
        p.workspace, p.workspace_bytes = self.ws.get(nbytes)
        _call(_C.moe_experts, p, (self.w1, self.w2, out, self.ws.buffer))
        return out


# Params of the two module-level calls by shape and cache (the runner's page caches live as long as it does).
_KV_WRITE: dict[tuple, object] = {}
_DECODE: dict[tuple, tuple] = {}


def kv_write(k: torch.Tensor, v: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Writes k, v [T, Hk, d] (contiguous) to the pages [P, S, Hk, d] at slot_mapping [T] (page * S + offset)."""
    T = k.shape[0]
    if T == 0:
        return
    key = (T, k_pages.data_ptr(), v_pages.data_ptr(), k_pages.shape, k_pages.dtype)
    p = _params_for(_KV_WRITE, key, lambda: kv_write_params(k.view(T, -1), v.view(T, -1), k_pages, v_pages, slot_mapping))
    p.k_new, p.v_new, p.slot_mapping = k.data_ptr(), v.data_ptr(), slot_mapping.data_ptr()
    _call(_C.kv_write, p, (k_pages, v_pages))


def attention_decode(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, window: int | None, ws: Workspace) -> torch.Tensor:
    """One query token per sequence: q [B, Hq, d] (contiguous) against the pages [P, S, Hk, d] (contiguous),
    block_table [B, M] int32 (contiguous), seq_lens [B] int32 -> [B, Hq, d], a buffer kept per shape and
    pages (one per layer), overwritten by the next call of that key."""
    key = (q.shape, q.dtype, k_pages.data_ptr(), v_pages.data_ptr(), k_pages.shape, block_table.shape, window, scale)

    def build():
        out = torch.empty(q.shape, dtype=q.dtype)
        p = attention_decode_params(q[:, None], k_pages, v_pages, block_table, seq_lens, out[:, None], window or 0,
                                    scale)
        return p, _C.attention_decode_workspace(p, 0), out

    p, nbytes, out = _params_for(_DECODE, key, build)
    p.q, p.block_table, p.seq_lens = q.data_ptr(), block_table.data_ptr(), seq_lens.data_ptr()
    p.workspace, p.workspace_bytes = ws.get(nbytes)
    _call(_C.attention_decode, p, (k_pages, v_pages, out, ws.buffer))
    return out


class CcaPrep:
    """`zaya_rt.ops.cca_prep` for one layer with its conv weights, temperature and RoPE table fixed:
    qp [T, Hq*d], kp [T, Hk*d], v_cur/v_del [T, Hk*d/2] (unit inner stride, any row stride), positions [T]
    int64, cu_seqlens [B+1] int32, states in/out [B, C, K] / [B, Hk*d/2] fp32 (contiguous) -> q [T, Hq, d],
    k and v [T, Hk, d] (up to `REUSE_MAX_ROWS` rows, buffers of this object, one set per shape, overwritten by
    its next call of that shape);
    the outgoing states are written into conv_out / v_out."""

    def __init__(self, conv0_w, conv0_b, conv1_w, conv1_b, temp, *, num_q_heads: int, num_kv_heads: int,
                 head_dim: int, rope_dims: int, inv_freq: torch.Tensor, ws: Workspace) -> None:
        self.tensors = tuple(t.detach().contiguous() for t in (conv0_w, conv0_b, conv1_w, conv1_b, temp))
        if inv_freq.shape != (rope_dims // 2,):
            raise ValueError(f"CcaPrep: inv_freq must be [rope_dims / 2] = [{rope_dims // 2}], got "
                             f"{tuple(inv_freq.shape)}")
        self.inv_freq = inv_freq.contiguous()
        self.Hq, self.Hk, self.d = num_q_heads, num_kv_heads, head_dim
        self.ws = ws
        self._cached: dict[tuple, tuple] = {}  # shapes, dtypes and row strides -> (params, bytes, (q, k, v))

    def __call__(self, qp, kp, v_cur, v_del, positions, cu_seqlens, conv_in, v_in, conv_out, v_out):
        T = qp.shape[0]
        key = (T, cu_seqlens.shape[0], qp.dtype, positions.dtype, conv_in.dtype, conv_out.dtype, qp.stride(0),
               kp.stride(0), v_cur.stride(0), v_del.stride(0))

        def outputs():
            return tuple(torch.empty((T, h, self.d), dtype=qp.dtype) for h in (self.Hq, self.Hk, self.Hk))

        def build():
            outs = outputs()
            p = cca_prep_fwd_params(qp, kp, v_cur, v_del, self.tensors, conv_in, v_in, positions, cu_seqlens,
                                    self.inv_freq, *outs, conv_out, v_out)
            return p, _C.cca_prep_fwd_workspace(p, 0), _kept(outs)

        p, nbytes, outs = _params_for(self._cached, key, build)
        if outs is None:
            outs = outputs()
            p.q, p.k, p.v = (t.data_ptr() for t in outs)
        q, k, v = outs
        p.qp, p.kp, p.v_cur, p.v_del = qp.data_ptr(), kp.data_ptr(), v_cur.data_ptr(), v_del.data_ptr()
        p.positions, p.cu_seqlens = positions.data_ptr(), cu_seqlens.data_ptr()
        p.conv_state_in, p.v_state_in = conv_in.data_ptr(), v_in.data_ptr()
        p.conv_state_out, p.v_state_out = conv_out.data_ptr(), v_out.data_ptr()
        p.workspace, p.workspace_bytes = self.ws.get(nbytes)
        _call(_C.cca_prep_fwd, p, (self.tensors, self.inv_freq, outs, self.ws.buffer))
        return q, k, v


class Greedy:
    """Greedy tokens [B] int64 of logits [B, V] (unit inner stride): the fused sampler at temperature 0, with
    its first-maximum rule and NaN check."""

    def __init__(self) -> None:
        self._zeros = torch.zeros(0, dtype=torch.int64)
        self._ones = torch.ones(0, dtype=torch.float32)
        self._cached: dict[tuple, object] = {}  # (B, V, dtype, row stride) -> params

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        B = logits.shape[0]
        if self._zeros.numel() < B:
            self._zeros = torch.zeros(B, dtype=torch.int64)
            self._ones = torch.ones(B, dtype=torch.float32)
            self._cached.clear()
        out = torch.empty(B, dtype=torch.int64)
        # all-zero bytes serve as temperature (0: greedy), top_k, min_p, seed and step; top_p must be in (0, 1]
        zero, one = self._zeros, self._ones
        p = _params_for(self._cached, (logits.shape, logits.dtype, logits.stride(0)),
                    lambda: sample_tokens_params(logits, (zero, zero, one, zero, zero, zero), out))
        p.logits, p.out = logits.data_ptr(), out.data_ptr()
        _call(_C.sample_tokens, p, (zero, one, out))
        return out

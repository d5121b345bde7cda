"""Direct `_C` calls for the runner's CPU hot path.

The runner builds every tensor it hands to these functions itself: shapes, dtypes, unit inner strides and the
device follow from the model and the cache, so the Python checks and the torch.library dispatch of
`zaya_rt.ops` (tens of microseconds per call, more than the kernels cost at decode sizes) are skipped here. The
C++ dispatch still validates sizes and index values (bad slots, pages, expert ids raise ValueError). CPU only:
the runner takes `zaya_rt.ops` on other devices. Legend: T rows, D hidden, N output features, R router width,
E experts, B sequences.
"""

from __future__ import annotations

import torch

from zaya_rt import _C
from zaya_rt.ops._lib import DTYPE_CODES

_CPU = (0, 0, 0)
_F32, _I64 = DTYPE_CODES[torch.float32], DTYPE_CODES[torch.int64]
_EPS = {dt: torch.finfo(dt).eps for dt in (torch.float32, torch.float16, torch.bfloat16)}


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


class Linear:
    """y [T, N] = x [T, K] @ weight[N, K]^T (+ bias) in the weight's dtype with fp32 accumulation.

    Up to `PACKED_MAX_ROWS` rows (decode steps) run on a copy of the weight packed once into column panels
    (`_C.packed_linear`: outer products, no per-call packing); more rows take zaya_rt's GEMM (the grouped GEMM
    with one group). The packed copy costs as much memory as a bf16 or fp32 weight again (twice an fp16
    weight's, which is packed as fp32). The bias is taken in the weight's dtype."""

    PACKED_MAX_ROWS = 64

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ws: Workspace) -> None:
        self.weight = weight.contiguous()
        self.bias = None if bias is None else bias.to(self.weight.dtype).contiguous()
        self.N, self.K = self.weight.shape
        self.code = DTYPE_CODES[self.weight.dtype]
        self.ws = ws
        self._w = self.weight.data_ptr()
        self._offsets: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []
        nbytes = _C.packed_linear_bytes(self.code, self.N, self.K)
        buf = torch.empty(nbytes + 64, dtype=torch.uint8)
        self._packed = buf[(-buf.data_ptr()) % 64:][:nbytes]
        _C.pack_linear_weight(self._w, self.K, 0 if self.bias is None else self.bias.data_ptr(),
                              self._packed.data_ptr(), nbytes, self.code, self.N, self.K)
        self._packed_ptr = self._packed.data_ptr()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        out = torch.empty((T, self.N), dtype=self.weight.dtype)
        x_rs = x.stride(0) if T > 1 else self.K
        if T <= self.PACKED_MAX_ROWS:
            ws, nbytes = self.ws.get(_C.packed_linear_workspace(T, self.K))
            _C.packed_linear(x.data_ptr(), x_rs, self._packed_ptr, out.data_ptr(), self.N, self.code, T, self.N,
                             self.K, ws, nbytes)
            return out
        offsets = self._offsets.get(T)
        if offsets is None:
            self._keep.append(torch.tensor([T], dtype=torch.int32))
            offsets = self._offsets[T] = self._keep[-1].data_ptr()
        ws, nbytes = self.ws.get(_C.grouped_gemm_workspace(0, T, self.N, self.K, 1, self.code))
        _C.grouped_gemm(x.data_ptr(), x_rs, 1, self._w, self.N * self.K, self.K, 1, offsets, out.data_ptr(), self.N,
                        self.code, T, self.N, self.K, 1, ws, nbytes, *_CPU)
        if self.bias is not None:
            out += self.bias
        return out


class ResidualNorm:
    """`ZayaResidualScaling.fused_with_norm` for one (scaling, norm) pair: y [T, D] any float dtype and h [T, D]
    fp32 (unit inner stride) -> (r [T, D] fp32, norm(r) [T, D] in norm's dtype) with
    r = (y + b_y) * s_y + (h + b_h) * s_h."""

    def __init__(self, scaling, norm) -> None:
        self.params = [t.detach().contiguous() for t in (
            scaling.hidden_states_bias, scaling.hidden_states_scale, scaling.residual_bias, scaling.residual_scale,
            norm.weight)]
        self.ptrs = [t.data_ptr() for t in self.params]
        self.dtype = self.params[-1].dtype
        self.code = DTYPE_CODES[self.dtype]
        self.eps = float(norm.eps)
        self._rstd = torch.empty(0, dtype=torch.float32)  # the kernel's 1/rms per row, unused here

    def __call__(self, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T, D = y.shape
        r = torch.empty((T, D), dtype=torch.float32)
        out = torch.empty((T, D), dtype=self.dtype)
        if self._rstd.numel() < T:
            self._rstd = torch.empty(max(T, 16), dtype=torch.float32)
        rstd = self._rstd
        yb, ys, hb, hs, w = self.ptrs
        _C.residual_rms_norm_fwd(
            y.data_ptr(), y.stride(0) if T > 1 else D, DTYPE_CODES[y.dtype], h.data_ptr(),
            h.stride(0) if T > 1 else D, _F32, yb, ys, hb, hs, self.code, w, self.code, r.data_ptr(), D,
            out.data_ptr(), D, rstd.data_ptr(), T, D, self.eps, *_CPU,
        )
        return r, out


class Router:
    """`ZayaRouter` of one layer: x [T, D], z_prev [T, R] fp32 or None -> (logits [T, E+1] fp32, gate [T] fp32,
    choice [T] int64, z [T, R] fp32)."""

    def __init__(self, router, ws: Workspace) -> None:
        mlp = router.router_mlp
        self.tensors = [t.detach().contiguous() for t in (
            router.down_proj.weight, router.down_proj.bias, mlp.norm.weight, mlp.fc1.weight, mlp.fc1.bias,
            mlp.fc2.weight, mlp.fc2.bias, mlp.out_proj.weight, router.balancing_biases.to(torch.float32))]
        scale = router.router_states_scale
        self.eda = None if scale is None else scale.detach().contiguous()
        self.ptrs = [t.data_ptr() for t in self.tensors]
        self.eda_ptr = 0 if self.eda is None else self.eda.data_ptr()
        self.eps = float(mlp.norm.eps)
        self.R, self.D = self.tensors[0].shape
        self.C = self.tensors[7].shape[0]
        self.ws = ws

    def __call__(self, x: torch.Tensor, z_prev: torch.Tensor | None):
        T = x.shape[0]
        R, C = self.R, self.C
        down_w, down_b, norm_w, fc1_w, fc1_b, fc2_w, fc2_b, out_w, bias = self.ptrs
        logits = torch.empty((T, C), dtype=torch.float32)
        gate = torch.empty((T,), dtype=torch.float32)
        choice = torch.empty((T,), dtype=torch.int64)
        z = torch.empty((T, R), dtype=torch.float32)
        ws, nbytes = self.ws.get(_C.zaya_router_workspace(T, self.D, R, C))
        _C.zaya_router(
            x.data_ptr(), x.stride(0) if T > 1 else self.D, 0 if z_prev is None else z_prev.data_ptr(), R,
            0 if z_prev is None else DTYPE_CODES[z_prev.dtype], down_w, down_b, self.eda_ptr, norm_w, fc1_w, fc1_b,
            fc2_w, fc2_b, out_w, bias, DTYPE_CODES[x.dtype], self.eps, logits.data_ptr(), gate.data_ptr(),
            choice.data_ptr(), z.data_ptr(), T, self.D, R, C, ws, nbytes, 0, 0, *_CPU,
        )
        return logits, gate, choice, z


class Experts:
    """`ZayaExperts`: x [T, D], choice [T] int64 (E = skip), gate [T] fp32 -> [T, D] in x's dtype."""

    def __init__(self, experts, ws: Workspace) -> None:
        self.w1 = experts.gate_up_proj.detach().contiguous()   # [E, 2I, D]
        self.w2 = experts.down_proj.detach().contiguous()      # [E, D, I]
        self.E, two_i, self.D = self.w1.shape
        self.I = two_i // 2
        self.args = (1, self.w1.data_ptr(), self.w1.stride(0), self.w1.stride(1), self.w2.data_ptr(),
                     self.w2.stride(0), self.w2.stride(1))
        self.ws = ws

    def __call__(self, x: torch.Tensor, choice: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        T, D = x.shape
        code = DTYPE_CODES[x.dtype]
        out = torch.empty((T, D), dtype=x.dtype)
        ws, nbytes = self.ws.get(_C.moe_experts_workspace(0, T, 1, D, self.I, self.E, code))
        _C.moe_experts(x.data_ptr(), x.stride(0) if T > 1 else D, choice.data_ptr(), _I64, gate.data_ptr(), _F32,
                       *self.args, out.data_ptr(), D, code, T, D, self.I, self.E, ws, nbytes, *_CPU)
        return out


def kv_write(k: torch.Tensor, v: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Writes k, v [T, Hk, d] (contiguous) to the pages [P, S, Hk, d] at slot_mapping [T] (page * S + offset)."""
    T = k.shape[0]
    if T == 0:
        return
    P, S = k_pages.shape[:2]
    W = k_pages.shape[2] * k_pages.shape[3]
    _C.kv_write(k.data_ptr(), W, v.data_ptr(), W, k_pages.data_ptr(), v_pages.data_ptr(), S * W, W,
                slot_mapping.data_ptr(), DTYPE_CODES[k_pages.dtype], T, W, P, S, *_CPU)


def attention_decode(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, window: int | None, ws: Workspace) -> torch.Tensor:
    """One query token per sequence: q [B, Hq, d] (contiguous) against the pages [P, S, Hk, d] (contiguous),
    block_table [B, M] int32 (contiguous), seq_lens [B] int32 -> [B, Hq, d]."""
    B, Hq, d = q.shape
    P, S, Hk, _ = k_pages.shape
    M = block_table.shape[1]
    code = DTYPE_CODES[q.dtype]
    out = torch.empty((B, Hq, d), dtype=q.dtype)
    buf, nbytes = ws.get(_C.attention_decode_workspace(0, code, B, 1, Hq, Hk, d, S, M, 0))
    ks, vs = k_pages.stride(), v_pages.stride()
    _C.attention_decode(q.data_ptr(), Hq * d, Hq * d, d, k_pages.data_ptr(), ks[0], ks[1], ks[2], v_pages.data_ptr(),
                        vs[0], vs[1], vs[2], block_table.data_ptr(), M, seq_lens.data_ptr(), out.data_ptr(),
                        Hq * d, Hq * d, d, code, B, 1, Hq, Hk, d, S, P, M, window or 0, float(scale), 0,
                        buf, nbytes, *_CPU)
    return out


class CcaPrep:
    """`zaya_rt.ops.cca_prep` for one layer with its conv weights, temperature and RoPE table fixed:
    qp [T, Hq*d], kp [T, Hk*d], v_cur/v_del [T, Hk*d/2] (unit inner stride, any row stride), positions [T]
    int64, cu_seqlens [B+1] int32, states in/out [B, C, K] / [B, Hk*d/2] fp32 (contiguous) -> q [T, Hq, d],
    k and v [T, Hk, d]; the outgoing states are written into conv_out / v_out."""

    def __init__(self, conv0_w, conv0_b, conv1_w, conv1_b, temp, *, num_q_heads: int, num_kv_heads: int,
                 head_dim: int, rope_dims: int, inv_freq: torch.Tensor, ws: Workspace) -> None:
        self.tensors = [t.detach().contiguous() for t in (conv0_w, conv0_b, conv1_w, conv1_b, temp)]
        self.inv_freq = inv_freq.contiguous()
        self.ptrs = [t.data_ptr() for t in self.tensors]
        self.Hq, self.Hk, self.d, self.rope_dims = num_q_heads, num_kv_heads, head_dim, rope_dims
        self.k0, self.k1 = conv0_w.shape[2], conv1_w.shape[2]
        self.C = (num_q_heads + num_kv_heads) * head_dim
        self.K = self.k0 + self.k1 - 2
        self.V = num_kv_heads * head_dim // 2
        self.w_code = DTYPE_CODES[self.tensors[0].dtype]
        self.ws = ws

    def __call__(self, qp, kp, v_cur, v_del, positions, cu_seqlens, conv_in, v_in, conv_out, v_out):
        T, B = qp.shape[0], cu_seqlens.shape[0] - 1
        Hq, Hk, d, C, K, V = self.Hq, self.Hk, self.d, self.C, self.K, self.V
        q = torch.empty((T, Hq, d), dtype=qp.dtype)
        k = torch.empty((T, Hk, d), dtype=qp.dtype)
        v = torch.empty((T, Hk, d), dtype=qp.dtype)
        nbytes = _C.cca_prep_fwd_workspace(0, T, B, Hq, Hk, d, self.k0, self.k1, self.rope_dims)
        ws, _ = self.ws.get(nbytes)
        c0w, c0b, c1w, c1b, temp = self.ptrs
        rs = (lambda t: t.stride(0) if T > 1 else t.shape[1])  # noqa: E731
        _C.cca_prep_fwd(
            (qp.data_ptr(), kp.data_ptr(), v_cur.data_ptr(), v_del.data_ptr(), c0w, c0b, c1w, c1b, temp,
             conv_in.data_ptr(), v_in.data_ptr(), positions.data_ptr(), cu_seqlens.data_ptr(),
             self.inv_freq.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), conv_out.data_ptr(),
             v_out.data_ptr(), ws),
            (rs(qp), rs(kp), rs(v_cur), rs(v_del), C * K, K, V, Hq * d, d, Hk * d, d, Hk * d, C * K, K, V, 0),
            (DTYPE_CODES[qp.dtype], self.w_code, DTYPE_CODES[conv_in.dtype], DTYPE_CODES[positions.dtype]),
            (T, B, Hq, Hk, d, self.k0, self.k1, self.rope_dims), _EPS[qp.dtype], nbytes, *_CPU,
        )
        return q, k, v


class Greedy:
    """Greedy tokens [B] int64 of logits [B, V] (unit inner stride): the fused sampler at temperature 0, with
    its first-maximum rule and NaN check."""

    def __init__(self) -> None:
        self._zeros = torch.zeros(0, dtype=torch.int64)
        self._ones = torch.ones(0, dtype=torch.float32)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        B, V = logits.shape
        if self._zeros.numel() < B:
            self._zeros = torch.zeros(B, dtype=torch.int64)
            self._ones = torch.ones(B, dtype=torch.float32)
        # all-zero bytes serve as temperature (0: greedy), top_k, min_p, seed and step; top_p must be in (0, 1]
        zero, one = self._zeros.data_ptr(), self._ones.data_ptr()
        out = torch.empty(B, dtype=torch.int64)
        _C.sample_tokens(logits.data_ptr(), logits.stride(0) if B > 1 else V, DTYPE_CODES[logits.dtype], zero, zero,
                         one, zero, zero, zero, out.data_ptr(), B, V, 0, 0, *_CPU)
        return out

"""The GPU MoE kernels (cuda/moe_*.cuh: dispatch sort, SIMT grouped GEMM and weight gradient, the fused expert
block) and norms kernels (cuda/norms_kernels.cuh) without a GPU: tools/gpu_emu compiles the kernel headers for
the host (every GPU thread a std::thread, shared memory poisoned at block start) at 32 and 64 lanes per warp,
and this file runs them against float64 references (zaya_rt.ref) and a plain stable sort.

The params structs are filled by field name from the C++ headers (tools/gpu_emu/params.py). The SIMT paths are
the ones every backend has; the wmma/wgmma tiles (CUDA only) are not emulated here. This checks index math,
tiling edges and numerics, not memory ordering or timing."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_gpu_emu_params
from zaya_rt import ref

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ for the GPU kernel emulator")


params = load_gpu_emu_params()
ENTRIES = ("emu_moe_dispatch", "emu_grouped_gemm", "emu_grouped_gemm_weight_grad", "emu_moe_experts",
           "emu_rms_norm_fwd", "emu_rms_norm_bwd", "emu_residual_rms_norm_fwd", "emu_residual_rms_norm_bwd")


@pytest.fixture(scope="module", params=(32, 64), ids=("warp32", "warp64"))
def emu(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"gpu_emu_moe_norms_w{request.param}")
    subprocess.run([sys.executable, str(ROOT / "tools/gpu_emu/build.py"), str(out), "--warp", str(request.param),
                    "--source", "emu_moe_norms"], check=True, stdout=subprocess.DEVNULL)
    lib = ctypes.CDLL(str(out / f"libzaya_gpu_emu_moe_norms_w{request.param}.so"))
    for name in ENTRIES:
        getattr(lib, name).restype = ctypes.c_char_p
    for name in ("emu_grouped_gemm_workspace", "emu_grouped_gemm_weight_grad_workspace", "emu_moe_experts_workspace",
                 "emu_norm_bwd_num_partials"):
        getattr(lib, name).restype = ctypes.c_int64
    return lib


def run(lib, entry: str, struct_name: str, **fields) -> None:
    s = params.struct(struct_name, **fields)
    msg = getattr(lib, entry)(ctypes.byref(s))
    assert msg is None, f"{entry}: {msg.decode()}"


def workspace(nbytes: int) -> torch.Tensor:
    return torch.full((max(int(nbytes), 1),), 0xA5, dtype=torch.uint8)


def close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), "non-finite output (a poisoned element was never written)"
    scale = max(want.abs().max().item(), 1e-6)
    err = (got - want).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} x max|want| {scale:.3g}"


REL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


def c_i64(*xs: int) -> list[ctypes.c_int64]:
    return [ctypes.c_int64(int(x)) for x in xs]


# ---- dispatch ------------------------------------------------------------------------------------------------

def dispatch_reference(index: torch.Tensor, experts: int):
    bins = index.long().clone()
    bins[(bins < 0) | (bins >= experts)] = experts
    order = torch.sort(bins, stable=True).indices.to(torch.int32)
    counts = torch.bincount(bins, minlength=experts + 1)[:experts]
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    slot_rows = torch.empty_like(order)
    slot_rows[order.long()] = torch.arange(len(order), dtype=torch.int32)
    slot_rows[bins == experts] = -1
    return offsets, order, slot_rows


@pytest.mark.parametrize(("slots", "experts"), [(1, 1), (7, 3), (64, 4), (300, 16), (5000, 8)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_dispatch_is_a_stable_sort_with_skips_last(emu, slots, experts, index_dtype):
    gen = torch.Generator().manual_seed(slots * 31 + experts)
    index = torch.randint(-1, experts + 2, (slots,), generator=gen).to(index_dtype)  # -1, E, E+1: skipped
    offsets = torch.full((experts,), -7, dtype=torch.int32)
    sorted_slots, slot_rows = (torch.full((slots,), -7, dtype=torch.int32) for _ in range(2))
    # counts doubles as the multi-block path's histogram room (sorted_slots holds the per-block histograms).
    counts = torch.full((experts,), -7, dtype=torch.int32)
    run(emu, "emu_moe_dispatch", "MoeDispatchParams", expert_index=index, index_dtype=index_dtype,
        num_slots=slots, num_experts=experts, offsets=offsets, sorted_slots=sorted_slots, slot_rows=slot_rows,
        counts=counts)
    want_offsets, want_sorted, want_rows = dispatch_reference(index, experts)
    assert torch.equal(offsets, want_offsets)
    assert torch.equal(sorted_slots, want_sorted)
    assert torch.equal(slot_rows, want_rows)


# ---- grouped GEMM ---------------------------------------------------------------------------------------------

def group_offsets(sizes: list[int]) -> torch.Tensor:
    return torch.tensor(sizes, dtype=torch.int64).cumsum(0).to(torch.int32)


GEMM_CASES = [
    # (group sizes, tail rows past offsets[-1], N, K): empty groups, decode-sized groups (32-row tiles),
    # groups over 64 rows (128-row tiles), N and K off the tile and vector widths.
    ([5, 0, 11, 1], 3, 24, 40),
    ([0, 0, 1], 0, 130, 9),
    ([90, 70], 6, 136, 72),
    ([1], 0, 1, 1),
]


@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: f"g{c[0]}-t{c[1]}-n{c[2]}-k{c[3]}")
# a_cols: a column-major view (a_col_stride = M), the scalar-load path; its index math is dtype-independent.
@pytest.mark.parametrize(("dtype", "transposed_a"), [(torch.float32, False), (torch.bfloat16, False),
                                                     (torch.float32, True)], ids=("fp32", "bf16", "fp32-a_cols"))
def test_grouped_gemm_matches_float64(emu, case, dtype, transposed_a):
    sizes, tail, N, K = case
    M, G = sum(sizes) + tail, len(sizes)
    gen = torch.Generator().manual_seed(M * 7 + N + K)
    a = torch.randn(M, K, generator=gen).to(dtype)
    if transposed_a:
        a = a.T.contiguous().T
    b = torch.randn(G, N, K, generator=gen).to(dtype)
    offsets = group_offsets(sizes)
    out = torch.full((M, N), float("nan"), dtype=dtype)
    ws = workspace(emu.emu_grouped_gemm_workspace(*c_i64(M, N, K, G), params.DTYPE_CODES[dtype]))
    run(emu, "emu_grouped_gemm", "GroupedGemmParams", a=a, a_row_stride=a.stride(0), a_col_stride=a.stride(1), b=b,
        b_group_stride=b.stride(0), b_row_stride=b.stride(1), b_col_stride=b.stride(2), offsets=offsets, out=out,
        out_row_stride=out.stride(0), dtype=dtype, M=M, N=N, K=K, G=G, workspace=ws, workspace_bytes=ws.numel())
    want = ref.grouped_gemm(a.double(), b.double(), offsets)
    close(out, want, REL[dtype])
    assert torch.equal(out[M - tail:], torch.zeros(tail, N, dtype=dtype))


@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: f"g{c[0]}-t{c[1]}-n{c[2]}-k{c[3]}")
@pytest.mark.parametrize(("dtype", "grad_dtype"), [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                   (torch.bfloat16, torch.bfloat16)], ids=str)
def test_grouped_gemm_weight_grad_matches_float64(emu, case, dtype, grad_dtype):
    sizes, tail, N, K = case
    M, G = sum(sizes) + tail, len(sizes)
    gen = torch.Generator().manual_seed(M * 5 + N * 3 + K)
    dy = torch.randn(M, N, generator=gen).to(dtype)
    a = torch.randn(M, K, generator=gen).to(dtype)
    offsets = group_offsets(sizes)
    grad_b = torch.full((G, N, K), float("nan"), dtype=grad_dtype)
    ws = workspace(emu.emu_grouped_gemm_weight_grad_workspace(*c_i64(M, N, K, G), params.DTYPE_CODES[dtype]))
    run(emu, "emu_grouped_gemm_weight_grad", "GroupedGemmWeightGradParams", dy=dy, dy_row_stride=dy.stride(0),
        dy_col_stride=dy.stride(1), a=a, a_row_stride=a.stride(0), a_col_stride=a.stride(1), offsets=offsets,
        grad_b=grad_b, grad_b_group_stride=grad_b.stride(0), grad_b_row_stride=grad_b.stride(1), dtype=dtype,
        grad_dtype=grad_dtype, M=M, N=N, K=K, G=G, workspace=ws, workspace_bytes=ws.numel())
    want = torch.zeros(G, N, K, dtype=torch.float64)
    start = 0
    for g, end in enumerate(offsets.tolist()):
        want[g] = dy[start:end].double().T @ a[start:end].double()
        start = end
    close(grad_b, want, REL[grad_dtype] if grad_dtype == torch.bfloat16 else REL[dtype])
    for g, size in enumerate(sizes):
        if size == 0:
            assert torch.equal(grad_b[g], torch.zeros(N, K, dtype=grad_dtype))


# ---- fused experts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("T", "top_k", "D", "I", "E"), [(1, 1, 8, 8, 2), (19, 1, 24, 40, 4), (13, 2, 16, 24, 5),
                                                         (40, 4, 32, 16, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_moe_experts_matches_float64(emu, T, top_k, D, I, E, dtype):  # noqa: E741
    gen = torch.Generator().manual_seed(T * 11 + top_k * 7 + D + I + E)
    hidden = torch.randn(T, D, generator=gen).to(dtype)
    index = torch.randint(0, E + 1, (T, top_k), generator=gen, dtype=torch.int64)  # E = skip
    index[0, 0] = E  # at least one skipped slot
    gate = torch.rand(T, top_k, generator=gen)
    gate_up = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(dtype)
    down = (torch.randn(E, D, I, generator=gen) / I**0.5).to(dtype)
    out = torch.full((T, D), float("nan"), dtype=dtype)
    ws = workspace(emu.emu_moe_experts_workspace(*c_i64(T, top_k, D, I, E), params.DTYPE_CODES[dtype]))
    run(emu, "emu_moe_experts", "MoeExpertsParams", hidden=hidden, hidden_row_stride=hidden.stride(0),
        expert_index=index, index_dtype=index.dtype, gate=gate, gate_dtype=gate.dtype, top_k=top_k, gate_up=gate_up,
        gate_up_expert_stride=gate_up.stride(0), gate_up_row_stride=gate_up.stride(1), down=down,
        down_expert_stride=down.stride(0), down_row_stride=down.stride(1), out=out, out_row_stride=out.stride(0),
        dtype=dtype, T=T, D=D, I=I, E=E, workspace=ws, workspace_bytes=ws.numel(),
        keep_offsets=0, keep_sorted_slots=0, keep_slot_rows=0, keep_h=0)  # the kept outputs are CPU only
    want = ref.moe_experts(hidden.double(), index, gate.double(), gate_up.double(), down.double())
    close(out, want, REL[dtype] * 2)  # bf16: gate/up outputs and the activation are rounded to bf16 as well


# ---- norms ---------------------------------------------------------------------------------------------------

NORM_SHAPES = [(1, 8), (37, 24), (5, 1000), (9, 4096)]


def _float_rows(rows: int, dim: int, dtype, gen, stride_pad: int = 0) -> torch.Tensor:
    full = torch.randn(rows, dim + stride_pad, generator=gen).to(dtype)
    return full[:, :dim]  # a row stride past the width when stride_pad > 0


@pytest.mark.parametrize(("rows", "dim"), NORM_SHAPES)
@pytest.mark.parametrize(("x_dtype", "w_dtype"), [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                  (torch.float32, torch.bfloat16)], ids=str)
def test_rms_norm_forward_and_backward_match_float64(emu, rows, dim, x_dtype, w_dtype):
    gen = torch.Generator().manual_seed(rows * 1000 + dim)
    eps = 1e-5
    x = _float_rows(rows, dim, x_dtype, gen, stride_pad=3)
    weight = (1 + 0.1 * torch.randn(dim, generator=gen)).to(w_dtype)
    out = torch.full((rows, dim), float("nan"), dtype=w_dtype)
    rstd = torch.full((rows,), float("nan"))
    run(emu, "emu_rms_norm_fwd", "RmsNormFwdParams", x=x, x_row_stride=x.stride(0), x_dtype=x_dtype, weight=weight,
        w_dtype=w_dtype, out=out, out_row_stride=out.stride(0), rstd=rstd, rows=rows, dim=dim, eps=eps)
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    want = ref.rms_norm(x64, w64, eps)
    close(out, want, REL[w_dtype])
    close(rstd, torch.rsqrt(x.double().pow(2).mean(-1) + eps), 1e-5)

    grad_out = torch.randn(rows, dim, generator=gen).to(w_dtype)
    want.backward(grad_out.double())
    grad_x = torch.full((rows, dim), float("nan"), dtype=x_dtype)
    num_partials = emu.emu_norm_bwd_num_partials(*c_i64(rows, dim))
    partials = torch.full((num_partials, dim), float("nan"))
    grad_w = torch.full((dim,), float("nan"))
    run(emu, "emu_rms_norm_bwd", "RmsNormBwdParams", grad_out=grad_out, grad_out_row_stride=grad_out.stride(0), x=x,
        x_row_stride=x.stride(0), x_dtype=x_dtype, weight=weight, w_dtype=w_dtype, rstd=rstd, grad_x=grad_x,
        grad_x_row_stride=grad_x.stride(0), partials=partials, num_partials=num_partials, grad_weight=grad_w,
        rows=rows, dim=dim)
    tol = 2 * max(REL[x_dtype], REL[w_dtype])  # the forward rounds x * rstd to w's dtype before the weight
    close(grad_x, x64.grad, tol)
    close(grad_w, w64.grad, tol)


@pytest.mark.parametrize(("rows", "dim"), NORM_SHAPES)
@pytest.mark.parametrize(("act_dtype", "p_dtype"), [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)],
                         ids=str)
def test_residual_rms_norm_forward_and_backward_match_float64(emu, rows, dim, act_dtype, p_dtype):
    gen = torch.Generator().manual_seed(rows * 997 + dim)
    eps = 1e-6
    y = _float_rows(rows, dim, act_dtype, gen, stride_pad=1)
    h = _float_rows(rows, dim, torch.float32, gen)  # the residual stream may be wider than the branch
    yb, ys, hb, hs = ((0.1 * torch.randn(dim, generator=gen) + (1.0 if i % 2 else 0.0)).to(p_dtype)
                      for i in range(4))
    weight = (1 + 0.1 * torch.randn(dim, generator=gen)).to(p_dtype)
    r = torch.full((rows, dim), float("nan"))
    out = torch.full((rows, dim), float("nan"), dtype=p_dtype)
    rstd = torch.full((rows,), float("nan"))
    run(emu, "emu_residual_rms_norm_fwd", "ResidualRmsNormFwdParams", y=y, y_row_stride=y.stride(0), y_dtype=act_dtype,
        h=h, h_row_stride=h.stride(0), h_dtype=h.dtype, y_bias=yb, y_scale=ys, h_bias=hb, h_scale=hs, p_dtype=p_dtype,
        weight=weight, w_dtype=p_dtype, r=r, r_row_stride=r.stride(0), out=out, out_row_stride=out.stride(0),
        rstd=rstd, rows=rows, dim=dim, eps=eps)
    leaves = [t.double().requires_grad_() for t in (y, h, yb, ys, hb, hs, weight)]
    want_r, want_out = ref.residual_rms_norm(*leaves, eps)
    close(r, want_r, REL[torch.float32])
    close(out, want_out, REL[p_dtype])

    grad_r = torch.randn(rows, dim, generator=gen)
    grad_out = torch.randn(rows, dim, generator=gen).to(p_dtype)
    torch.autograd.backward((want_r, want_out), (grad_r.double(), grad_out.double()))
    grad_y = torch.full((rows, dim), float("nan"), dtype=act_dtype)
    grad_h = torch.full((rows, dim), float("nan"))
    num_partials = emu.emu_norm_bwd_num_partials(*c_i64(rows, dim))
    partials = torch.full((num_partials, 5, dim), float("nan"))
    grad_params = torch.full((5, dim), float("nan"))
    run(emu, "emu_residual_rms_norm_bwd", "ResidualRmsNormBwdParams", grad_r=grad_r,
        grad_r_row_stride=grad_r.stride(0), grad_out=grad_out, grad_out_row_stride=grad_out.stride(0), y=y,
        y_row_stride=y.stride(0), y_dtype=act_dtype, h=h, h_row_stride=h.stride(0), h_dtype=h.dtype, y_bias=yb,
        y_scale=ys, h_bias=hb, h_scale=hs, p_dtype=p_dtype, weight=weight, w_dtype=p_dtype, r=r,
        r_row_stride=r.stride(0), rstd=rstd, grad_y=grad_y, grad_y_row_stride=grad_y.stride(0), grad_h=grad_h,
        grad_h_row_stride=grad_h.stride(0), partials=partials, num_partials=num_partials, grad_params=grad_params,
        rows=rows, dim=dim)
    tol = REL[act_dtype] * 2
    close(grad_y, leaves[0].grad, tol)
    close(grad_h, leaves[1].grad, tol)
    for got, leaf in zip(grad_params, (leaves[6], leaves[2], leaves[3], leaves[4], leaves[5])):  # w, yb, ys, hb, hs
        close(got, leaf.grad, tol)

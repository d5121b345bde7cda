"""The CPU grouped GEMM's register tiles and packers against the float64 reference, on both bf16 paths
(vdpbf16ps on bf16 pairs, and fp32 FMAs): M, N, K off the tile sizes (K odd, K past one L1 block), empty
groups, one-row groups, and the three layouts the MoE backward uses (A.B^T, dX = dY.W with B a transposed
weight, dW = dY^T.X per group), with contiguous, transposed and strided operands.

Tolerance: conftest.assert_close_to_peer (at most twice the error of PyTorch in the same dtype, plus one ulp)."""

import pytest
import torch

import zaya_rt
from conftest import assert_close_to_peer
from zaya_rt import ref

# Rows per register tile are 12 and columns 32 (csrc/cpu/gemm_shape.h), packed K runs in blocks of 256 bf16
# pairs: these sizes sit on, below and past those edges. Groups of <= 16 rows take the dot-product path, so
# the group sizes include larger ones to reach the register tiles.
GROUPS = [
    [0, 37, 0, 25],
    [1, 17, 60],
    [13, 0, 0],
    [130],
]
NK = [(1, 1), (33, 3), (31, 64), (70, 257), (129, 515), (32, 1030)]


@pytest.fixture(params=[0, 1], ids=["bf16-via-fp32-fma", "bf16-dot"])
def bf16_path(request):
    zaya_rt._C.set_cpu_bf16_dot(request.param)
    yield request.param
    zaya_rt._C.set_cpu_bf16_dot(-1)


def _offsets(sizes):
    return torch.tensor(sizes, dtype=torch.int32).cumsum(0).to(torch.int32)


def _operand(shape, layout, gen):
    """A bf16 tensor of `shape` with the given memory layout: contiguous, transposed (last two dims swapped in
    memory) or strided (every other element of the last dim)."""
    if layout == "contiguous":
        return torch.randn(shape, generator=gen).bfloat16()
    if layout == "transposed":
        return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen).bfloat16().transpose(-1, -2)
    return torch.randn(*shape[:-1], 2 * shape[-1], generator=gen).bfloat16()[..., ::2]


@pytest.mark.parametrize("sizes", GROUPS, ids=lambda s: "rows" + "-".join(map(str, s)))
@pytest.mark.parametrize("N,K", NK)
@pytest.mark.parametrize("b_layout", ["contiguous", "transposed", "strided"])
def test_grouped_gemm_tile_edges(bf16_path, sizes, N, K, b_layout):
    gen = torch.Generator().manual_seed(N * 1000 + K + len(sizes))
    M = sum(sizes) + 2  # two rows past the last offset stay zero
    a = _operand((M, K), "transposed" if b_layout == "strided" else "contiguous", gen)
    b = _operand((len(sizes), N, K), b_layout, gen)
    offsets = _offsets(sizes)
    out = zaya_rt.ops.grouped_gemm(a, b, offsets)
    want = ref.grouped_gemm(a.double(), b.double(), offsets)
    peer = ref.grouped_gemm(a, b, offsets)
    assert out.shape == (M, N) and out.dtype == torch.bfloat16
    assert_close_to_peer(out, want, peer, f"out path={bf16_path}")
    assert torch.all(out[sum(sizes):] == 0)


@pytest.mark.parametrize("sizes", GROUPS, ids=lambda s: "rows" + "-".join(map(str, s)))
@pytest.mark.parametrize("N,K", NK[:5])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_weight_grad_tile_edges(bf16_path, sizes, N, K, layout):
    """grad[g] = dy_g^T a_g over each group's rows (the inner dimension: group sizes, often odd)."""
    gen = torch.Generator().manual_seed(N * 1000 + K + 7 * len(sizes))
    M = sum(sizes) + 3
    dy = _operand((M, N), layout, gen)
    a = _operand((M, K), layout, gen)
    offsets = _offsets(sizes)
    got = torch.ops.zaya_rt.grouped_gemm_weight_grad(dy, a, offsets)
    bounds = [0] + offsets.tolist()
    want = torch.stack([dy[s:e].double().T @ a[s:e].double() for s, e in zip(bounds, bounds[1:])])
    peer = torch.stack([dy[s:e].T @ a[s:e] for s, e in zip(bounds, bounds[1:])])
    assert got.shape == (len(sizes), N, K)
    assert_close_to_peer(got, want, peer, f"grad path={bf16_path}")


@pytest.mark.parametrize("rows", [1, 13, 40])
def test_backward_layouts_match_reference(bf16_path, rows):
    """The MoE backward's GEMMs: dX = dY.W (B = W^T, rows adjacent in memory) and dW = dY^T.X, for a group of
    `rows` tokens next to an empty group, with D = 96 and I = 80 (neither a tile multiple)."""
    gen = torch.Generator().manual_seed(rows)
    D, I = 96, 80
    w = torch.randn(2, D, I, generator=gen).bfloat16()  # a down projection: y = act @ w[e].T
    dy = torch.randn(rows, D, generator=gen).bfloat16()
    act = torch.randn(rows, I, generator=gen).bfloat16()
    offsets = _offsets([0, rows])
    dx = zaya_rt.ops.grouped_gemm(dy, w.transpose(1, 2), offsets)
    assert_close_to_peer(dx, dy.double() @ w[1].double(), dy @ w[1], "dx")
    dw = torch.ops.zaya_rt.grouped_gemm_weight_grad(dy, act, offsets)
    assert torch.all(dw[0] == 0)
    assert_close_to_peer(dw[1], dy.double().T @ act.double(), dy.T @ act, "dw")


def test_bf16_path_rates_are_reported():
    """The per-host choice names a path and the one-thread rates it was measured by (vdpbf16ps hosts only)."""
    rates = zaya_rt._C.cpu_bf16_gemm_rates()
    if not rates["has_dot"]:
        pytest.skip("this CPU build has no vdpbf16ps")
    for key in ("dot_gemm_gflops", "fma_gemm_gflops", "dot_peak_gflops", "fma_peak_gflops"):
        assert rates[key] > 0, key
    if zaya_rt._C.cpu_bf16_dot() < 0:  # no override: the measured faster path
        assert rates["dot_chosen"] == (rates["dot_gemm_gflops"] > rates["fma_gemm_gflops"])
    zaya_rt._C.set_cpu_bf16_dot(1)
    try:
        assert zaya_rt._C.cpu_bf16_gemm_rates()["dot_chosen"]
    finally:
        zaya_rt._C.set_cpu_bf16_dot(-1)


def test_bench_names_the_chosen_path():
    """`zaya-rt bench` prints this line: the path in use, and both measured rates where there is a choice."""
    from zaya_rt.benchmarks.moe import bf16_path_report

    line = bf16_path_report()
    rates = zaya_rt._C.cpu_bf16_gemm_rates()
    assert line.startswith("cpu bf16 GEMM path: " + ("vdpbf16ps" if rates["dot_chosen"] else "fp32 FMAs"))
    if rates["has_dot"]:
        assert line.count("GFLOP/s") == 2 and "peak" in line

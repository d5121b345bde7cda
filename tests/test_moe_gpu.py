"""GPU MoE kernels (CUDA or HIP build of zaya_rt._C): dispatch, grouped GEMM and its weight gradient, and the fused
expert block, forward and backward, against the CPU kernels on the same inputs and the float64 reference; plus what
the GPU path promises besides the math: offsets that stay on the device (CUDA-graph capture and replay), empty
experts, all-skipped batches, odd sizes, strided and misaligned operands, determinism, the current stream.

Runs only where torch sees a GPU and _C carries a GPU backend (`pytest -m cuda`).
"""

import pytest
import torch

import zaya_rt
from conftest import NEEDS_GPU, tolerance
from zaya_rt import _C, ref
from zaya_rt.benchmarks.harness import capture_cuda_graph
from zaya_rt.ops._lib import device_args, set_workspace
from zaya_rt.ops.moe import grouped_gemm_params, grouped_gemm_weight_grad_params

pytestmark = NEEDS_GPU

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rel_err(got: torch.Tensor, want: torch.Tensor, scale: float) -> float:
    if want.numel() == 0:
        return 0.0
    return (got.detach().cpu().double() - want.detach().cpu().double()).abs().max().item() / max(scale, 1e-30)


def _close(got, want, dtype, what, scale):
    """Within 4x tolerance(dtype) of `want`, relative to `scale` (the magnitude of the summed terms), the bar
    tests/test_moe.py sets for the CPU kernels: both sides accumulate in fp32 and round at the same points."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = _rel_err(got, want, scale)
    assert err <= 4 * tolerance(dtype), f"{what}: relative error {err:.3g} over {4 * tolerance(dtype):.3g} ({dtype})"


def _offsets(sizes, device="cpu"):
    return torch.tensor(sizes, dtype=torch.int32).cumsum(0).to(torch.int32).to(device)


# ---- moe_dispatch ------------------------------------------------------------------------------------------


def _routing(T, k, E, route, gen, dtype=torch.int64):
    shape = (T,) if k == 1 else (T, k)
    if route == "random":  # E and anything outside [0, E) mean skip
        index = torch.randint(-1, E + 2, shape, generator=gen)
    elif route == "one_expert":  # every other expert gets no tokens
        index = torch.full(shape, E - 1)
    else:
        index = torch.full(shape, E)
    return index.to(dtype)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("route", ["random", "one_expert", "skipped"])
@pytest.mark.parametrize("E", [1, 8, 300])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("T", [0, 1, 16, 300, 4096, 20000])
def test_moe_dispatch_gpu_matches_cpu(T, k, E, route, index_dtype):
    """Exactly the CPU's stable counting sort, on the one-block path (up to 4096 slots) and the multi-block one."""
    index = _routing(T, k, E, route, torch.Generator().manual_seed(T * 31 + k * 7 + E), index_dtype)
    want = zaya_rt.ops.moe_dispatch(index, E)
    got = zaya_rt.ops.moe_dispatch(index.cuda(), E)
    for name, g, w in zip(("offsets", "sorted_slots", "slot_rows"), got, want):
        assert g.is_cuda and g.dtype == torch.int32 and g.shape == w.shape, name
        assert torch.equal(g.cpu(), w), f"{name} differs from the CPU kernel"


def test_moe_dispatch_gpu_many_experts():
    gen = torch.Generator().manual_seed(5)
    for T, E in ((3000, 4096), (50000, 4096), (40000, 1000)):
        index = torch.randint(0, E + 1, (T,), generator=gen)
        want = zaya_rt.ops.moe_dispatch(index, E)
        got = zaya_rt.ops.moe_dispatch(index.cuda(), E)
        assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want)), (T, E)


# ---- grouped_gemm ------------------------------------------------------------------------------------------

GEMM_CASES = [  # group sizes, rows past offsets[-1], N, K
    ([5, 0, 40, 3], 3, 33, 70),  # odd sizes: the scalar path
    ([0, 0, 0], 4, 16, 32),  # every row in the tail
    ([1], 0, 1, 1),
    ([2, 1, 0, 3, 1, 1, 0, 2], 2, 2048, 1024),  # decode: a few rows per group, 32-row tiles
    ([300, 0, 1000, 12], 0, 256, 512),  # 128-row tiles
]


def _gemm_operands(sizes, tail, N, K, dtype, layout, seed, device):
    """a [M, K], b [G, N, K] as views with the layout's strides, built on the CPU and moved whole."""
    gen = torch.Generator().manual_seed(seed)
    M, G = sum(sizes) + tail, len(sizes)
    if layout == "transposed":  # column-major a, b stored [G, K, N] (the ops copy these to unit inner stride)
        a = torch.randn(K, M, generator=gen).to(dtype).to(device).T
        b = torch.randn(G, K, N, generator=gen).to(dtype).to(device).transpose(1, 2)
    elif layout == "padded":  # unit inner stride, padded rows, odd element offset: unaligned for vector loads
        a = torch.randn(M, K + 9, generator=gen).to(dtype).to(device)[:, 1 : K + 1]
        b = torch.randn(G, N, K + 8, generator=gen).to(dtype).to(device)[:, :, :K]
    else:
        a = torch.randn(M, K, generator=gen).to(dtype).to(device)
        b = torch.randn(G, N, K, generator=gen).to(dtype).to(device)
    return a, b


def _gemm_run(a, b, offsets, grad):
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    out = zaya_rt.ops.grouped_gemm(a, b, offsets)
    out.backward(grad)
    return out.detach(), a.grad, b.grad


@pytest.mark.parametrize("layout", ["contiguous", "padded", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: f"G{len(c[0])}-M{sum(c[0]) + c[1]}-N{c[2]}-K{c[3]}")
def test_grouped_gemm_gpu(case, dtype, layout):
    sizes, tail, N, K = case
    seed = sum(sizes) * 131 + N * 7 + K
    M = sum(sizes) + tail
    a_c, b_c = _gemm_operands(sizes, tail, N, K, dtype, layout, seed, "cpu")
    a_g, b_g = _gemm_operands(sizes, tail, N, K, dtype, layout, seed, "cuda")
    grad = torch.randn(M, N, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    out_g, ga_g, gb_g = _gemm_run(a_g, b_g, _offsets(sizes, "cuda"), grad.cuda())
    out_c, ga_c, gb_c = _gemm_run(a_c, b_c, _offsets(sizes), grad)
    assert out_g.is_cuda and out_g.dtype == dtype and out_g.shape == (M, N)

    a64, b64, g64 = a_c.detach().double(), b_c.detach().double(), grad.double()
    want = ref.grouped_gemm(a64, b64, _offsets(sizes))
    want_ga = ref.grouped_gemm(g64, b64.transpose(1, 2), _offsets(sizes))
    want_gb, start = torch.zeros_like(b64), 0
    for g, end in enumerate(_offsets(sizes).tolist()):
        want_gb[g] = g64[start:end].T @ a64[start:end]
        start = end
    out_scale = (a64.abs() @ b64.abs().amax(0).T).max().item()
    ga_scale = (g64.abs() @ b64.abs().amax(0)).max().item()
    gb_scale = (g64.abs().T @ a64.abs()).max().item()
    for what, got, cpu, want_t, scale in (("out", out_g, out_c, want, out_scale),
                                          ("grad_a", ga_g, ga_c, want_ga, ga_scale),
                                          ("grad_b", gb_g, gb_c, want_gb, gb_scale)):
        _close(got, want_t, dtype, f"{what} vs float64", scale)
        _close(got, cpu, dtype, f"{what} vs CPU kernel", scale)
    assert torch.all(out_g[sum(sizes):] == 0), "rows past offsets[-1] must be zero"
    assert torch.all(gb_g[[i for i, s in enumerate(sizes) if s == 0]] == 0), "empty groups must get zero gradients"


# ---- grouped_gemm kernel families: sm_90a CUTLASS vs the WMMA tiles (ZAYA_RT_CUDA_GROUPED_GEMM) ----------------

ON_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability(0) == (9, 0)
CUTLASS_HERE = ON_SM90 and getattr(_C, "cutlass_sm90", False)
# The 16-bit kernel without CUTLASS: WMMA tiles on sm_80+ NVIDIA GPUs, SIMT elsewhere (HIP, older GPUs).
TILES = "wmma" if _C.gpu_backend == "cuda" and torch.cuda.is_available() and \
    torch.cuda.get_device_capability(0) >= (8, 0) else "simt"


@pytest.fixture(params=["cutlass", "wmma"])
def gemm_family(request, monkeypatch):
    """Runs a test once with ZAYA_RT_CUDA_GROUPED_GEMM=cutlass and once with =wmma (read by _C on every call)."""
    monkeypatch.setenv("ZAYA_RT_CUDA_GROUPED_GEMM", request.param)
    return request.param


def _path(a, b, out):
    """The kernel family _C picks for grouped_gemm(a, b) -> out with the op's own workspace size."""
    p = grouped_gemm_params(a, b, None, out)
    base = torch.empty(max(_C.grouped_gemm_workspace(p, 1), 64), dtype=torch.uint8, device=a.device)
    return _C.grouped_gemm_path(set_workspace(p, base))


def _want_family(family, qualifies):
    if family == "cutlass" and qualifies and CUTLASS_HERE:
        return "cutlass_sm90"
    return TILES


def _grouped_ref_gpu(a, b, offsets_list):
    """fp32 per-group products on the GPU (exact enough to judge 16-bit kernels at any size)."""
    out, start = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device), 0
    for g, end in enumerate(offsets_list):
        if end > start:
            out[start:end] = a[start:end].float() @ b[g].float().T
        start = max(start, end)
    return out


SM90_CASES = [  # group sizes, rows past offsets[-1], N, K: all qualify for the CUTLASS kernel
    ([0, 1, 0, 1, 1, 0], 0, 64, 64),  # empty and one-row groups only
    ([1, 300, 0, 129, 1, 64], 7, 136, 200),  # ragged groups, a tail, N and K not multiples of the tile
    ([0, 0, 0], 5, 128, 64),  # everything in the tail
    ([1000, 24, 0, 3000], 0, 512, 1024),  # prefill-like
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", SM90_CASES, ids=lambda c: f"G{len(c[0])}-M{sum(c[0]) + c[1]}-N{c[2]}-K{c[3]}")
def test_grouped_gemm_gpu_families(case, dtype, gemm_family):
    sizes, tail, N, K = case
    gen = torch.Generator().manual_seed(sum(sizes) + N + K)
    M, G = sum(sizes) + tail, len(sizes)
    a = torch.randn(M, K, generator=gen).to(dtype).cuda()
    b = torch.randn(G, N, K, generator=gen).to(dtype).cuda()
    offsets = _offsets(sizes, "cuda")
    out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
    assert _path(a, b, out) == _want_family(gemm_family, True)
    got = zaya_rt.ops.grouped_gemm(a, b, offsets)
    want = _grouped_ref_gpu(a, b, _offsets(sizes).tolist())
    scale = (a.float().abs() @ b.float().abs().amax(0).T).max().item() if M else 1.0
    _close(got, want, dtype, f"out ({gemm_family})", scale)
    _close(got.cpu(), zaya_rt.ops.grouped_gemm(a.cpu(), b.cpu(), _offsets(sizes)), dtype, "out vs CPU kernel", scale)
    assert torch.all(got[sum(sizes):] == 0), "rows past offsets[-1] must be zero"


@pytest.mark.slow
def test_grouped_gemm_gpu_zaya1_8b_shapes(gemm_family):
    """The ZAYA1-8B expert GEMMs at a 16384-token batch (D = I = 2048, E = 16, bf16): gate_up [T, D] x [E, 2I, D]
    and down [T, I] x [E, D, I], with skewed expert loads (one expert empty, one with a single row)."""
    T, D, I, E = 16384, 2048, 2048, 16
    gen = torch.Generator(device="cuda").manual_seed(7)
    sizes = [0, 1] + [1200] * 12 + [1000, T - 1 - 1200 * 12 - 1000]
    offsets = _offsets(sizes, "cuda")
    for N, K in ((2 * I, D), (D, I)):
        a = torch.randn(T, K, device="cuda", generator=gen).to(torch.bfloat16)
        b = (torch.randn(E, N, K, device="cuda", generator=gen) / K**0.5).to(torch.bfloat16)
        assert _path(a, b, torch.empty(T, N, dtype=torch.bfloat16, device="cuda")) == _want_family(gemm_family, True)
        got = zaya_rt.ops.grouped_gemm(a, b, offsets)
        want = _grouped_ref_gpu(a, b, _offsets(sizes).tolist())
        scale = (a.float().abs() @ b.float().abs().amax(0).T).max().item()
        _close(got, want, torch.bfloat16, f"[{T}, {K}] x [{E}, {N}, {K}] ({gemm_family})", scale)


def test_grouped_gemm_gpu_cutlass_fallbacks(monkeypatch):
    """Operands the CUTLASS kernel cannot take go to the WMMA / SIMT kernels even when it is asked for, with
    the right answer: K or N not a multiple of 8, a misaligned base, a row stride off the 16-byte grid, b not
    K-contiguous, float32."""
    monkeypatch.setenv("ZAYA_RT_CUDA_GROUPED_GEMM", "cutlass")
    gen = torch.Generator().manual_seed(11)
    sizes = [40, 0, 90]
    M, G = sum(sizes), len(sizes)
    offsets = _offsets(sizes, "cuda")

    def check(a, b, want_path):
        out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device="cuda")
        assert _path(a, b, out) == want_path
        got = zaya_rt.ops.grouped_gemm(a, b, offsets)
        want = ref.grouped_gemm(a.double().cpu(), b.double().cpu(), _offsets(sizes))
        scale = (a.double().abs() @ b.double().abs().amax(0).T).max().item()
        _close(got, want, a.dtype, f"fallback to {want_path}", scale)

    bf = torch.bfloat16
    check(torch.randn(M, 36, generator=gen).to(bf).cuda(), torch.randn(G, 64, 36, generator=gen).to(bf).cuda(), "simt")
    check(torch.randn(M, 64, generator=gen).to(bf).cuda(), torch.randn(G, 60, 64, generator=gen).to(bf).cuda(), TILES)
    a_odd = torch.randn(M, 65, generator=gen).to(bf).cuda()[:, 1:]  # base 2 bytes off, row stride 130 bytes
    check(a_odd, torch.randn(G, 64, 64, generator=gen).to(bf).cuda(), "simt")
    a_pad = torch.randn(M, 68, generator=gen).to(bf).cuda()[:, :64]  # aligned base, row stride 136 bytes
    check(a_pad, torch.randn(G, 64, 64, generator=gen).to(bf).cuda(), "simt")
    b_t = torch.randn(G, 64, 64, generator=gen).to(bf).cuda().transpose(1, 2)  # stride 1 along N, not K
    out = torch.empty(M, 64, dtype=bf, device="cuda")
    assert _path(torch.randn(M, 64).to(bf).cuda(), b_t, out) == "simt"
    check(torch.randn(M, 64, generator=gen).cuda(), torch.randn(G, 64, 64, generator=gen).cuda(), "simt")  # fp32


def test_grouped_gemm_gpu_bad_family_env(monkeypatch):
    monkeypatch.setenv("ZAYA_RT_CUDA_GROUPED_GEMM", "fastest")
    a = torch.randn(64, 64, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(2, 64, 64, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(RuntimeError, match="ZAYA_RT_CUDA_GROUPED_GEMM"):
        zaya_rt.ops.grouped_gemm(a, b, _offsets([30, 34], "cuda"))


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_experts_gpu_families(top_k, gemm_family):
    """The expert block on the CUTLASS path (gather, two grouped GEMMs, SwiGLU, gate-scaled combine) against the
    float64 reference and the fused WMMA path, forward and backward."""
    T, D, I, E = 2048, 256, 128, 8
    inputs = _experts_inputs(T, D, I, E, top_k, torch.bfloat16, "random", seed=top_k, padded=False)
    grad = torch.randn(T, D, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    out_g, grads_g = _experts_run(inputs, grad, "cuda")
    hidden, index, gate, w1, w2 = inputs
    refs = [t.detach().double().requires_grad_() for t in (hidden, gate, w1, w2)]
    want = ref.moe_experts(refs[0], index, refs[1], refs[2], refs[3])
    scale = max(want.abs().max().item(), 1.0)
    _close(out_g, want, torch.bfloat16, f"out vs float64 ({gemm_family})", scale)
    unrouted = ((index < 0) | (index >= E)).reshape(T, -1).all(1)
    assert torch.all(out_g.cpu()[unrouted] == 0), "tokens without an expert must get zeros"
    want.backward(grad.double())
    for name, got, r in zip(("hidden", "gate", "gate_up_proj", "down_proj"), grads_g, refs):
        g_scale = max(r.grad.abs().max().item(), 1.0)
        _close(got, r.grad, torch.bfloat16, f"grad_{name} vs float64 ({gemm_family})", g_scale)


def test_grouped_gemm_gpu_general_strides():
    """Column-major a and b straight into _C (the ops would copy them): the kernels' any-stride path, forward
    and weight gradient, with the gradient stored as float32 from bf16 inputs."""
    gen = torch.Generator().manual_seed(3)
    sizes, N, K = [7, 0, 33, 2], 40, 24
    M, G = sum(sizes), len(sizes)
    for dtype in DTYPES:
        a = torch.randn(K, M, generator=gen).to(dtype).cuda().T
        b = torch.randn(G, K, N, generator=gen).to(dtype).cuda().transpose(1, 2)
        offsets = _offsets(sizes, "cuda")
        out = torch.empty(M, N, dtype=dtype, device="cuda")
        dev = device_args(a)
        p = grouped_gemm_params(a, b, offsets, out)
        ws = torch.empty(max(_C.grouped_gemm_workspace(p, dev[0]), 64), dtype=torch.uint8, device="cuda")
        _C.grouped_gemm(set_workspace(p, ws), *dev)
        want = ref.grouped_gemm(a.double().cpu(), b.double().cpu(), offsets.cpu())
        _close(out, want, dtype, "out", (a.double().abs() @ b.double().abs().amax(0).T).max().item())

        dy = torch.randn(N, M, generator=gen).to(dtype).cuda().T  # column-major dy
        grad = torch.empty(G, N, K, dtype=torch.float32, device="cuda")
        pg = grouped_gemm_weight_grad_params(dy, a, offsets, grad)
        ws = torch.empty(max(_C.grouped_gemm_weight_grad_workspace(pg, dev[0]), 64), dtype=torch.uint8, device="cuda")
        _C.grouped_gemm_weight_grad(set_workspace(pg, ws), *dev)
        a64, dy64 = a.double().cpu(), dy.double().cpu()
        start, want_g = 0, torch.zeros(G, N, K, dtype=torch.float64)
        for g, end in enumerate(_offsets(sizes).tolist()):
            want_g[g] = dy64[start:end].T @ a64[start:end]
            start = end
        _close(grad, want_g, torch.float32, "grad_b (fp32 from %s)" % dtype,
               (dy64.abs().T @ a64.abs()).max().item())


def test_weight_grad_gpu_broadcast_dy():
    """dy with row stride 0 (the gradient of a sum) goes in as is."""
    gen = torch.Generator().manual_seed(4)
    sizes, N, K = [100, 0, 30], 64, 48
    a = torch.randn(sum(sizes), K, generator=gen).to(torch.bfloat16)
    dy = torch.randn(1, N, generator=gen).to(torch.bfloat16).expand(sum(sizes), N)
    got = torch.ops.zaya_rt.grouped_gemm_weight_grad(dy.cuda(), a.cuda(), _offsets(sizes, "cuda"))
    want = torch.ops.zaya_rt.grouped_gemm_weight_grad(dy, a, _offsets(sizes))
    _close(got, want, torch.bfloat16, "grad_b vs CPU", (dy.double().abs().T @ a.double().abs()).max().item())
    assert torch.all(got[1] == 0)


# ---- moe_experts -------------------------------------------------------------------------------------------


def _experts_inputs(T, D, I, E, top_k, dtype, route, seed, padded):
    gen = torch.Generator().manual_seed(seed)
    if padded:  # rows D + 8 apart from an odd element offset: no 16-byte loads in the gate_up GEMM
        hidden = torch.randn(T, D + 8, generator=gen).to(dtype)[:, 1 : D + 1]
    else:
        hidden = torch.randn(T, D, generator=gen).to(dtype)
    w1 = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(dtype)
    w2 = (torch.randn(E, D, I, generator=gen) / I**0.5).to(dtype)
    index = _routing(T, top_k, E, route, gen).clamp(0, E)
    gate = torch.rand(index.shape, generator=gen)
    return hidden, index, gate, w1, w2


def _experts_run(inputs, grad, device):
    hidden, index, gate, w1, w2 = inputs
    leaves = [(_strided_to(t, device) if not t.is_contiguous() else t.detach().to(device)).requires_grad_()
              for t in (hidden, gate, w1, w2)]
    out = zaya_rt.ops.moe_experts(leaves[0], index.to(device), leaves[1], leaves[2], leaves[3])
    out.backward(grad.to(device))
    return out.detach(), [t.grad for t in leaves]


def _strided_to(t, device):
    """t (a 2-D view of a wider row buffer) on `device` with the same strides and element offset."""
    rows, cols = t.shape
    rs, off = t.stride(0), t.storage_offset()
    flat = t.detach().new_zeros(off + rows * rs)
    view = flat.as_strided(t.shape, t.stride(), off)
    view.copy_(t.detach())
    return flat.to(device).as_strided(t.shape, t.stride(), off)


@pytest.mark.parametrize("route", ["random", "one_expert", "skipped"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("T", [1, 16, 300, 4096])
@pytest.mark.parametrize("DI", [(33, 40), (64, 64)], ids=["D33-I40", "D64-I64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_moe_experts_gpu(dtype, DI, T, top_k, route):
    D, I = DI
    E = 6
    if T == 4096 and route != "random":
        pytest.skip("the large batch runs with random routing only")
    inputs = _experts_inputs(T, D, I, E, top_k, dtype, route, seed=T * 17 + D + top_k, padded=D == 64 and top_k == 2)
    grad = torch.randn(T, D, generator=torch.Generator().manual_seed(T + 1)).to(dtype)
    out_g, grads_g = _experts_run(inputs, grad, "cuda")
    out_c, grads_c = _experts_run(inputs, grad, "cpu")
    assert out_g.is_cuda and out_g.dtype == dtype and out_g.shape == (T, D)

    hidden, index, gate, w1, w2 = inputs
    refs = [t.detach().double().requires_grad_() for t in (hidden, gate, w1, w2)]
    want = ref.moe_experts(refs[0], index, refs[1], refs[2], refs[3])
    scale = max(want.abs().max().item(), 1.0)
    _close(out_g, want, dtype, "out vs float64", scale)
    _close(out_g, out_c, dtype, "out vs CPU kernel", scale)
    unrouted = ((index < 0) | (index >= E)).reshape(T, -1).all(1)
    assert torch.all(out_g.cpu()[unrouted] == 0), "tokens without an expert must get zeros"
    if want.grad_fn is None:  # nothing routed: every gradient is zero
        for got in grads_g:
            assert got is None or torch.all(got == 0)
        return
    want.backward(grad.double())
    for name, got, cpu, r in zip(("hidden", "gate", "gate_up_proj", "down_proj"), grads_g, grads_c, refs):
        want_grad = r.grad if r.grad is not None else torch.zeros_like(r)
        g_scale = max(want_grad.abs().max().item(), 1.0)
        _close(got, want_grad, dtype, f"grad_{name} vs float64", g_scale)
        _close(got, cpu, dtype, f"grad_{name} vs CPU kernel", g_scale)


def test_moe_experts_gpu_gate_dtypes():
    """The gate may be any float dtype, independent of the model dtype."""
    T, D, I, E = 50, 64, 32, 4
    hidden, index, gate, w1, w2 = _experts_inputs(T, D, I, E, 2, torch.bfloat16, "random", 9, False)
    for gate_dtype in DTYPES:
        g = gate.to(gate_dtype)
        got = zaya_rt.ops.moe_experts(hidden.cuda(), index.cuda(), g.cuda(), w1.cuda(), w2.cuda())
        want = zaya_rt.ops.moe_experts(hidden, index, g, w1, w2)
        _close(got, want, torch.bfloat16, f"gate {gate_dtype}", max(want.abs().max().item(), 1.0))


# ---- what the GPU path promises besides the math ------------------------------------------------------------


def _experts_cuda(T=256, D=256, I=128, E=8, top_k=2, dtype=torch.bfloat16, seed=0):
    hidden, index, gate, w1, w2 = _experts_inputs(T, D, I, E, top_k, dtype, "random", seed, False)
    return [t.cuda() for t in (hidden, index, gate, w1, w2)]


def test_moe_experts_cuda_graph_capture_and_replay(gemm_family):
    """Offsets, group sizes and the routing stay on the device: the whole block captures into a graph, and
    replays with new tokens and a new routing give what eager calls give."""
    for top_k in (1, 2):
        x, index, gate, w1, w2 = _experts_cuda(top_k=top_k)

        def step():
            return zaya_rt.ops.moe_experts(x, index, gate, w1, w2)

        graph, captured = capture_cuda_graph(step)
        for trial in range(3):
            fresh = _experts_cuda(top_k=top_k, seed=trial + 1)
            x.copy_(fresh[0])
            index.copy_(fresh[1])
            gate.copy_(fresh[2])
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(captured, step()), f"graph replay {trial} differs from eager (top_k={top_k})"


def test_grouped_gemm_cuda_graph_capture_and_replay(gemm_family):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(512, 256, generator=gen).to(torch.bfloat16).cuda()
    b = torch.randn(4, 192, 256, generator=gen).to(torch.bfloat16).cuda()
    offsets = _offsets([100, 0, 300, 50], "cuda")
    graph, captured = capture_cuda_graph(lambda: zaya_rt.ops.grouped_gemm(a, b, offsets))
    offsets.copy_(_offsets([10, 200, 0, 250], "cuda"))  # new group sizes, read on the device at replay
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, zaya_rt.ops.grouped_gemm(a, b, offsets))
    assert torch.all(captured[460:] == 0)


def test_moe_gpu_is_deterministic():
    x, index, gate, w1, w2 = _experts_cuda(T=3000, top_k=2)
    first = zaya_rt.ops.moe_experts(x, index, gate, w1, w2)
    dispatch = zaya_rt.ops.moe_dispatch(index, w1.shape[0])
    for _ in range(3):
        assert torch.equal(first, zaya_rt.ops.moe_experts(x, index, gate, w1, w2))
        assert all(torch.equal(a, b) for a, b in zip(dispatch, zaya_rt.ops.moe_dispatch(index, w1.shape[0])))


def test_moe_gpu_runs_on_the_current_stream():
    x, index, gate, w1, w2 = _experts_cuda()
    want = zaya_rt.ops.moe_experts(x, index, gate, w1, w2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            got = zaya_rt.ops.moe_experts(x, index, gate, w1, w2)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(got, want)


def test_moe_gpu_empty_inputs():
    x, index, gate, w1, w2 = _experts_cuda()
    out = zaya_rt.ops.moe_experts(x[:0], index[:0], gate[:0], w1, w2)
    assert out.shape == (0, x.shape[1]) and out.is_cuda
    offsets, sorted_slots, slot_rows = zaya_rt.ops.moe_dispatch(index[:0], 8)
    assert torch.equal(offsets.cpu(), torch.zeros(8, dtype=torch.int32)) and sorted_slots.numel() == 0

"""GPU norms kernels (CUDA or HIP build of zaya_rt._C): forward and backward against the float64 reference
and against the CPU kernels on the same inputs, plus what the GPU path promises beyond the math:
strided rows, CUDA-graph capture, side streams, determinism, zero rows.

Runs only where torch sees a GPU and _C carries a GPU backend (`pytest -m cuda`).
"""

import pytest
import torch

from conftest import NEEDS_GPU, tolerance
from zaya_rt import ref
from zaya_rt.benchmarks.harness import capture_cuda_graph

pytestmark = NEEDS_GPU

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ROWS = (1, 7, 300)
DIMS = (64, 2048, 4100)
EPS = 1e-5


def _rel_err(got: torch.Tensor, want: torch.Tensor, scale: float = 0.0) -> float:
    if want.numel() == 0:
        return 0.0
    ref_scale = max(want.abs().max().item(), float(scale), 1e-30)
    return (got.detach().cpu().double() - want.detach().cpu().double()).abs().max().item() / ref_scale


def _assert_ref(got, want, dtype, what, scale=0.0):
    """Within tolerance(dtype) of the float64 reference, relative to the larger of the reference's magnitude
    and `scale` (the magnitude of the terms that cancel in it), as tests/test_norms.py judges the CPU."""
    err = _rel_err(got, want, scale)
    assert err <= tolerance(dtype), f"{what}: error vs float64 reference {err:.3g} over {tolerance(dtype):.3g}"


def _assert_rstd(got, want64, what="rstd"):
    """rstd is an fp32 statistic summed over the row: a few fp32 ulps per sqrt(dim) of rounding is honest."""
    err = _rel_err(got, want64)
    assert err <= 1e-5, f"{what}: error vs float64 reference {err:.3g} over 1e-05"


def _assert_same_math(gpu, cpu, dtype, what, scale=0.0, max_mismatch=None):
    """GPU and CPU kernels compute the same formulas with fp32 accumulation; they differ only in summation
    order (a few fp32 ulps of the statistics). Stored 16-bit values may therefore flip one rounding step,
    and only rarely: `max_mismatch` bounds the fraction of elements that are not bit-identical."""
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape, f"{what}: {gpu.dtype}{tuple(gpu.shape)} vs {cpu.dtype}{tuple(cpu.shape)}"
    limit = 1e-5 if dtype == torch.float32 else tolerance(dtype)
    err = _rel_err(gpu, cpu, scale)
    assert err <= limit, f"{what}: GPU vs CPU kernel {err:.3g} over {limit:.3g}"
    if max_mismatch is not None and cpu.numel():
        frac = (gpu.cpu() != cpu).double().mean().item()
        assert frac <= max_mismatch, f"{what}: {frac:.1%} of elements differ from the CPU kernel"


def _rows(rows, dim, dtype, layout, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    if layout == "strided":  # row stride 2*dim+3 and an odd start: the unvectorised path
        base = (torch.randn(rows, 2 * dim + 3, generator=gen) * 3).to(dtype)
        return base[:, 1 : dim + 1].to(device) if device == "cpu" else base.to(device)[:, 1 : dim + 1]
    return (torch.randn(rows, dim, generator=gen) * 3).to(dtype).to(device)


def _params(dim, dtype, seed, centres):
    gen = torch.Generator().manual_seed(seed)
    return [(c + 0.3 * torch.randn(dim, generator=gen)).to(dtype) for c in centres]


def _leaf(t, device):
    return t.detach().to(device).requires_grad_()


# ---- rms_norm ----------------------------------------------------------------------------------------------


def _rms_run(x, w, grad):
    x, w = x.requires_grad_(), w.requires_grad_()
    out, rstd = torch.ops.zaya_rt.rms_norm(x, w, EPS)
    out.backward(grad)
    return out.detach(), rstd.detach(), x.grad, w.grad


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_gpu(dtype, rows, dim, layout):
    seed = rows * 7919 + dim
    x_cpu = _rows(rows, dim, dtype, layout, seed)
    x_gpu = _rows(rows, dim, dtype, layout, seed, device="cuda")
    w = _params(dim, dtype, seed + 1, (1,))[0]
    grad = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)

    out_g, rstd_g, gx_g, gw_g = _rms_run(x_gpu, _leaf(w, "cuda"), grad.cuda())
    out_c, rstd_c, gx_c, gw_c = _rms_run(x_cpu.detach().clone(), _leaf(w, "cpu"), grad)
    assert out_g.is_cuda and out_g.dtype == dtype and gx_g.dtype == dtype and gw_g.dtype == dtype

    x64, w64 = x_cpu.detach().double().requires_grad_(), w.double().requires_grad_()
    want = ref.rms_norm(x64, w64, EPS)
    want.backward(grad.double())
    rstd64 = torch.rsqrt(x64.detach().pow(2).mean(-1) + EPS)
    gx_terms = (grad.double() * w64.detach()).abs().max() * rstd64.max()
    gw_terms = (grad.double().abs() * (x64.detach() * rstd64[:, None]).abs()).sum(0).max()

    _assert_ref(out_g, want, dtype, "out")
    _assert_rstd(rstd_g, rstd64)
    _assert_ref(gx_g, x64.grad, dtype, "grad_x", gx_terms)
    _assert_ref(gw_g, w64.grad, dtype, "grad_weight", gw_terms)

    _assert_same_math(out_g, out_c, dtype, "out", max_mismatch=None if dtype == torch.float32 else 0.02)
    _assert_same_math(rstd_g, rstd_c, torch.float32, "rstd")
    _assert_same_math(gx_g, gx_c, dtype, "grad_x", gx_terms)
    _assert_same_math(gw_g, gw_c, dtype, "grad_weight", gw_terms)


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                             (torch.float16, torch.bfloat16)])
@pytest.mark.parametrize("dim", [8, 100, 9000, 9001])
def test_rms_norm_gpu_mixed_dtypes_and_wide_rows(x_dtype, w_dtype, dim):
    # 9000/9001: more columns than a backward block keeps in registers (vector and scalar path).
    rows = 5
    x = _rows(rows, dim, x_dtype, "contiguous", dim)
    w = _params(dim, w_dtype, dim + 1, (1,))[0]
    grad = torch.randn(rows, dim, generator=torch.Generator().manual_seed(dim + 2)).to(w_dtype)
    out_g, rstd_g, gx_g, gw_g = _rms_run(_leaf(x, "cuda"), _leaf(w, "cuda"), grad.cuda())
    out_c, rstd_c, gx_c, gw_c = _rms_run(_leaf(x, "cpu"), _leaf(w, "cpu"), grad)
    worst = max((x_dtype, w_dtype), key=tolerance)
    gx_terms = (grad.double() * w.double()).abs().max() * rstd_c.double().max()
    gw_terms = (grad.double().abs() * (x.double() * rstd_c.double()[:, None]).abs()).sum(0).max()
    _assert_same_math(out_g, out_c, w_dtype, "out", max_mismatch=None if w_dtype == torch.float32 else 0.02)
    _assert_same_math(rstd_g, rstd_c, torch.float32, "rstd")
    _assert_same_math(gx_g, gx_c, worst, "grad_x", gx_terms)
    _assert_same_math(gw_g, gw_c, worst, "grad_weight", gw_terms)


# ---- residual_rms_norm -------------------------------------------------------------------------------------

RESIDUAL_DTYPES = [(d, d, d) for d in DTYPES] + [
    (torch.bfloat16, torch.float32, torch.bfloat16),  # bf16 sub-layer output into the fp32 residual stream
    (torch.float16, torch.float32, torch.float32),
]


def _residual_run(y, h, params, g_r, g_out):
    y, h = y.requires_grad_(), h.requires_grad_()
    params = [p.requires_grad_() for p in params]
    r, out, rstd = torch.ops.zaya_rt.residual_rms_norm(y, h, *params, EPS)
    torch.autograd.backward([r, out], [g_r, g_out])
    return r.detach(), out.detach(), rstd.detach(), y.grad, h.grad, [p.grad for p in params]


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtypes", RESIDUAL_DTYPES, ids=lambda d: "-".join(str(t).removeprefix("torch.") for t in d))
def test_residual_rms_norm_gpu(dtypes, rows, dim, layout):
    y_dtype, h_dtype, w_dtype = dtypes
    seed = rows * 104729 + dim
    y_cpu = _rows(rows, dim, y_dtype, layout, seed)
    y_gpu = _rows(rows, dim, y_dtype, layout, seed, device="cuda")
    h = _rows(rows, dim, h_dtype, "contiguous", seed + 7)
    params = _params(dim, w_dtype, seed + 3, (0, 1, 0, 1, 1))  # y_bias, y_scale, h_bias, h_scale, weight
    gen = torch.Generator().manual_seed(seed + 4)
    g_r, g_out = torch.randn(rows, dim, generator=gen), torch.randn(rows, dim, generator=gen).to(w_dtype)

    r_g, out_g, rstd_g, gy_g, gh_g, gp_g = _residual_run(
        y_gpu, _leaf(h, "cuda"), [_leaf(p, "cuda") for p in params], g_r.cuda(), g_out.cuda())
    r_c, out_c, rstd_c, gy_c, gh_c, gp_c = _residual_run(
        y_cpu.detach().clone(), _leaf(h, "cpu"), [_leaf(p, "cpu") for p in params], g_r, g_out)
    assert r_g.dtype == torch.float32 and out_g.dtype == w_dtype and gy_g.dtype == y_dtype and gh_g.dtype == h_dtype

    y64, h64 = y_cpu.detach().double().requires_grad_(), h.double().requires_grad_()
    p64 = [p.double().requires_grad_() for p in params]
    r_want, out_want = ref.residual_rms_norm(y64, h64, *p64, EPS)
    torch.autograd.backward([r_want, out_want], [g_r.double(), g_out.double()])
    worst = max(dtypes, key=tolerance)
    rstd64 = torch.rsqrt(r_want.detach().pow(2).mean(-1) + EPS)
    g_terms = max(g_r.abs().max().item(), ((g_out.double() * p64[4].detach()).abs().max() * rstd64.max()).item())
    gy_terms = g_terms * p64[1].detach().abs().max().item()
    gh_terms = g_terms * p64[3].detach().abs().max().item()
    operands = [y64.detach().abs().max() + p64[0].detach().abs().max(),
                h64.detach().abs().max() + p64[2].detach().abs().max(),
                p64[1].detach().abs().max(), p64[3].detach().abs().max(),
                (r_want.detach() * rstd64[:, None]).abs().max()]
    summed_terms = g_terms * rows * max(float(o) for o in operands)

    _assert_ref(r_g, r_want, torch.float32, "r")
    _assert_ref(out_g, out_want, w_dtype, "out")
    _assert_rstd(rstd_g, rstd64)
    _assert_ref(gy_g, y64.grad, worst, "grad_y", gy_terms)
    _assert_ref(gh_g, h64.grad, worst, "grad_h", gh_terms)
    names = ("y_bias", "y_scale", "h_bias", "h_scale", "weight")
    for name, got, p in zip(names, gp_g, p64):
        _assert_ref(got, p.grad, worst, f"grad_{name}", summed_terms)

    _assert_same_math(r_g, r_c, torch.float32, "r")
    _assert_same_math(out_g, out_c, w_dtype, "out", max_mismatch=None if w_dtype == torch.float32 else 0.02)
    _assert_same_math(rstd_g, rstd_c, torch.float32, "rstd")
    _assert_same_math(gy_g, gy_c, worst, "grad_y", gy_terms)
    _assert_same_math(gh_g, gh_c, worst, "grad_h", gh_terms)
    for name, got, cpu in zip(names, gp_g, gp_c):
        _assert_same_math(got, cpu, worst, f"grad_{name}", summed_terms)


# ---- what the GPU path promises besides the math ------------------------------------------------------------


def test_zero_rows_gpu():
    x = torch.empty(0, 64, device="cuda", requires_grad=True)
    w = torch.ones(64, device="cuda", requires_grad=True)
    out, rstd = torch.ops.zaya_rt.rms_norm(x, w, EPS)
    assert out.shape == (0, 64) and rstd.shape == (0,)
    grad_x, grad_w = torch.ops.zaya_rt.rms_norm_backward(torch.empty(0, 64, device="cuda"), x.detach(), w.detach(), rstd)
    assert grad_x.shape == (0, 64)
    assert torch.equal(grad_w, torch.zeros_like(grad_w))


def test_backward_is_deterministic():
    x = torch.randn(1000, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, device="cuda", dtype=torch.bfloat16)
    _, rstd = torch.ops.zaya_rt.rms_norm(x, w, EPS)
    g = torch.randn(1000, 2048, device="cuda", dtype=torch.bfloat16)
    first = torch.ops.zaya_rt.rms_norm_backward(g, x, w, rstd)
    for _ in range(3):
        again = torch.ops.zaya_rt.rms_norm_backward(g, x, w, rstd)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_runs_on_the_current_stream():
    x = torch.randn(300, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, device="cuda", dtype=torch.bfloat16)
    want, _ = torch.ops.zaya_rt.rms_norm(x, w, EPS)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            got, _ = torch.ops.zaya_rt.rms_norm(x, w, EPS)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(got, want)


def test_cuda_graph_capture_and_replay():
    rows, dim = 64, 2048
    x = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)
    params = [p.cuda() for p in _params(dim, torch.bfloat16, 0, (0, 1, 0, 1, 1))]
    g_r = torch.randn(rows, dim, device="cuda")
    g_out = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)

    def step():
        r, out, rstd = torch.ops.zaya_rt.residual_rms_norm(y, x, *params, EPS)
        grads = torch.ops.zaya_rt.residual_rms_norm_backward(g_r, g_out, y, x, *params, r, rstd)
        normed, rstd2 = torch.ops.zaya_rt.rms_norm(out, params[4], EPS)
        gx, gw = torch.ops.zaya_rt.rms_norm_backward(g_out, out, params[4], rstd2)
        return (r, out, normed, gx, gw, *grads)

    graph, captured = capture_cuda_graph(step)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        eager = step()
        for i, (a, b) in enumerate(zip(captured, eager)):
            assert torch.equal(a, b), f"graph replay output {i} differs from eager"

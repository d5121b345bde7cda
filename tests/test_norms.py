"""Norms ops vs the float64 reference: forward and backward, every dtype and CPU ISA, edge shapes.

Tolerance (flash-attention's rule, conftest.assert_close_to_peer): the kernel's max error against float64 is at
most twice that of the reference run in the kernel's dtypes, plus one ulp (16 for float32) of the scale."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zaya_rt
from conftest import assert_close_to_peer, tolerance
from zaya_rt import ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _assert_close_to_ref(got, want, peer, dtype, what, scale=0.0):
    """got within twice peer's error of the float64 reference (plus the floor), relative to the larger of the
    reference's magnitude and `scale`, the magnitude of the terms that cancel in it (gradients of a norm nearly
    vanish along the input, e.g. with one channel, so their own magnitude is no yardstick)."""
    if want.numel() == 0:
        assert got.numel() == 0 and peer.numel() == 0
        return
    ref_scale = max(want.abs().max().item(), float(scale), 1e-30)
    assert_close_to_peer(got, want, peer, what, scale=ref_scale, dtype=dtype)


def _rows_input(rows, dim, dtype, *, noncontig, seed):
    gen = torch.Generator().manual_seed(seed)
    if noncontig:
        base = torch.randn(rows, 2 * dim + 3, generator=gen).to(dtype)
        return base[:, 1 : dim + 1]
    return (torch.randn(rows, dim, generator=gen) * 3).to(dtype)


shapes = st.tuples(st.integers(0, 40), st.sampled_from([1, 7, 64, 130, 512]))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, x_dtype=st.sampled_from(DTYPES), w_dtype=st.sampled_from(DTYPES),
       noncontig=st.booleans(), seed=st.integers(0, 2**16))
def test_rms_norm_forward_backward_matches_reference(shape, x_dtype, w_dtype, noncontig, seed):
    rows, dim = shape
    x = _rows_input(rows, dim, x_dtype, noncontig=noncontig, seed=seed).requires_grad_()
    w = (1 + 0.3 * torch.randn(dim, generator=torch.Generator().manual_seed(seed + 1))).to(w_dtype).requires_grad_()
    out, rstd = torch.ops.zaya_rt.rms_norm(x, w, 1e-5)
    assert out.dtype == w_dtype and out.shape == x.shape and rstd.shape == x.shape[:-1]

    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = ref.rms_norm(x64, w64, 1e-5)
    xp, wp = x.detach().requires_grad_(), w.detach().requires_grad_()
    peer = ref.rms_norm(xp, wp, 1e-5)
    _assert_close_to_ref(out, want, peer, w_dtype, "out")

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 2)).to(w_dtype)
    out.backward(grad)
    want.backward(grad.double())
    peer.backward(grad)
    worst = x_dtype if tolerance(x_dtype) > tolerance(w_dtype) else w_dtype
    terms = (grad.double() * w64.detach()).abs().max() * rstd.double().max() if rows else 0.0
    _assert_close_to_ref(x.grad, x64.grad, xp.grad, worst, "grad_x", terms)
    if rows:
        summed_terms = (grad.double().abs() * (x64.detach() * rstd.double()[:, None]).abs()).sum(0).max()
        _assert_close_to_ref(w.grad, w64.grad, wp.grad, worst, "grad_weight", summed_terms)
    else:
        assert torch.equal(w.grad, torch.zeros_like(w))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, y_dtype=st.sampled_from(DTYPES), w_dtype=st.sampled_from(DTYPES),
       h_fp32=st.booleans(), noncontig=st.booleans(), seed=st.integers(0, 2**16))
def test_residual_rms_norm_matches_reference(shape, y_dtype, w_dtype, h_fp32, noncontig, seed):
    rows, dim = shape
    h_dtype = torch.float32 if h_fp32 else y_dtype
    y = _rows_input(rows, dim, y_dtype, noncontig=noncontig, seed=seed).requires_grad_()
    h = _rows_input(rows, dim, h_dtype, noncontig=False, seed=seed + 7).requires_grad_()
    gen = torch.Generator().manual_seed(seed + 3)
    params = [(c + 0.3 * torch.randn(dim, generator=gen)).to(w_dtype).requires_grad_() for c in (0, 1, 0, 1, 1)]
    r, out, _ = torch.ops.zaya_rt.residual_rms_norm(y, h, *params, 1e-5)
    assert r.dtype == torch.float32 and out.dtype == w_dtype

    y64, h64 = y.detach().double().requires_grad_(), h.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    r_want, out_want = ref.residual_rms_norm(y64, h64, *p64, 1e-5)
    y_p, h_p = y.detach().requires_grad_(), h.detach().requires_grad_()
    p_p = [p.detach().requires_grad_() for p in params]
    r_peer, out_peer = ref.residual_rms_norm(y_p, h_p, *p_p, 1e-5)
    _assert_close_to_ref(r, r_want, r_peer, torch.float32, "r")
    _assert_close_to_ref(out, out_want, out_peer, w_dtype, "out")

    gen = torch.Generator().manual_seed(seed + 4)
    g_r, g_out = torch.randn(r.shape, generator=gen), torch.randn(out.shape, generator=gen).to(w_dtype)
    torch.autograd.backward([r, out], [g_r, g_out])
    torch.autograd.backward([r_want, out_want], [g_r.double(), g_out.double()])
    torch.autograd.backward([r_peer, out_peer], [g_r, g_out])
    worst = max((y_dtype, h_dtype, w_dtype), key=tolerance)
    _, _, rstd = torch.ops.zaya_rt.residual_rms_norm(y.detach(), h.detach(), *[p.detach() for p in params], 1e-5)
    g_terms = max(g_r.abs().max().item(), ((g_out.double() * p64[4].detach()).abs().max() * rstd.max()).item()) if rows else 0.0
    _assert_close_to_ref(y.grad, y64.grad, y_p.grad, worst, "grad_y", g_terms * p64[1].detach().abs().max().item())
    _assert_close_to_ref(h.grad, h64.grad, h_p.grad, worst, "grad_h", g_terms * p64[3].detach().abs().max().item())
    if rows:
        operands = [y64.detach().abs().max() + p64[0].detach().abs().max(), h64.detach().abs().max()
                    + p64[2].detach().abs().max(), p64[1].detach().abs().max(), p64[3].detach().abs().max(),
                    (r_want.detach() * rstd.double()[:, None]).abs().max()]
        summed_terms = g_terms * rows * max(float(o) for o in operands)
        for name, p, p_ref, p_peer in zip(("y_bias", "y_scale", "h_bias", "h_scale", "weight"), params, p64, p_p):
            _assert_close_to_ref(p.grad, p_ref.grad, p_peer.grad, worst, f"grad_{name}", summed_terms)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,dim", [(1, 2048), (300, 4100), (4097, 64)])
def test_every_cpu_isa_agrees(cpu_isa, dtype, rows, dim):
    x = torch.randn(rows, dim).to(dtype)
    w = (1 + 0.1 * torch.randn(dim)).to(dtype)
    out = zaya_rt.ops.rms_norm(x, w, 1e-6)
    want, peer = ref.rms_norm(x.double(), w.double(), 1e-6), ref.rms_norm(x, w, 1e-6)
    _assert_close_to_ref(out, want, peer, dtype, f"{cpu_isa} out")


def test_outputs_are_fully_written():
    # Poison the allocator's memory: a kernel that skips elements would leave NaNs behind.
    for _ in range(3):
        torch.full((4096, 512), float("nan")).sum()
    x = torch.randn(33, 512)
    out = zaya_rt.ops.rms_norm(x, torch.ones(512), 1e-5)
    assert torch.isfinite(out).all()


def test_matches_transformers_rmsnorm_fp32():
    hf = pytest.importorskip("transformers.models.zaya.modeling_zaya")
    norm = hf.ZayaRMSNorm(96, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 96)
    torch.testing.assert_close(zaya_rt.ops.rms_norm(x, norm.weight, 1e-5), norm(x), rtol=1e-6, atol=1e-6)

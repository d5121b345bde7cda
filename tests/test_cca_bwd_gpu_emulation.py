"""The GPU CCA prep backward (cuda/cca_bwd_kernels.cuh) without a GPU: tools/gpu_emu compiles the kernel header for
the host (every GPU thread a std::thread, shared memory poisoned at block start) at 32 and 64 lanes per warp, and
this file runs it against autograd through the float64 reference (zaya_rt.ref.cca_prep) and next to the CPU
kernel: ragged packed batches (empty and one-token sequences) with incoming state, head dims 64 and 128,
fp32/bf16/fp16 activations with their own or fp32 weights, missing output gradients. Outputs are poisoned (NaN)
and the workspace filled with garbage bytes, so an element never written or a buffer read before it is written
shows up. This checks index math, tiling edges and numerics, not memory ordering or timing.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_gpu_emu_params
import zaya_rt  # noqa: F401  (registers torch.ops.zaya_rt for the CPU kernel)
from zaya_rt import ref

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ for the GPU kernel emulator")


params = load_gpu_emu_params()


@pytest.fixture(scope="module", params=(32, 64), ids=("warp32", "warp64"))
def emu(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"gpu_emu_cca_w{request.param}")
    subprocess.run([sys.executable, str(ROOT / "tools/gpu_emu/build.py"), str(out), "--warp", str(request.param)],
                   check=True, stdout=subprocess.DEVNULL)
    lib = ctypes.CDLL(str(out / f"libzaya_gpu_emu_w{request.param}.so"))
    lib.emu_cca_prep_bwd.restype = ctypes.c_char_p
    lib.emu_cca_prep_bwd_workspace.restype = ctypes.c_int64
    return lib


def _inputs(lens, hq, hk, d, k0, k1, dtype, w_dtype, gen):
    T, B = sum(lens), len(lens)
    C, V, K = (hq + hk) * d, hk * d // 2, (k0 - 1) + (k1 - 1)
    r = lambda *s, m=1.0: torch.randn(*s, generator=gen) * m  # noqa: E731
    return dict(
        qp=r(T, hq * d).to(dtype), kp=r(T, hk * d).to(dtype), v_cur=r(T, V).to(dtype), v_del=r(T, V).to(dtype),
        conv0_w=r(C, 1, k0, m=0.5).to(w_dtype), conv0_b=r(C, m=0.1).to(w_dtype),
        conv1_w=r(C, d, k1, m=d ** -0.5).to(w_dtype), conv1_b=r(C, m=0.1).to(w_dtype),
        temp=(torch.rand(hk, generator=gen) + 0.5).to(w_dtype),
        positions=torch.cat([torch.arange(L) + 3 * b for b, L in enumerate(lens)]).to(torch.int64),
        cu_seqlens=torch.tensor([0, *lens]).cumsum(0).to(torch.int32),
        conv_state=r(B, C, K).to(dtype), v_state=r(B, V).to(dtype),
    )


def _out_grads(T, B, hq, hk, d, C, K, V, dtype, gen, missing):
    g = dict(grad_q=torch.randn(T, hq, d, generator=gen).to(dtype), grad_k=torch.randn(T, hk, d, generator=gen).to(dtype),
             grad_v=torch.randn(T, hk * d, generator=gen).to(dtype),
             grad_cs=torch.randn(B, C, K, generator=gen).to(dtype), grad_vs=torch.randn(B, V, generator=gen).to(dtype))
    for name in missing:
        g[name] = None
    return g


def _reference_grads(a, g, kw, eps):
    """Autograd through the float64 reference: grads of (qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w,
    conv1_b, temp, conv_state, v_state)."""
    names = ("qp", "kp", "v_cur", "v_del", "conv0_w", "conv0_b", "conv1_w", "conv1_b", "temp", "conv_state",
             "v_state")
    leaves = {n: a[n].double().requires_grad_() for n in names}
    out = ref.cca_prep(**leaves, positions=a["positions"], cu_seqlens=a["cu_seqlens"], **kw, norm_eps=eps)
    outs, grads = [], []
    for o, name in zip(out, ("grad_q", "grad_k", "grad_v", "grad_cs", "grad_vs")):
        if g[name] is not None:
            outs.append(o)
            grads.append(g[name].double().reshape(o.shape))
    got = torch.autograd.grad(outs, [leaves[n] for n in names], grads, allow_unused=True)
    return [torch.zeros_like(leaves[n]) if x is None else x for x, n in zip(got, names)]


def _cpu_grads(a, g, kw):
    out = torch.ops.zaya_rt.cca_prep_backward(
        g["grad_q"], g["grad_k"], g["grad_v"], g["grad_cs"], g["grad_vs"], a["qp"], a["kp"], a["v_cur"],
        a["conv0_w"], a["conv0_b"], a["conv1_w"], a["conv1_b"], a["temp"], a["positions"], a["cu_seqlens"],
        a["conv_state"], a["v_state"], kw["num_q_heads"], kw["num_kv_heads"], kw["rope_dims"], kw["rope_theta"])
    g_qp, g_kp, g_vc, g_vd, g_w0, g_b0, g_w1, g_b1, g_t, g_cs, g_vs = out
    return [g_qp, g_kp, g_vc, g_vd, g_w0, g_b0, g_w1, g_b1, g_t, g_cs, g_vs]


def _emulated_grads(lib, a, g, hq, hk, d, rd, eps):
    T, B = a["qp"].shape[0], a["cu_seqlens"].shape[0] - 1
    k0, k1 = a["conv0_w"].shape[2], a["conv1_w"].shape[2]
    C, V, K = (hq + hk) * d, hk * d // 2, (k0 - 1) + (k1 - 1)
    dt = a["qp"].dtype
    nan = lambda *s, dtype=dt: torch.full(s, float("nan"), dtype=dtype)  # noqa: E731
    outs = dict(grad_qp=nan(T, hq * d), grad_kp=nan(T, hk * d), grad_v_cur=nan(T, V), grad_v_del=nan(T, V),
                grad_conv_state_in=nan(B, C, K), grad_v_state_in=nan(B, V),
                grad_conv0_w=nan(C, 1, k0, dtype=torch.float32), grad_conv0_b=nan(C, dtype=torch.float32),
                grad_conv1_w=nan(C, d, k1, dtype=torch.float32), grad_conv1_b=nan(C, dtype=torch.float32),
                grad_temp=nan(hk, dtype=torch.float32))
    cs, gcs, gq, gk = a["conv_state"], g["grad_cs"], g["grad_q"], g["grad_k"]
    inv_freq = ref.rope_inv_freq(rd, 1e4, torch.float32)
    fields = dict(
        grad_q=gq, gq_row_stride=hq * d, gq_head_stride=d, grad_k=gk, gk_row_stride=hk * d, gk_head_stride=d,
        grad_v=g["grad_v"], gv_row_stride=hk * d, grad_conv_state_out=gcs, gcs_batch_stride=C * K,
        gcs_channel_stride=K, grad_v_state_out=g["grad_vs"], gvs_batch_stride=V,
        qp=a["qp"], qp_row_stride=hq * d, kp=a["kp"], kp_row_stride=hk * d, dtype=dt,
        conv0_w=a["conv0_w"], conv0_b=a["conv0_b"], conv1_w=a["conv1_w"], conv1_b=a["conv1_b"], temp=a["temp"],
        w_dtype=a["conv0_w"].dtype, conv_state_in=cs, cs_in_batch_stride=C * K, cs_in_channel_stride=K,
        state_dtype=dt, positions=a["positions"], pos_dtype=a["positions"].dtype, cu_seqlens=a["cu_seqlens"],
        inv_freq=inv_freq, gqp_row_stride=hq * d, gkp_row_stride=hk * d, gvc_row_stride=V, gvd_row_stride=V,
        T=T, B=B, Hq=hq, Hk=hk, d=d, k0=k0, k1=k1, rd=rd, norm_eps=eps, workspace=None, workspace_bytes=0, **outs)
    nbytes = lib.emu_cca_prep_bwd_workspace(ctypes.byref(params.struct("CcaPrepBwdParams", **fields)))
    ws = torch.full((nbytes,), 0xFF, dtype=torch.uint8)  # NaN floats
    fields.update(workspace=ws, workspace_bytes=nbytes)
    msg = lib.emu_cca_prep_bwd(ctypes.byref(params.struct("CcaPrepBwdParams", **fields)))
    assert msg is None, msg.decode()
    return [outs[n] for n in ("grad_qp", "grad_kp", "grad_v_cur", "grad_v_del", "grad_conv0_w", "grad_conv0_b",
                              "grad_conv1_w", "grad_conv1_b", "grad_temp", "grad_conv_state_in", "grad_v_state_in")]


GRAD_NAMES = ("qp", "kp", "v_cur", "v_del", "conv0_w", "conv0_b", "conv1_w", "conv1_b", "temp", "conv_state",
              "v_state")
REL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}

CASES = [
    # (lens, hq, hk, d, k0, k1, rd, dtype, fp32 weights, missing output grads)
    ([5, 0, 1, 19], 2, 1, 64, 2, 2, 32, torch.float32, False, ()),
    ([3, 14], 2, 2, 128, 2, 2, 64, torch.bfloat16, True, ()),
    ([7, 0, 9], 4, 1, 64, 3, 2, 64, torch.float16, False, ("grad_k", "grad_cs")),
    ([18], 1, 1, 128, 2, 3, 128, torch.bfloat16, False, ("grad_v", "grad_vs")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-G{c[1] // c[2]}-d{c[3]}-{str(c[7])[6:]}")
def test_backward_matches_float64_reference(emu, case):
    lens, hq, hk, d, k0, k1, rd, dtype, w_f32, missing = case
    gen = torch.Generator().manual_seed(sum(lens) * 7 + d)
    a = _inputs(lens, hq, hk, d, k0, k1, dtype, torch.float32 if w_f32 else dtype, gen)
    T, B = sum(lens), len(lens)
    C, V, K = (hq + hk) * d, hk * d // 2, (k0 - 1) + (k1 - 1)
    g = _out_grads(T, B, hq, hk, d, C, K, V, dtype, gen, missing)
    kw = dict(num_q_heads=hq, num_kv_heads=hk, rope_dims=rd, rope_theta=1e4)
    eps = torch.finfo(dtype).eps
    got = _emulated_grads(emu, a, g, hq, hk, d, rd, eps)
    want = _reference_grads(a, g, kw, eps)
    cpu = _cpu_grads(a, g, kw)
    for name, x, w, c in zip(GRAD_NAMES, got, want, cpu):
        x, w, c = x.double().reshape(w.shape), w, c.double().reshape(w.shape)
        assert torch.isfinite(x).all(), f"{name}: non-finite (an element never written)"
        scale = max(w.abs().max().item(), 1e-6)
        e_gpu, e_cpu = (x - w).abs().max().item(), (c - w).abs().max().item()
        assert e_gpu <= 2 * e_cpu + REL[dtype] * scale, f"{name}: emulated GPU error {e_gpu:.3g}, CPU {e_cpu:.3g}, " \
                                                         f"scale {scale:.3g}"


def test_no_tokens_gives_zero_parameter_grads_and_passes_state_through(emu):
    """B = 2 empty sequences: parameter grads are zero, the states' grads are the outgoing ones (conv state
    shifted through a k0 = k1 = 2 conv: the whole state is the outgoing state)."""
    gen = torch.Generator().manual_seed(5)
    hq, hk, d, k0, k1, rd = 2, 1, 64, 2, 2, 16
    a = _inputs([0, 0], hq, hk, d, k0, k1, torch.float32, torch.float32, gen)
    C, V, K = (hq + hk) * d, hk * d // 2, 2
    g = _out_grads(0, 2, hq, hk, d, C, K, V, torch.float32, gen, ())
    got = dict(zip(GRAD_NAMES, _emulated_grads(emu, a, g, hq, hk, d, rd, 1e-6)))
    for name in ("conv0_w", "conv0_b", "conv1_w", "conv1_b", "temp"):
        assert torch.equal(got[name], torch.zeros_like(got[name])), name
    torch.testing.assert_close(got["conv_state"], g["grad_cs"], rtol=0, atol=0)
    torch.testing.assert_close(got["v_state"], g["grad_vs"], rtol=0, atol=0)

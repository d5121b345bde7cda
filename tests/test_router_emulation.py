"""The GPU router kernels without a GPU: tools/gpu_emu (--source emu_router) compiles the kernel bodies of
cuda/router_body.cuh with the host C++ compiler (every block, warp and thread run phase by phase, the wmma
tensor-core tiles emulated with wmma's alignment rules checked, UBSan on) and this file compares the result to the
float64 reference and to the CPU kernel, for the launch choices the GPU launcher can make (tokens per block,
tensor cores, vectorised loads, 32- or 64-lane warps, the fused or the torch down projection).

ZAYA_RT_EMULATION_SANITIZE=address,undefined (with LD_PRELOAD=$(g++ -print-file-name=libasan.so) and
ASAN_OPTIONS=detect_leaks=0) also catches out-of-bounds shared or global memory accesses."""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zaya_rt
from conftest import tolerance
from zaya_rt.ops._lib import DTYPE_CODES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no host C++ compiler")
    out = tmp_path_factory.mktemp("gpu_emu_router")
    sanitize = os.environ.get("ZAYA_RT_EMULATION_SANITIZE", "undefined")
    subprocess.run([sys.executable, str(ROOT / "tools/gpu_emu/build.py"), str(out), "--source", "emu_router",
                    "--sanitize", sanitize], check=True, stdout=subprocess.DEVNULL)
    lib = out / "libzaya_gpu_emu_router_w32.so"
    fn = ctypes.CDLL(str(lib)).zaya_router_emulate
    fn.restype = ctypes.c_char_p
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [vp, i64, vp, i64, ctypes.c_int, *[vp] * 10, ctypes.c_int, ctypes.c_float, *[vp] * 4,
                   i64, i64, i64, i64, vp, i64, *[ctypes.c_int] * 5]
    return fn


def _inputs(T, D, R, E, dtype, seed, eda=True, zp_dtype=torch.float32, x_layout="contiguous"):
    gen = torch.Generator().manual_seed(seed)
    C = E + 1
    mk = lambda *s, scale=0.3, shift=0.0: (shift + scale * torch.randn(*s, generator=gen)).to(dtype)  # noqa: E731
    if x_layout == "strided":  # row stride 2D + 3, odd start: no vector loads
        x = torch.randn(T, 2 * D + 3, generator=gen).to(dtype)[:, 1 : D + 1]
    else:
        x = torch.randn(T, D, generator=gen).to(dtype)
    w = dict(
        z_prev=torch.randn(T, R, generator=gen).to(zp_dtype) if eda else None,
        down_w=mk(R, D, scale=D**-0.5), down_b=mk(R, scale=0.1),
        eda_scale=mk(R, shift=1.0, scale=0.2) if eda else None, norm_w=mk(R, shift=1.0, scale=0.2),
        fc1_w=mk(R, R, scale=R**-0.5), fc1_b=mk(R, scale=0.1), fc2_w=mk(R, R, scale=R**-0.5), fc2_b=mk(R, scale=0.1),
        out_w=mk(C, R, scale=1.5),
    )
    bias = 0.05 * torch.randn(C, generator=gen)
    return x, w, bias


def _args(x, w, bias):
    return (x, w["z_prev"], w["down_w"], w["down_b"], w["eda_scale"], w["norm_w"], w["fc1_w"], w["fc1_b"], w["fc2_w"],
            w["fc2_b"], w["out_w"], bias, 1e-5)


def _emulate(fn, x, w, bias, *, tb, tensor_cores, vec_down, vec_head, warp_size=32, torch_down=False):
    T, D = x.shape
    R, C = w["down_w"].shape[0], w["out_w"].shape[0]
    logits = torch.full((T, C), float("nan"))
    gate = torch.full((T,), float("nan"))
    choice = torch.full((T,), -7, dtype=torch.int64)
    z = torch.full((T, R), float("nan"))
    z0 = F.linear(x, w["down_w"], w["down_b"]).contiguous() if torch_down else None
    zp = w["z_prev"]
    ptr = lambda t: t.data_ptr() if t is not None else None  # noqa: E731
    err = fn(ptr(x), x.stride(0), ptr(zp), R, DTYPE_CODES[zp.dtype] if zp is not None else 0, ptr(w["down_w"]),
             ptr(w["down_b"]), ptr(w["eda_scale"]), ptr(w["norm_w"]), ptr(w["fc1_w"]), ptr(w["fc1_b"]),
             ptr(w["fc2_w"]), ptr(w["fc2_b"]), ptr(w["out_w"]), ptr(bias), DTYPE_CODES[x.dtype], 1e-5,
             ptr(logits), ptr(gate), ptr(choice), ptr(z), T, D, R, C, ptr(z0), R if z0 is not None else 0,
             tb, int(tensor_cores), int(vec_down), int(vec_head), warp_size)
    assert err is None, err.decode()
    return logits, gate, choice, z


def _check_against_reference(got, x, w, bias, dtype):
    logits, gate, choice, z = got
    assert not logits.isnan().any() and not gate.isnan().any() and not z.isnan().any()
    assert ((choice >= 0) & (choice < logits.shape[1])).all()
    args64 = [t.double() if isinstance(t, torch.Tensor) else t for t in _args(x, w, bias)]
    args64[-2] = bias
    r_logits, _, r_choice, r_z = zaya_rt.ref.zaya_router(*args64)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    scale = r_logits.abs().max().item()
    assert (logits.double() - r_logits).abs().max().item() <= tol * scale, "logits vs float64 reference"
    assert (z.double() - r_z).abs().max().item() <= tol * r_z.abs().max().item(), "z vs float64 reference"
    agree = (choice == r_choice).double().mean().item()
    assert agree == 1.0 if dtype == torch.float32 else agree >= 0.8, f"choices agree on {agree:.0%}"
    # gate: the probability of the choice the kernel made (0 for skip), against the reference softmax
    p_ref = r_logits.softmax(-1).gather(-1, choice[:, None]).squeeze(-1).masked_fill(choice == logits.shape[1] - 1, 0)
    assert (gate.double() - p_ref).abs().max().item() <= max(tol, 2 * tolerance(dtype)), "gate"
    # the CPU kernel rounds at the same points: close to it, same choices but for rare near-ties in 16 bits
    c_logits, c_gate, c_choice, c_z = zaya_rt.ops.zaya_router(*_args(x, w, bias))
    assert (logits - c_logits).abs().max().item() <= max(tol, 4 * tolerance(dtype)) * scale, "logits vs CPU kernel"
    assert (z - c_z).abs().max().item() <= 4 * tolerance(dtype) * c_z.abs().max().item(), "z vs CPU kernel"
    same = (choice == c_choice).double().mean().item()
    assert same == 1.0 if dtype == torch.float32 else same >= 0.9, f"choices agree with the CPU kernel on {same:.0%}"


# (T, D, R, E, tokens per block): odd sizes (no vector loads, K padding), ZAYA1 width, many classes (C > 128 and
# C > R: three output tiles, scratch sized by C).
SHAPES = [
    (7, 48, 20, 5, 16),
    (37, 64, 64, 16, 32),
    (70, 256, 256, 16, 64),
    (3, 40, 40, 256, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_D{}_R{}_E{}_tb{}".format(*s))
def test_emulated_kernels_match_reference(emulator, dtype, shape):
    T, D, R, E, tb = shape
    x, w, bias = _inputs(T, D, R, E, dtype, seed=T + R)
    V = 16 // x.element_size()
    vec_down, vec_head = D % V == 0, R % V == 0
    for tensor_cores in ([False, True] if dtype != torch.float32 else [False]):
        for torch_down in (False, True):
            got = _emulate(emulator, x, w, bias, tb=tb, tensor_cores=tensor_cores, vec_down=vec_down,
                           vec_head=vec_head, torch_down=torch_down)
            _check_against_reference(got, x, w, bias, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_emulated_variants(emulator, dtype):
    """First layer (no EDA), a bf16 z_prev, strided x, one token, 64-lane warps (HIP) in the down projection, and
    scalar loads where vector loads would do: all give the same answers within tolerance."""
    cases = [
        dict(T=1, eda=False, tb=16),
        dict(T=9, zp_dtype=torch.bfloat16, tb=16, x_layout="strided"),
        dict(T=20, tb=32, warp_size=64),
        dict(T=20, tb=16, scalar=True),
    ]
    for i, c in enumerate(cases):
        x, w, bias = _inputs(c["T"], 64, 32, 7, dtype, seed=100 + i, eda=c.get("eda", True),
                             zp_dtype=c.get("zp_dtype", torch.float32), x_layout=c.get("x_layout", "contiguous"))
        vec = not c.get("scalar", False)
        got = _emulate(emulator, x, w, bias, tb=c["tb"], tensor_cores=dtype != torch.float32,
                       vec_down=vec and c.get("x_layout") != "strided", vec_head=vec,
                       warp_size=c.get("warp_size", 32))
        _check_against_reference(got, x, w, bias, dtype)


def test_emulated_biases_flip_the_choice(emulator):
    """A large balancing bias on one class wins every token: the skip class gives gate 0, an expert its
    probability; ties between equal scores go to the lowest index like torch.argmax."""
    x, w, bias = _inputs(21, 64, 32, 7, torch.bfloat16, seed=5)
    for target in (7, 2):
        b = torch.zeros(8)
        b[target] = 10.0
        logits, gate, choice, _ = _emulate(emulator, x, w, b, tb=16, tensor_cores=True, vec_down=True, vec_head=True)
        assert (choice == target).all()
        p = torch.softmax(logits, -1)[:, target]
        if target == 7:
            assert (gate == 0).all()
        else:
            torch.testing.assert_close(gate, p, rtol=2e-2, atol=1e-3)
    b = torch.full((8,), 5.0)  # every class scores p + 5: the biggest probability wins; equal scores -> lowest
    b[1] = b[4] = 100.0
    _, _, choice, _ = _emulate(emulator, x, w, b, tb=16, tensor_cores=True, vec_down=True, vec_head=True)
    assert set(choice.tolist()) <= {1, 4}
    b[1] = b[4] = 1e30  # p + 1e30 rounds to 1e30 for both: a tie, torch.argmax takes the lowest index
    _, _, choice, _ = _emulate(emulator, x, w, b, tb=16, tensor_cores=True, vec_down=True, vec_head=True)
    assert (choice == 1).all()


def test_emulated_non_finite_inputs_and_biases_match_the_cpu_kernel(emulator):
    """The GPU kernels' NaN semantics are the CPU kernel's and the reference's (zaya_rt/router_choice.h): NaN/inf
    in x -> NaN logits and gate on class 0; all -inf bias -> class 0, gate p[0]; a NaN bias entry wins its class."""
    x, w, bias = _inputs(21, 64, 32, 7, torch.bfloat16, seed=9)
    x[0, 5], x[20, 0] = float("nan"), float("inf")
    cases = [(x, bias), (x.nan_to_num(0.0), torch.full((8,), -float("inf")))]
    for j in (3, 7):
        b = bias.clone()
        b[j] = float("nan")
        cases.append((x.nan_to_num(0.0), b))
    for xi, b in cases:
        for tensor_cores in (False, True):
            logits, gate, choice, _ = _emulate(emulator, xi, w, b, tb=16, tensor_cores=tensor_cores, vec_down=True,
                                               vec_head=True)
            c_logits, c_gate, c_choice, _ = zaya_rt.ops.zaya_router(*_args(xi, w, b))
            r_logits, r_gate, r_choice, _ = zaya_rt.ref.zaya_router(
                *[t.double() if isinstance(t, torch.Tensor) and t is not b else t for t in _args(xi, w, b)])
            assert torch.equal(logits.isnan(), r_logits.isnan()) and torch.equal(gate.isnan(), r_gate.isnan())
            decided = r_logits.isnan().any(-1) | b.isnan().any() | (b == -float("inf")).all()
            assert torch.equal(choice[decided], r_choice[decided]) and torch.equal(choice[decided], c_choice[decided])
            finite = ~gate.isnan()
            torch.testing.assert_close(gate[finite], c_gate[finite], rtol=2e-2, atol=1e-3)

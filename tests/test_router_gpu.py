"""GPU router kernels (CUDA or HIP build of zaya_rt._C): zaya_router on the GPU against the float64 reference and
the CPU kernel, both down-projection paths (the router's own kernel for decode, torch's GEMM above
_GPU_FUSED_DOWN_MAX_TOKENS), every dtype, EDA on and off, strided inputs, balancing biases that move the choice,
poisoned outputs, CUDA-graph capture and replay, the current stream, gradients, and the shared-memory limit.

Runs only where torch sees a GPU and _C carries a GPU backend (`pytest -m cuda`).
"""

import pytest
import torch

import zaya_rt
import zaya_rt.ops.router as router_op
from conftest import NEEDS_GPU, assert_compiles_like_eager, tolerance
from zaya_rt import _C
from zaya_rt.ops._lib import device_args
from zaya_rt.ops.router import zaya_router_params

pytestmark = NEEDS_GPU

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REF_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _inputs(T, D=2048, R=256, E=16, dtype=torch.bfloat16, seed=0, eda=True, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    C = E + 1
    mk = lambda *s, scale=0.3, shift=0.0: (shift + scale * torch.randn(*s, generator=gen)).to(dtype)  # noqa: E731
    w = dict(
        z_prev=torch.randn(T, R, generator=gen) if eda else None,
        down_w=mk(R, D, scale=D**-0.5), down_b=mk(R, scale=0.1),
        eda_scale=mk(R, shift=1.0, scale=0.2) if eda else None, norm_w=mk(R, shift=1.0, scale=0.2),
        fc1_w=mk(R, R, scale=R**-0.5), fc1_b=mk(R, scale=0.1), fc2_w=mk(R, R, scale=R**-0.5), fc2_b=mk(R, scale=0.1),
        out_w=mk(C, R, scale=1.5),
    )
    w = {k: None if v is None else v.to(device) for k, v in w.items()}
    x = torch.randn(T, D, generator=gen).to(dtype).to(device)
    return x, w, (0.05 * torch.randn(C, generator=gen)).to(device)


def _args(x, w, bias):
    return (x, w["z_prev"], w["down_w"], w["down_b"], w["eda_scale"], w["norm_w"], w["fc1_w"], w["fc1_b"], w["fc2_w"],
            w["fc2_b"], w["out_w"], bias, 1e-5)


def _reference64(x, w, bias):
    args = [t.double() if isinstance(t, torch.Tensor) else t for t in _args(x, w, bias)]
    args[-2] = bias
    return zaya_rt.ref.zaya_router(*args)


def _check(got, x, w, bias, dtype, cpu=True):
    """Within the CPU kernel's tolerances of the float64 reference (tests/test_router.py), and close to the CPU
    kernel itself, which rounds at the same points."""
    logits, gate, choice, z = got
    C = logits.shape[1]
    assert logits.dtype == gate.dtype == z.dtype == torch.float32 and choice.dtype == torch.int64
    assert torch.isfinite(logits).all() and torch.isfinite(gate).all() and torch.isfinite(z).all()
    assert ((choice >= 0) & (choice < C)).all()
    r_logits, _, r_choice, r_z = _reference64(x, w, bias)
    tol = REF_TOL[dtype]
    scale = r_logits.abs().max().item()
    err = (logits.double() - r_logits).abs().max().item()
    assert err <= tol * scale, f"logits: {err:.3g} over {tol * scale:.3g}"
    assert (z.double() - r_z).abs().max().item() <= tol * r_z.abs().max().item(), "z"
    agree = (choice == r_choice).double().mean().item()
    assert agree == 1.0 if dtype == torch.float32 else agree >= 0.8, f"choices agree on {agree:.1%}"
    p_ref = r_logits.softmax(-1).gather(-1, choice[:, None]).squeeze(-1).masked_fill(choice == C - 1, 0)
    assert (gate.double() - p_ref).abs().max().item() <= max(tol, 2 * tolerance(dtype)), "gate"
    if cpu:
        cpu_args = [t.cpu() if isinstance(t, torch.Tensor) else t for t in _args(x, w, bias)]
        c_logits, _, c_choice, c_z = zaya_rt.ops.zaya_router(*cpu_args)
        assert (logits.cpu() - c_logits).abs().max().item() <= max(tol, 4 * tolerance(dtype)) * scale, "vs CPU"
        assert (z.cpu() - c_z).abs().max().item() <= 4 * tolerance(dtype) * c_z.abs().max().item(), "z vs CPU"
        same = (choice.cpu() == c_choice).double().mean().item()
        assert same == 1.0 if dtype == torch.float32 else same >= 0.9, f"choices agree with the CPU on {same:.1%}"


@pytest.mark.parametrize("eda", [True, False], ids=["eda", "first_layer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [1, 7, 64, 1000, 16384])
def test_matches_reference(T, dtype, eda):
    x, w, bias = _inputs(T, dtype=dtype, seed=T, eda=eda)
    with torch.no_grad():
        got = zaya_rt.ops.zaya_router(*_args(x, w, bias))
    _check(got, x, w, bias, dtype, cpu=T <= 1000)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fused_down", [True, False], ids=["router_down_kernel", "torch_down"])
def test_both_down_projection_paths(monkeypatch, dtype, fused_down):
    """Each path at sizes the default threshold would send the other way, and odd shapes (R not a multiple of the
    vector width or the tile, C > R, many classes)."""
    monkeypatch.setattr(router_op, "_GPU_FUSED_DOWN_MAX_TOKENS", 1 << 30 if fused_down else 0)
    shapes = [(300, 2048, 256, 16), (5, 48, 20, 5), (33, 40, 40, 256)]
    if torch.version.hip is None:  # R = 1024 needs more than CDNA's 64 KiB of LDS per block
        shapes.append((17, 512, 1024, 16))
    for T, D, R, E in shapes:
        x, w, bias = _inputs(T, D, R, E, dtype=dtype, seed=T + R)
        with torch.no_grad():
            got = zaya_rt.ops.zaya_router(*_args(x, w, bias))
        _check(got, x, w, bias, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_and_misaligned_inputs(dtype):
    """x rows with an odd stride and start (scalar loads), x with a non-unit inner stride (the op copies), a bf16
    z_prev, weights that are offset views (not 16-byte aligned)."""
    for T in (3, 100):
        x, w, bias = _inputs(T, D=512, R=64, dtype=dtype, seed=T)
        wide = torch.randn(T, 2 * 512 + 3, device="cuda").to(dtype)
        wide[:, 1:513] = x
        w["z_prev"] = w["z_prev"].to(torch.bfloat16)
        for name in ("fc1_w", "fc2_w"):
            flat = torch.zeros(w[name].numel() + 1, device="cuda", dtype=dtype)
            flat[1:] = w[name].flatten()
            w[name] = flat[1:].view_as(w[name])
        for xv in (wide[:, 1:513], x.T.contiguous().T):
            with torch.no_grad():
                got = zaya_rt.ops.zaya_router(*_args(xv, w, bias))
            _check(got, x, w, bias, dtype)


def test_biases_flip_the_choice():
    """A dominant balancing bias picks its class for every token (skip: gate 0); equal scores go to the lowest
    index like torch.argmax; moderate biases give exactly the reference's choices in fp32."""
    x, w, bias = _inputs(300, dtype=torch.float32, seed=3)
    for target in (16, 4):
        b = torch.zeros(17, device="cuda")
        b[target] = 10.0
        logits, gate, choice, _ = zaya_rt.ops.zaya_router(*_args(x, w, b))
        assert (choice == target).all()
        if target == 16:
            assert (gate == 0).all()
        else:
            torch.testing.assert_close(gate, logits.softmax(-1)[:, target], rtol=1e-5, atol=1e-6)
    b = torch.zeros(17, device="cuda")
    b[3] = b[9] = 1e30
    assert (zaya_rt.ops.zaya_router(*_args(x, w, b))[2] == 3).all()
    seen = set()
    for shift in (0.0, 0.3, -0.3):
        b = bias.clone()
        b[-1] += shift
        got = zaya_rt.ops.zaya_router(*_args(x, w, b))
        assert torch.equal(got[2], _reference64(x, w, b)[2])
        seen.update(got[2].tolist())
    assert 16 in seen and len(seen) >= 3


@pytest.mark.parametrize("T", [5, 200])
def test_writes_every_output(T):
    """Called through _C with NaN-poisoned outputs: every logit, gate, choice and z entry gets written."""
    x, w, bias = _inputs(T, D=256, R=64, E=7, dtype=torch.bfloat16, seed=T)
    R, C = 64, 8
    logits = torch.full((T, C), float("nan"), device="cuda")
    gate = torch.full((T,), float("nan"), device="cuda")
    choice = torch.full((T,), -1, dtype=torch.int64, device="cuda")
    z = torch.full((T, R), float("nan"), device="cuda")
    names = ("down_w", "down_b", "eda_scale", "norm_w", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w")
    p = zaya_router_params(x, w["z_prev"], *(w[n] for n in names), bias, 1e-5, logits, gate, choice, z)
    _C.zaya_router(p, *device_args(x))
    torch.cuda.synchronize()
    _check((logits, gate, choice, z), x, w, bias, torch.bfloat16)


@pytest.mark.parametrize("T", [16, 1000])
def test_cuda_graph_capture_and_replay(T):
    """No host sync, no host-side sizes: the whole op (the torch GEMM included at large T) captures into a graph,
    and replays with new tokens give what eager calls give."""
    x, w, bias = _inputs(T, dtype=torch.bfloat16, seed=1)
    args = _args(x, w, bias)

    def step():
        return zaya_rt.ops.zaya_router(*args)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        captured = step()
    for trial in range(3):
        fresh_x, fresh_w, _ = _inputs(T, dtype=torch.bfloat16, seed=10 + trial)
        x.copy_(fresh_x)
        w["z_prev"].copy_(fresh_w["z_prev"])
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            eager = step()
        if T <= router_op._GPU_FUSED_DOWN_MAX_TOKENS:  # only our kernels: the same bits
            for c, e in zip(captured, eager):
                assert torch.equal(c, e), f"graph replay {trial} differs from eager"
        else:  # cuBLAS may pick another algorithm outside capture: equal up to a rounding step of z0
            torch.testing.assert_close(captured[0], eager[0], rtol=0, atol=0.05 * eager[0].abs().max().item())
            assert (captured[2] == eager[2]).double().mean().item() >= 0.99


def test_runs_on_the_current_stream():
    x, w, bias = _inputs(300, dtype=torch.bfloat16, seed=2)
    with torch.no_grad():
        want = zaya_rt.ops.zaya_router(*_args(x, w, bias))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(1_000_000)  # the op must queue behind this, not run on the default stream
            got = zaya_rt.ops.zaya_router(*_args(x, w, bias))
        torch.cuda.current_stream().wait_stream(side)
    for g, e in zip(got, want):
        assert torch.equal(g, e)


def test_gradients_on_gpu():
    """The hand-written backward (torch ops) runs on the GPU's forward outputs; fp32 gradients match float64."""
    x, w, bias = _inputs(40, D=256, R=64, dtype=torch.float32, seed=4)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in w.items()}
    xg = x.detach().clone().requires_grad_()
    logits, gate, _, z = zaya_rt.ops.zaya_router(*_args(xg, leaves, bias))
    g = [torch.randn_like(t) for t in (logits, gate, z)]
    torch.autograd.backward([logits, gate, z], g)
    l64 = {k: v.detach().double().requires_grad_() for k, v in w.items()}
    x64 = x.detach().double().requires_grad_()
    r_logits, r_gate, _, r_z = zaya_rt.ops.zaya_router(*_args(x64, l64, bias))
    torch.autograd.backward([r_logits, r_gate, r_z], [t.double() for t in g])
    for name in ("down_w", "fc1_w", "fc2_w", "out_w", "norm_w", "eda_scale", "z_prev"):
        got, want = leaves[name].grad.double(), l64[name].grad
        err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        assert err <= 1e-4, f"grad {name}: {err:.3g}"


def test_router_width_beyond_shared_memory_is_a_clear_error():
    x, w, bias = _inputs(4, D=64, R=4096, E=3, dtype=torch.float32, seed=0)
    with pytest.raises(RuntimeError, match="shared memory"):
        zaya_rt.ops.zaya_router(*_args(x, w, bias))


def test_zero_tokens():
    x, w, bias = _inputs(0, dtype=torch.bfloat16, seed=0)
    logits, gate, choice, z = zaya_rt.ops.zaya_router(*_args(x, w, bias))
    assert logits.shape == (0, 17) and gate.shape == (0,) and choice.shape == (0,) and z.shape == (0, 256)


@pytest.mark.parametrize("T", [9, 100])
def test_opcheck_and_compile_on_gpu(T):
    x, w, bias = _inputs(T, D=128, R=32, E=5, dtype=torch.float32, seed=T)
    leaves = {k: v.requires_grad_() for k, v in w.items()}
    args = _args(x.requires_grad_(), leaves, bias)
    torch.library.opcheck(torch.ops.zaya_rt.zaya_router, args)

    def fn(*a):
        logits, gate, choice, z = zaya_rt.ops.zaya_router(*a)
        return logits.sum() + gate.sum() + z.sum() + choice.sum()

    assert_compiles_like_eager(fn, *args)

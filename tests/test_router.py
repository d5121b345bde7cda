"""zaya_router vs transformers' ZayaRouter and the float64 reference (zaya_rt.ref.zaya_router, gradients by
autograd through it): forward, gradients, the hand-written backward's formulas (gradcheck), opcheck,
torch.compile and bad inputs.

Tolerance for bf16/fp16 (flash-attention's rule, conftest.assert_close_to_peer): the kernel's max error against
float64 is at most twice that of the reference run in the kernel's dtype, plus one ulp of the scale."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import zaya_rt
from conftest import assert_close_to_peer, assert_compiles_like_eager, assert_rejects, tolerance
from zaya_rt import ref
from zaya_rt.ops._lib import set_workspace
from zaya_rt.ops.router import zaya_router_params


def _weights(D=48, R=20, E=5, dtype=torch.float32, seed=0, eda=True, grad=False):
    gen = torch.Generator().manual_seed(seed)
    C = E + 1
    mk = lambda *shape, scale=0.3, shift=0.0: (shift + scale * torch.randn(*shape, generator=gen)).to(dtype)  # noqa: E731
    w = dict(
        down_w=mk(R, D, scale=D**-0.5), down_b=mk(R, scale=0.1), eda_scale=mk(R, shift=1.0, scale=0.2) if eda else None,
        norm_w=mk(R, shift=1.0, scale=0.2), fc1_w=mk(R, R, scale=R**-0.5), fc1_b=mk(R, scale=0.1),
        fc2_w=mk(R, R, scale=R**-0.5), fc2_b=mk(R, scale=0.1), out_w=mk(C, R, scale=1.5),
    )
    if grad:
        for t in w.values():
            if t is not None:
                t.requires_grad_()
    bias = 0.05 * torch.randn(C, generator=gen)
    return w, bias


def _ref(x, z_prev, w, bias, dtype, eps=1e-5):
    """ref.zaya_router with x, z_prev and the weights cast to dtype (float64: the oracle; the kernel's dtype: the
    same-precision peer); the balancing bias stays float32."""
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return ref.zaya_router(cast(x), cast(z_prev), *(cast(w[k]) for k in _WEIGHTS), bias, eps)


_WEIGHTS = ("down_w", "down_b", "eda_scale", "norm_w", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w")


def _call(x, z_prev, w, bias, eps=1e-5, path="op"):
    """The router through zaya_rt.ops.zaya_router (path "op": for bf16/fp32 on the CPU with a gradient wanted, the
    training form), torch.ops.zaya_rt.zaya_router itself (path "recompute": the fused kernel, whose backward
    recomputes the MLP) or torch.ops.zaya_rt.zaya_router_train (path "train", any dtype)."""
    args = (x, z_prev, w["down_w"], w["down_b"], w["eda_scale"], w["norm_w"], w["fc1_w"], w["fc1_b"], w["fc2_w"],
            w["fc2_b"], w["out_w"], bias, eps)
    if path == "train":
        return torch.ops.zaya_rt.zaya_router_train(*args)[:4]
    return (zaya_rt.ops.zaya_router if path == "op" else torch.ops.zaya_rt.zaya_router)(*args)


PATHS = pytest.mark.parametrize("path", ["op", "recompute", "train"])


@pytest.mark.parametrize("eda", [False, True])
def test_matches_transformers_router(eda):
    hf = pytest.importorskip("transformers.models.zaya.modeling_zaya")
    from hf_helpers import hf_config

    cfg = hf_config(hidden_size=48, router_hidden_size=20, num_experts=5)
    router = hf.ZayaRouter(cfg, layer_idx=1 if eda else 0)
    w, bias = _weights(eda=eda, seed=3)
    with torch.no_grad():
        router.down_proj.weight.copy_(w["down_w"])
        router.down_proj.bias.copy_(w["down_b"])
        if eda:
            router.router_states_scale.copy_(w["eda_scale"])
        mlp = router.router_mlp
        mlp.norm.weight.copy_(w["norm_w"])
        for name in ("fc1", "fc2"):
            getattr(mlp, name).weight.copy_(w[f"{name}_w"])
            getattr(mlp, name).bias.copy_(w[f"{name}_b"])
        mlp.out_proj.weight.copy_(w["out_w"])
    gen = torch.Generator().manual_seed(11)  # fixed inputs: the choice checks below need the skip class to occur
    x = torch.randn(3, 17, 48, generator=gen)
    z_prev = torch.randn(3, 17, 20, generator=gen) if eda else None
    choices_seen = set()
    for shift in (0.0, 0.3, -0.3):  # balancing biases that move the choice, the skip class's included
        b = bias.clone()
        b[-1] += shift
        router.balancing_biases.copy_(b)
        with torch.no_grad():
            h_logits, h_probs, h_index, h_next = router(x, z_prev)
            logits, gate, choice, z = _call(x.view(-1, 48), None if z_prev is None else z_prev.view(-1, 20), w, b)
        skip = choice == 5
        assert torch.equal(torch.where(skip, 0, choice), h_index.view(-1))
        torch.testing.assert_close(logits, h_logits, rtol=1e-5, atol=1e-5 * h_logits.abs().max().item())
        torch.testing.assert_close(gate, h_probs.view(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z, h_next.reshape(-1, 20), rtol=1e-5, atol=1e-6)
        choices_seen.update(choice.tolist())
    assert 5 in choices_seen and len(choices_seen) >= 3


@PATHS
@pytest.mark.parametrize("eda", [False, True])
def test_handwritten_backward_gradcheck_float64(eda, path):
    """The float64 op runs the reference forward and the hand-written backward every dtype uses: this checks the
    backward's formulas against finite differences (the kernel itself is checked below)."""
    w, bias = _weights(D=6, R=5, E=3, dtype=torch.float64, eda=eda, grad=True, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    z_prev = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True) if eda else None

    def fn(x, z_prev, *weights):
        ws = dict(zip([k for k in w if w[k] is not None], weights))
        ws.setdefault("eda_scale", None)
        logits, gate, _, z = _call(x, z_prev, ws, bias, path=path)
        return logits, gate, z

    inputs = (x, z_prev, *[t for t in w.values() if t is not None])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def _assert_clear_choices_agree(choice, r_logits, r_choice, bias, margin):
    """The kernel's choice equals the float64 reference's wherever the reference's best score (p + bias) leads
    the runner-up by more than `margin`, and most tokens have such a lead (near-ties may go either way)."""
    top2 = (torch.softmax(r_logits, -1) + bias.double()).topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > margin
    assert clear.float().mean().item() > 0.5
    assert torch.equal(choice[clear], r_choice[clear])


def _gate_at(logits, choice):
    """p[choice] from logits (0 for the skip class): the gate as a function of the logits, for a given choice."""
    return logits.softmax(-1).gather(-1, choice[:, None]).squeeze(-1).masked_fill(choice == logits.shape[-1] - 1, 0)


@PATHS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 16, 300])
def test_kernel_matches_float64_reference_with_gradients(dtype, T, path):
    """Forward and every gradient of the op (the training form or the kernel with its recomputing backward) vs
    autograd through ref.zaya_router in float64; in bf16 within twice the error of ref.zaya_router run in bf16."""
    w, bias = _weights(dtype=dtype, grad=True, seed=T)
    gen = torch.Generator().manual_seed(T)
    x = torch.randn(T, 48, generator=gen).to(dtype).requires_grad_()
    z_prev = torch.randn(T, 20, generator=gen).requires_grad_()
    logits, gate, choice, z = _call(x, z_prev, w, bias, path=path)
    leaves = {"x": x, "z_prev": z_prev, **w}
    refs = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    peers = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    r_logits, _, r_choice, r_z = _ref(refs["x"], refs["z_prev"], refs, bias, torch.float64)
    p_logits, _, _, p_z = _ref(peers["x"], peers["z_prev"], peers, bias, dtype)
    if dtype == torch.float32:
        assert (logits.double() - r_logits).abs().max().item() <= 1e-5 * r_logits.abs().max().item()
    else:
        assert_close_to_peer(logits, r_logits.detach(), p_logits.detach(), "logits", dtype=dtype)
        assert_close_to_peer(z, r_z.detach(), p_z.detach(), "z", dtype=dtype)
    _assert_clear_choices_agree(choice, r_logits.detach(), r_choice, bias, 1e-6 if dtype == torch.float32 else 5e-2)
    g = [torch.randn(t.shape, generator=gen) for t in (logits, gate, z)]
    torch.autograd.backward([logits, gate, z], [t.to(o.dtype) for t, o in zip(g, (logits, gate, z))])
    # gradients through the choices the kernel made, so bf16 rounding of a near-tie cannot diverge them
    torch.autograd.backward([r_logits, _gate_at(r_logits, choice), r_z], [t.double() for t in g])
    torch.autograd.backward([p_logits, _gate_at(p_logits, choice), p_z],
                            [t.to(o.dtype) for t, o in zip(g, (p_logits, p_logits, p_z))])
    for name in ("x", "z_prev", "down_w", "down_b", "eda_scale", "norm_w", "fc1_w", "fc1_b", "fc2_w", "fc2_b",
                 "out_w"):
        got, want = leaves[name].grad, refs[name].grad
        if dtype == torch.float32:
            err = (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
            assert err <= 1e-4, f"grad {name}: {err}"
        else:
            assert_close_to_peer(got, want, peers[name].grad, f"grad {name}", dtype=dtype)


def test_opcheck_and_compile():
    w, bias = _weights(grad=True)
    x = torch.randn(9, 48, requires_grad=True)
    z_prev = torch.randn(9, 20, requires_grad=True)
    args = (x, z_prev, w["down_w"], w["down_b"], w["eda_scale"], w["norm_w"], w["fc1_w"], w["fc1_b"], w["fc2_w"],
            w["fc2_b"], w["out_w"], bias, 1e-5)
    first = (x, None, w["down_w"], w["down_b"], None, *args[5:])
    for op in (torch.ops.zaya_rt.zaya_router, torch.ops.zaya_rt.zaya_router_train):
        torch.library.opcheck(op, args)
        torch.library.opcheck(op, first)

    def fn(*a):
        logits, gate, choice, z = zaya_rt.ops.zaya_router(*a)
        return logits.sum() + gate.sum() + z.sum() + choice.sum()

    assert_compiles_like_eager(fn, *args)


def _bad(**change):
    w, bias = _weights()
    base = dict(x=torch.randn(4, 48), z_prev=torch.randn(4, 20), **w, balancing_bias=bias)
    base.update(change)
    names = ("x", "z_prev", "down_w", "down_b", "eda_scale", "norm_w", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w",
             "balancing_bias")
    return tuple(base[n] for n in names) + (1e-5,)


BAD = {
    "x 1-D": (_bad(x=torch.randn(48)), ValueError, "x must have 2"),
    "x int": (_bad(x=torch.ones(4, 48, dtype=torch.int32)), TypeError, "x has dtype int32"),
    "x width": (_bad(x=torch.randn(4, 47)), ValueError, r"down_w has shape \(20, 48\), expected \(20, 47\)"),
    "z_prev rows": (_bad(z_prev=torch.randn(5, 20)), ValueError, r"z_prev has shape \(5, 20\)"),
    "z_prev without eda": (_bad(eda_scale=None), ValueError, "come together"),
    "fc1 shape": (_bad(fc1_w=torch.randn(20, 21)), ValueError, "fc1_w has shape"),
    "weight dtype": (_bad(fc2_b=torch.randn(20, dtype=torch.bfloat16)), TypeError, "fc2_b has dtype"),
    "down_w dtype": (_bad(down_w=torch.randn(20, 48, dtype=torch.bfloat16)), TypeError, "down_w has dtype"),
    "out_w dtype": (_bad(out_w=torch.randn(6, 20, dtype=torch.float16)), TypeError, "out_w has dtype"),
    "eda dtype": (_bad(eda_scale=torch.randn(20, dtype=torch.bfloat16)), TypeError, "eda_scale has dtype"),
    "out_w rows vs bias": (_bad(out_w=torch.randn(7, 20)), ValueError, "balancing_bias has 6 entries for 7"),
    "bias count": (_bad(balancing_bias=torch.zeros(5)), ValueError, "balancing_bias has 5 entries for 6"),
    "bias dtype": (_bad(balancing_bias=torch.zeros(6, dtype=torch.bfloat16)), TypeError, "balancing_bias has dtype"),
    "meta weight": (_bad(norm_w=torch.randn(20, device="meta")), ValueError, "one device"),
    "weight list": (_bad(out_w=[[0.0] * 20] * 6), TypeError, "out_w must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_rejects_bad_input(case):
    assert_rejects(zaya_rt.ops.zaya_router, BAD, case)


@pytest.mark.parametrize("case", ["x width", "z_prev without eda", "weight dtype", "bias count", "meta weight"])
def test_training_form_rejects_bad_input(case):
    """With a gradient wanted the op runs zaya_router_train: the same checks, the same messages."""
    args, exc, pattern = BAD[case]
    args = (args[0].clone().requires_grad_(), *args[1:])
    with pytest.raises(exc, match=pattern):
        zaya_rt.ops.zaya_router(*args)


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_fp16_with_gradients_keeps_the_kernel():
    w, bias = _weights(dtype=torch.float16, grad=True, seed=20)
    x = torch.randn(130, 48).half().requires_grad_()
    with _OpNames() as seen:
        _call(x, torch.randn(130, 20), w, bias)
    assert "zaya_router" in seen.names and "zaya_router_train" not in seen.names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_form_keeps_activations_and_its_backward_recomputes_nothing(dtype):
    """With a gradient wanted (bf16 and fp32 through the op): zaya_router_train runs, its outputs equal the kernel's (logits and z up to the
    rounding order of the products, the same choices where they are clear), and the backward runs no forward
    product again (8 matrix products: 3 for the chain through the MLP, 5 for the x and weight gradients, against
    10 in the recomputing backward). Without a gradient the kernel runs."""
    w, bias = _weights(dtype=dtype, grad=True, seed=21)
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(130, 48, generator=gen).to(dtype).requires_grad_()
    z_prev = torch.randn(130, 20, generator=gen)
    form = "op"
    with _OpNames() as fwd:
        logits, gate, choice, z = _call(x, z_prev, w, bias, path=form)
    assert "zaya_router_train" in fwd.names and "zaya_router" not in fwd.names
    with torch.no_grad(), _OpNames() as plain:
        k_logits, k_gate, k_choice, k_z = _call(x, z_prev, w, bias)
    assert plain.names == ["zaya_router"]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(logits.detach(), k_logits, **tol)
    torch.testing.assert_close(z.detach(), k_z, **tol)
    _assert_clear_choices_agree(choice, k_logits.double(), k_choice, bias, 1e-5 if dtype == torch.float32 else 5e-2)
    products = {}
    for path in (form, "recompute"):
        out = _call(x, z_prev, w, bias, path=path)
        with _OpNames() as bwd:
            torch.autograd.backward([out[0], out[1], out[3]], [torch.ones_like(out[0]), torch.ones_like(out[1]),
                                                               torch.ones_like(out[3])])
        products[path] = sum(n in ("mm", "addmm", "linear") for n in bwd.names)
    assert products == {form: 8, "recompute": 10}


@pytest.mark.parametrize("outputs", [(0,), (1,), (3,), (1, 3)])
def test_training_form_with_gradients_on_some_outputs(outputs):
    """The training form's backward when only some of logits, gate and z get a gradient (it takes the missing
    ones as None, not as zero tensors): every input gradient equals float64 autograd through ref.zaya_router
    with the same outputs used."""
    w, bias = _weights(grad=True, seed=31)
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(40, 48, generator=gen).requires_grad_()
    z_prev = torch.randn(40, 20, generator=gen).requires_grad_()
    out = _call(x, z_prev, w, bias, path="train")
    leaves = {"x": x, "z_prev": z_prev, **w}
    refs = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    r_logits, _, _, r_z = _ref(refs["x"], refs["z_prev"], refs, bias, torch.float64)
    r_out = (r_logits, _gate_at(r_logits, out[2]), None, r_z)
    g = [torch.randn(out[i].shape, generator=gen, dtype=torch.float64) for i in outputs]
    torch.autograd.backward([out[i] for i in outputs], [t.float() for t in g])
    torch.autograd.backward([r_out[i] for i in outputs], g)
    for name, t in leaves.items():
        want = refs[name].grad
        if want is None:  # z_prev and eda_scale only reach z's and the MLP's gradients through z
            assert t.grad is None or not t.grad.any(), name
            continue
        err = (t.grad.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        assert err <= 1e-4, f"grad {name} from outputs {outputs}: {err}"


def test_c_api_rejects_a_precomputed_down_projection_on_cpu():
    """z0 (x W_down^T + b computed elsewhere) is a GPU-kernel input; the CPU kernel refuses it by name."""
    from zaya_rt import _C

    w, bias = _weights()
    x = torch.randn(4, 48)
    z0 = torch.randn(4, 20)
    out = [torch.empty(4, 6), torch.empty(4), torch.empty(4, dtype=torch.int64), torch.empty(4, 20)]
    p = _c_router_params(x, None, dict(w, eda_scale=None), bias, 1e-5, out, z0)
    ws = torch.empty(_C.zaya_router_workspace(p, 0), dtype=torch.uint8)
    with pytest.raises(ValueError, match="z0"):
        _C.zaya_router(set_workspace(p, ws), 0, 0, 0)


def _c_router_params(x, z_prev, w, bias, eps, out, z0=None):
    names = ("down_w", "down_b", "eda_scale", "norm_w", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w")
    return zaya_router_params(x, z_prev, *(w[n] for n in names), bias, eps, *out, z0)


def _c_router_poisoned(x, z_prev, w, bias, eps=1e-5):
    """_C.zaya_router on the CPU with NaN / -7 poisoned outputs, so every entry the kernel skips shows."""
    from zaya_rt import _C

    T, D = x.shape
    R, C = w["down_w"].shape[0], w["out_w"].shape[0]
    logits, gate, z = torch.full((T, C), float("nan")), torch.full((T,), float("nan")), torch.full((T, R), float("nan"))
    choice = torch.full((T,), -7, dtype=torch.int64)
    p = _c_router_params(x, z_prev, w, bias, eps, (logits, gate, choice, z))
    ws = torch.empty(_C.zaya_router_workspace(p, 0), dtype=torch.uint8)
    _C.zaya_router(set_workspace(p, ws), 0, 0, 0)
    return logits, gate, choice, z


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T", [1, 4, 5, 8, 9, 12, 13, 16, 17, 45, 64, 65, 96, 97, 1000])
@pytest.mark.parametrize("eda", [False, True])
@pytest.mark.parametrize("D", [70, 301])
def test_token_blocks_cover_every_output_and_match_reference(dtype, T, eda, D):
    """Every CPU path (up to 64 tokens, 96 for fp32, in chunks of 16: dot products, or for fp32 chunks of 13
    tokens or more the tokens as vector lanes; token blocks beyond) with ragged chunks and blocks, K passes, R and
    C that fill no whole column panel, a strided x and a z_prev in another dtype: every poisoned output is written
    and matches float64."""
    R, E = 40, 2
    w, bias = _weights(D=D, R=R, E=E, dtype=dtype, seed=T, eda=eda)
    gen = torch.Generator().manual_seed(1000 * T + D)
    x = torch.randn(T, D + 9, generator=gen).to(dtype)[:, 3:D + 3]
    z_prev = torch.randn(T, R, generator=gen).to(torch.bfloat16 if dtype == torch.float32 else torch.float32)
    z_prev = z_prev if eda else None
    logits, gate, choice, z = _c_router_poisoned(x, z_prev, w, bias)
    assert (choice >= 0).all() and (choice <= E).all()
    for t in (logits, gate, z):
        assert torch.isfinite(t).all()
    r_logits, r_gate, r_choice, r_z = _ref(x, z_prev, w, bias, torch.float64)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    if dtype == torch.float32:
        assert (z.double() - r_z).abs().max().item() <= tol * r_z.abs().max().item()
        assert (logits.double() - r_logits).abs().max().item() <= tol * r_logits.abs().max().item()
    else:
        p_logits, _, _, p_z = _ref(x, None if z_prev is None else z_prev.to(dtype), w, bias, dtype)
        assert_close_to_peer(z, r_z, p_z, "z", dtype=dtype)
        assert_close_to_peer(logits, r_logits, p_logits, "logits", dtype=dtype)
    _assert_clear_choices_agree(choice, r_logits, r_choice, bias, 1e-6 if dtype == torch.float32 else tol)
    same = choice == r_choice
    if dtype == torch.float32:
        torch.testing.assert_close(gate[same].double(), r_gate[same], atol=tol, rtol=tol)
    else:  # half-precision logits are rounded, which moves p by more than tol; check the gate against them:
        # the kernel rounds p to the dtype, so one ulp of p (the gate was within 3e-2 absolute, a bias's size)
        p = torch.softmax(logits.double(), -1).gather(-1, choice[:, None])[:, 0]
        torch.testing.assert_close(gate.double(), p.masked_fill(choice == E, 0.0), atol=1e-6,
                                   rtol=torch.finfo(dtype).eps)


def test_token_blocks_are_batch_and_thread_invariant():
    """A token's result does not depend on which block, batch or thread count computes it (bitwise)."""
    w, bias = _weights(D=300, R=72, E=7, seed=5)
    x, z_prev = torch.randn(500, 300), torch.randn(500, 72)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _call(x, z_prev, w, bias)
    finally:
        torch.set_num_threads(threads)
    full = _call(x, z_prev, w, bias)
    part = _call(x[123:230], z_prev[123:230], w, bias)
    for a, b, c in zip(full, one, part):
        assert torch.equal(a, b)
        assert torch.equal(a[123:230], c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_few_token_path_is_thread_invariant_and_lanes_batch_invariant(dtype):
    """Up to 64 tokens each thread owns whole output columns, so the thread count changes no bit; in the fp32
    lanes path (chunks of 13-16 tokens) a token's result does not depend on the others either."""
    w, bias = _weights(D=300, R=72, E=7, seed=6, dtype=dtype)
    x, z_prev = torch.randn(16, 300).to(dtype), torch.randn(16, 72)
    many = torch.randn(64, 300).to(dtype), torch.randn(64, 72)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _call(x, z_prev, w, bias)
        many_one = _call(*many, w, bias)
    finally:
        torch.set_num_threads(threads)
    full = _call(x, z_prev, w, bias)
    for a, b in zip(full, one):
        assert torch.equal(a, b)
    for a, b in zip(_call(*many, w, bias), many_one):
        assert torch.equal(a, b)
    if dtype == torch.float32:
        part = _call(x[2:15], z_prev[2:15], w, bias)
        for a, c in zip(full, part):
            assert torch.equal(a[2:15], c)


def _reference_nan_aware(x, z_prev, w, bias):
    """ref.zaya_router in float64 on the same inputs (its torch.argmax picks the first NaN, else the first max)."""
    up = lambda t: t.double() if t is not None else None  # noqa: E731
    return zaya_rt.ref.zaya_router(up(x), up(z_prev), *[up(w[k]) for k in ("down_w", "down_b", "eda_scale", "norm_w",
                                   "fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w")], bias.double(), 1e-5)


# T: the few-token lanes path, the token-block path (> 96 tokens); E: the vector softmax (C <= 256) and the scalar one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T,E", [(5, 7), (120, 7), (3, 300)])
def test_non_finite_inputs_and_biases_follow_the_reference(dtype, T, E):
    """NaN or inf in x give NaN logits and a NaN gate on the reference's choice (no real expert with gate 0);
    an all -inf bias gives class 0 with gate p[0]; a NaN bias entry wins its class, as torch.argmax does."""
    w, bias = _weights(D=32, R=16, E=E, dtype=dtype, seed=T)
    x = torch.randn(T, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    z_prev = torch.randn(T, 16)
    x[0, 3], x[T - 1, 0] = float("nan"), float("inf")
    cases = [(x, bias), (x.nan_to_num(0.0), torch.full_like(bias, -float("inf")))]
    for j in (2, E):  # an expert and the skip class
        b = bias.clone()
        b[j] = float("nan")
        cases.append((x.nan_to_num(0.0), b))
    for xi, b in cases:
        logits, gate, choice, _ = _call(xi, z_prev, w, b)
        r_logits, r_gate, r_choice, _ = _reference_nan_aware(xi, z_prev, w, b)
        assert torch.equal(logits.isnan(), r_logits.isnan())
        assert torch.equal(gate.isnan(), r_gate.isnan())
        finite = ~r_gate.isnan()
        nan_rows = r_logits.isnan().any(-1) | b.isnan().any() | (b == -float("inf")).all()
        assert torch.equal(choice[nan_rows], r_choice[nan_rows]), "choice where a NaN or -inf decides it"
        p = torch.softmax(logits.double(), -1).gather(-1, choice[:, None]).squeeze(-1).masked_fill(choice == E, 0)
        assert (gate.double()[finite] - p[finite]).abs().max().item() <= 4 * tolerance(dtype)


def test_empty_batch_with_z_prev_is_an_empty_answer():
    """T = 0 with an (empty, address-less) z_prev: empty outputs, not a 'z_prev and eda_scale' complaint."""
    w, bias = _weights()
    logits, gate, choice, z = _call(torch.randn(0, 48), torch.randn(0, 20), w, bias)
    assert logits.shape == (0, 6) and gate.shape == (0,) and choice.shape == (0,) and z.shape == (0, 20)

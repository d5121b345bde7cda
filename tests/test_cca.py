"""cca_prep numerics: the CPU kernel vs the float64 reference (zaya_rt.ref.cca_prep) over ragged packed batches,
with and without incoming state, chunked = one pass, gradients, and NaN-poisoned outputs and workspace.

Tolerance (flash-attention's rule, conftest.assert_close_to_peer): the kernel's max error against float64 may be
at most 2x that of the same computation composed of PyTorch ops in the same dtype (ref.cca_prep run in fp32 /
bf16), plus a floor of one ulp (16 for float32; 4 ulps for gradients) of the scale (max |want|, at least 1)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zaya_rt
from cca_helpers import make_inputs, max_err, reference
from conftest import assert_close_to_peer, poisoned_empty

NAMES = ("q", "k", "v", "conv_state", "v_state")


def _run(args, attrs):
    return zaya_rt.ops.cca_prep(**args, **attrs)


def _check_forward(args, attrs, dtype):
    out = _run(args, attrs)
    want = reference(args, attrs, torch.float64, eps_dtype=dtype)
    peer = reference(args, attrs, dtype)
    for name, o, w, p in zip(NAMES, out, want, peer):
        assert o.shape == w.shape, name
        state_dtype = dtype if args["conv_state"] is None else args["conv_state"].dtype
        assert o.dtype == (dtype if name in ("q", "k", "v") else state_dtype), name
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        assert_close_to_peer(o, w, p, name, scale=scale, dtype=dtype)
    return out


@settings(max_examples=30, deadline=None)
@given(
    lens=st.lists(st.sampled_from([0, 1, 2, 3, 5, 9, 17, 40, 61]), min_size=1, max_size=5),
    hk=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2, 4]),
    d=st.sampled_from([32, 64, 128]),
    k0=st.sampled_from([1, 2, 3]),
    k1=st.sampled_from([1, 2, 3]),
    rd_frac=st.sampled_from([0.25, 0.5, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    state=st.booleans(),
    sliced=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_forward_matches_reference(lens, hk, group, d, k0, k1, rd_frac, dtype, state, sliced, seed):
    rd = max(2, int(d * rd_frac) // 2 * 2)
    args, attrs = make_inputs(lens, Hq=hk * group, Hk=hk, d=d, k0=k0, k1=k1, rd=rd, dtype=dtype, state=state,
                              sliced=sliced, seed=seed)
    _check_forward(args, attrs, dtype)


def test_forward_every_isa(cpu_isa):
    for lens in ([7, 0, 30, 1], [3, 1]):  # GEMM path and decode-sized dot path
        args, attrs = make_inputs(lens, Hq=2, Hk=1, d=32, k0=2, k1=3, dtype=torch.float32, state=True, seed=1)
        _check_forward(args, attrs, torch.float32)


def test_fp32_weights_with_bf16_activations():
    args, attrs = make_inputs([20, 3], dtype=torch.bfloat16, w_dtype=torch.float32, seed=4)
    out = _run(args, attrs)
    want = reference(args, attrs, torch.float64, eps_dtype=torch.bfloat16)
    peer = reference(args, attrs, torch.bfloat16)  # weights rounded too: no tighter yardstick composes in bf16
    for name, o, w, p in zip(NAMES, out[:3], want[:3], peer[:3]):
        assert_close_to_peer(o, w, p, name, scale=max(1.0, w.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [0, 1, 2, 5, 33])
def test_chunked_equals_one_pass(dtype, split):
    """Two chunks with the state carried (the second starting where the first ended) equal one pass."""
    lens = [40, 7, 3]
    args, attrs = make_inputs(lens, Hq=4, Hk=2, d=64, k0=3, k1=2, dtype=dtype, state=True, seed=7)
    full = _run(args, attrs)
    first = [min(split, n) for n in lens]
    second = [n - f for n, f in zip(lens, first)]
    cu = args["cu_seqlens"].tolist()
    idx1 = torch.cat([torch.arange(cu[b], cu[b] + first[b]) for b in range(3)])
    idx2 = torch.cat([torch.arange(cu[b] + first[b], cu[b + 1]) for b in range(3)])

    def part(idx, n, cs, vs):
        a = dict(args)
        for name in ("qp", "kp", "v_cur", "v_del", "positions"):
            a[name] = args[name][idx]
        a["cu_seqlens"] = torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()], dtype=torch.int32)
        a["conv_state"], a["v_state"] = cs, vs
        return _run(a, attrs)

    q1, k1_, v1, cs1, vs1 = part(idx1, first, args["conv_state"], args["v_state"])
    q2, k2, v2, cs2, vs2 = part(idx2, second, cs1, vs1)
    # The dot (decode-sized) and GEMM paths sum in different orders: bf16 outputs may differ by one rounding.
    tol = 1e-5 if dtype == torch.float32 else 2**-8
    for got, want in ((torch.cat([q1, q2])[torch.argsort(torch.cat([idx1, idx2]))], full[0]),
                      (torch.cat([k1_, k2])[torch.argsort(torch.cat([idx1, idx2]))], full[1]),
                      (torch.cat([v1, v2])[torch.argsort(torch.cat([idx1, idx2]))], full[2]),
                      (cs2, full[3]), (vs2, full[4])):
        assert max_err(got, want) <= tol * max(1.0, want.abs().max().item())


def test_empty_batch_and_short_sequences():
    args, attrs = make_inputs([0, 0], state=True, seed=3)
    q, k, v, cs, vs = _run(args, attrs)
    assert q.shape[0] == 0 and torch.equal(cs, args["conv_state"]) and torch.equal(vs, args["v_state"])
    args, attrs = make_inputs([1, 0, 2], k0=3, k1=3, state=True, seed=5)  # T_b < K = 4
    _check_forward(args, attrs, torch.float32)


def _grad_inputs(args):
    return {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def _grads(args, attrs, fn, gouts):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in _grad_inputs(args).items()}
    a = dict(args, **leaves)
    out = fn(a, attrs)
    torch.autograd.backward([o for o, g in zip(out, gouts) if g is not None], [g for g in gouts if g is not None])
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [
    dict(lens=[5, 0, 70, 1], state=True, k0=2, k1=2, d=64, Hq=4, Hk=2),
    dict(lens=[33], state=False, k0=3, k1=1, d=32, Hq=2, Hk=2),
    dict(lens=[2, 19], state=True, k0=1, k1=3, d=128, Hq=4, Hk=1),
    dict(lens=[3, 0], state=True, k0=1, k1=1, d=32, Hq=2, Hk=1),
    # d not a multiple of 16 or 12: weight-gradient lanes that straddle two window shifts, a partial row panel
    dict(lens=[7, 30], state=True, k0=2, k1=2, d=40, Hq=4, Hk=2),
])
def test_backward_matches_reference(dtype, case):
    case = dict(case)
    lens = case.pop("lens")
    args, attrs = make_inputs(lens, dtype=dtype, seed=11, sliced=True, **case)
    out = _run(args, attrs)
    gen = torch.Generator().manual_seed(2)
    gouts = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out]
    if case.get("state") is False:
        gouts[3] = None
    got = _grads(args, attrs, _run, [None if g is None else g.to(o.dtype) for g, o in zip(gouts, out)])
    ref64 = lambda a, at: reference(a, at, torch.float64, eps_dtype=dtype)  # noqa: E731
    want = _grads({k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                   for k, v in args.items()}, attrs, ref64, gouts)
    peer_fn = lambda a, at: reference(a, at, dtype)  # noqa: E731
    peer = _grads(args, attrs, peer_fn, [None if g is None else g.to(dtype) for g in gouts])
    for name, g in got.items():
        assert g is not None and g.dtype == args[name].dtype, name
        w, p = want[name], peer[name]
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        floor = 4 * (2e-6 if dtype == torch.float32 else torch.finfo(dtype).eps)
        assert_close_to_peer(g, w, p, f"grad {name}", scale=scale, floor=floor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_every_isa(cpu_isa, dtype):
    """The backward kernel of each CPU build (the AVX-512 packing and its portable fallback) on the case with
    straddling weight-gradient lanes and a partial row panel, and on a longer-window one."""
    test_backward_matches_reference(dtype, dict(lens=[7, 30], state=True, k0=2, k1=2, d=40, Hq=4, Hk=2))
    test_backward_matches_reference(dtype, dict(lens=[2, 19], state=True, k0=1, k1=3, d=128, Hq=4, Hk=1))


def test_float64_path_is_the_differentiable_reference():
    """float64 cca_prep runs zaya_rt.ref.cca_prep (forward, and autograd through it for the backward): this
    gradcheck covers that op path's wiring, not the kernel, whose fused backward test_backward_matches_reference
    checks against float64."""
    args, attrs = make_inputs([3, 0, 4], Hq=2, Hk=1, d=4, k0=2, k1=2, rd=2, dtype=torch.float64, seed=9)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]

    def fn(*xs):
        return zaya_rt.ops.cca_prep(**dict(args, **dict(zip(names, xs))), **attrs)

    xs = [args[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_poisoned_outputs_and_workspace():
    """Every output element and gradient is written, and nothing reads uninitialised workspace."""
    from zaya_rt.ops import cca as cca_ops

    args, attrs = make_inputs([9, 0, 50, 1], Hq=4, Hk=2, d=64, k0=2, k1=3, seed=21)
    clean = _run(args, attrs)
    real_new_empty = torch.Tensor.new_empty
    _poison = lambda t: t.fill_(float("nan")) if t.is_floating_point() else t  # noqa: E731
    try:
        torch.Tensor.new_empty = lambda self, *s, **kw: _poison(real_new_empty(self, *s, **kw))
        with poisoned_empty(cca_ops):
            poisoned = _run(args, attrs)
            leaves = {k: v.detach().clone().requires_grad_() for k, v in _grad_inputs(args).items()}
            out = _run(dict(args, **leaves), attrs)
            torch.autograd.backward(out, [torch.ones_like(o) for o in out])
    finally:
        torch.Tensor.new_empty = real_new_empty
    for a, b in zip(poisoned, clean):
        assert torch.equal(a, b)
    for name, leaf in leaves.items():
        assert torch.isfinite(leaf.grad).all(), name


def test_int32_positions_float16_and_a_single_state():
    """int32 positions, float16 activations, and only one of the two states given (the other starts at zero)."""
    for dtype in (torch.float32, torch.float16):
        args, attrs = make_inputs([20, 0, 3], Hq=4, Hk=2, d=32, dtype=dtype, state=True, seed=13)
        args["positions"] = args["positions"].to(torch.int32)
        _check_forward(args, attrs, dtype)
        for missing in ("conv_state", "v_state"):
            a = dict(args, **{missing: None})
            _check_forward(a, attrs, dtype)

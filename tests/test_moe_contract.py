"""MoE ops as library citizens: opcheck, torch.compile(fullgraph=True) without graph breaks, clear errors."""

import pytest
import torch

import zaya_rt
from conftest import assert_rejects


def _experts(T=9, D=16, I=8, E=3, k=1, dtype=torch.float32, grad=False):
    gen = torch.Generator().manual_seed(0)
    shape = (T,) if k == 1 else (T, k)
    tensors = [
        torch.randn(T, D, generator=gen).to(dtype),
        torch.randint(0, E + 1, shape, generator=gen),
        torch.rand(shape, generator=gen),
        (0.3 * torch.randn(E, 2 * I, D, generator=gen)).to(dtype),
        (0.3 * torch.randn(E, D, I, generator=gen)).to(dtype),
    ]
    if grad:
        for i in (0, 2, 3, 4):
            tensors[i].requires_grad_()
    return tensors


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_moe_experts(k, dtype):
    torch.library.opcheck(torch.ops.zaya_rt.moe_experts, tuple(_experts(k=k, dtype=dtype, grad=True)))


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_moe_experts_keep(k, dtype):
    torch.library.opcheck(torch.ops.zaya_rt.moe_experts_keep, tuple(_experts(k=k, dtype=dtype, grad=True)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_grouped_gemm(dtype):
    a = torch.randn(10, 12, dtype=dtype, requires_grad=True)
    b = torch.randn(3, 5, 12, dtype=dtype, requires_grad=True)
    offsets = torch.tensor([4, 4, 9], dtype=torch.int32)
    torch.library.opcheck(torch.ops.zaya_rt.grouped_gemm, (a, b, offsets))
    torch.library.opcheck(torch.ops.zaya_rt.grouped_gemm_weight_grad, (torch.randn(10, 5, dtype=dtype), a.detach(), offsets))


def test_opcheck_dispatch():
    torch.library.opcheck(torch.ops.zaya_rt.moe_dispatch, (torch.randint(0, 5, (13, 2)), 4))


def test_compile_fullgraph_has_no_graph_break():
    def block(hidden, index, gate, w1, w2):
        offsets, sorted_slots, _ = zaya_rt.ops.moe_dispatch(index, w1.shape[0])
        x = hidden[sorted_slots.long()]
        grouped = zaya_rt.ops.grouped_gemm(x, w1, offsets)
        return zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2).sum() + grouped.sum()

    args = _experts(grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    got.backward()
    grads = [args[i].grad.clone() for i in (0, 2, 3, 4)]
    for i in (0, 2, 3, 4):
        args[i].grad = None
    want = block(*args)
    want.backward()
    torch.testing.assert_close(got, want)
    for g, i in zip(grads, (0, 2, 3, 4)):
        torch.testing.assert_close(g, args[i].grad)


def _bad(**change):
    names = ("hidden", "expert_index", "gate", "gate_up_proj", "down_proj")
    args = dict(zip(names, _experts()))
    args.update(change)
    return tuple(args[n] for n in names)


BAD_EXPERTS = {
    "hidden 1-D": (_bad(hidden=torch.randn(16)), ValueError, "hidden must have 2"),
    "hidden int": (_bad(hidden=torch.ones(9, 16, dtype=torch.int32)), TypeError, "hidden has dtype int32"),
    "hidden float64": (_bad(hidden=torch.randn(9, 16, dtype=torch.float64)), TypeError, "float64"),
    "hidden list": (_bad(hidden=[[0.0] * 16] * 9), TypeError, "hidden must be a torch.Tensor"),
    "index float": (_bad(expert_index=torch.zeros(9)), TypeError, "expert_index has dtype float32"),
    "index rows": (_bad(expert_index=torch.zeros(8, dtype=torch.long)), ValueError, r"expert_index must be \[T=9\]"),
    "index 3-D": (_bad(expert_index=torch.zeros(9, 1, 1, dtype=torch.long)), ValueError, "expert_index must be"),
    "index too big": (_bad(expert_index=torch.full((9,), 7)), ValueError, r"lie in \[0, 3\]"),
    "index negative": (_bad(expert_index=torch.full((9,), -1)), ValueError, r"lie in \[0, 3\]"),
    "gate shape": (_bad(gate=torch.rand(9, 2)), ValueError, "gate has shape"),
    "gate int": (_bad(gate=torch.ones(9, dtype=torch.int64)), TypeError, "gate has dtype int64"),
    "gate_up 2-D": (_bad(gate_up_proj=torch.randn(16, 16)), ValueError, "gate_up_proj must have 3"),
    "gate_up D": (_bad(gate_up_proj=torch.randn(3, 16, 15)), ValueError, r"gate_up_proj must be \[E, 2I, D=16\]"),
    "gate_up odd": (_bad(gate_up_proj=torch.randn(3, 15, 16)), ValueError, "gate_up_proj must be"),
    "down shape": (_bad(down_proj=torch.randn(3, 16, 9)), ValueError, r"down_proj must be \[E=3, D=16, I=8\]"),
    "down experts": (_bad(down_proj=torch.randn(4, 16, 8)), ValueError, "down_proj must be"),
    "weight dtype": (_bad(down_proj=torch.randn(3, 16, 8, dtype=torch.bfloat16)), TypeError, "down_proj has dtype"),
    "meta weight": (_bad(gate_up_proj=torch.randn(3, 16, 16, device="meta")), ValueError, "one device"),
    "no experts": (_bad(gate_up_proj=torch.randn(0, 16, 16), down_proj=torch.randn(0, 16, 8),
                        expert_index=torch.zeros(9, dtype=torch.long)), ValueError, "at least one expert"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPERTS))
def test_moe_experts_rejects_bad_input(case):
    assert_rejects(zaya_rt.ops.moe_experts, BAD_EXPERTS, case)


BAD_GROUPED = {
    "a 3-D": ((torch.randn(2, 3, 4), torch.randn(1, 5, 4), torch.tensor([2], dtype=torch.int32)), ValueError, "a must have 2"),
    "K mismatch": ((torch.randn(6, 4), torch.randn(2, 5, 3), torch.tensor([2, 6], dtype=torch.int32)), ValueError, "K="),
    "offsets int64": ((torch.randn(6, 4), torch.randn(2, 5, 4), torch.tensor([2, 6])), TypeError, "offsets has dtype int64"),
    "offsets count": ((torch.randn(6, 4), torch.randn(2, 5, 4), torch.tensor([6], dtype=torch.int32)), ValueError, "offsets has 1"),
    "dtype mismatch": ((torch.randn(6, 4), torch.randn(2, 5, 4, dtype=torch.bfloat16),
                        torch.tensor([2, 6], dtype=torch.int32)), TypeError, "b has dtype"),
    "offsets decreasing": ((torch.randn(6, 4), torch.randn(2, 5, 4), torch.tensor([5, 2], dtype=torch.int32)),
                           ValueError, r"non-decreasing .*offsets\[1\] = 2"),
    "offsets past rows": ((torch.randn(6, 4), torch.randn(2, 5, 4), torch.tensor([2, 9], dtype=torch.int32)),
                          ValueError, r"at most the row count \(6\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_GROUPED))
def test_grouped_gemm_rejects_bad_input(case):
    assert_rejects(zaya_rt.ops.grouped_gemm, BAD_GROUPED, case)


def test_dispatch_rejects_bad_input():
    with pytest.raises(TypeError, match="expert_index has dtype float32"):
        zaya_rt.ops.moe_dispatch(torch.zeros(4), 2)
    with pytest.raises(ValueError, match="num_experts must be a positive int"):
        zaya_rt.ops.moe_dispatch(torch.zeros(4, dtype=torch.long), 0)


def _sub(code: str):
    """Runs code in a fresh interpreter, so a signal (the SIGFPE these shapes once raised) fails the test."""
    import subprocess
    import sys

    from conftest import subprocess_env

    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", "import torch, zaya_rt\nfrom zaya_rt import ops, ref\n" + code],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_grouped_gemm_empty_inner_dimension_gives_zeros(dtype):
    _sub(f"""
off = torch.tensor([3, 6, 10], dtype=torch.int32)
out = ops.grouped_gemm(torch.randn(10, 0).to(torch.{dtype}), torch.randn(3, 5, 0).to(torch.{dtype}), off)
assert out.shape == (10, 5) and out.dtype == torch.{dtype} and not out.any()
a = torch.randn(10, 4, requires_grad=True); b = torch.randn(3, 0, 4, requires_grad=True)  # N = 0: backward has K = 0
ops.grouped_gemm(a, b, off).sum().backward()
assert a.grad.shape == (10, 4) and not a.grad.any() and b.grad.shape == (3, 0, 4)
""")


def test_moe_experts_zero_widths_give_zeros_with_gradients():
    _sub("""
h = torch.randn(4, 0, requires_grad=True); g = torch.rand(4, 2, requires_grad=True)   # D = 0
w1 = torch.randn(3, 8, 0, requires_grad=True); w2 = torch.randn(3, 0, 4, requires_grad=True)
idx = torch.tensor([[0, 1], [2, 3], [1, 1], [3, 0]])
ops.moe_experts(h, idx, g, w1, w2).sum().backward()
assert not g.grad.any() and w1.grad.shape == w1.shape and w2.grad.shape == w2.shape
h = torch.randn(4, 6, requires_grad=True); g = torch.rand(4, 2, requires_grad=True)   # I = 0
w1 = torch.randn(3, 0, 6, requires_grad=True); w2 = torch.randn(3, 6, 0, requires_grad=True)
out = ops.moe_experts(h, idx, g, w1, w2)
assert out.shape == (4, 6) and not out.any()
out.sum().backward()
assert not h.grad.any() and not g.grad.any()
""")


@pytest.mark.parametrize("bad_id", [-1, 7])
def test_direct_moe_experts_rejects_out_of_range_expert_ids(bad_id):
    """The runtime's direct path (no Python checks) gets the id check from the C++ dispatch."""
    from zaya_rt import _C
    from zaya_rt.ops._lib import set_workspace
    from zaya_rt.ops.moe import moe_experts_params

    T, D, I, E = 3, 8, 4, 3
    x, w1, w2 = torch.randn(T, D), torch.randn(E, 2 * I, D), torch.randn(E, D, I)
    choice, gate, out = torch.tensor([0, bad_id, 1]), torch.rand(T), torch.empty(T, D)
    p = moe_experts_params(x, choice, gate, w1, w2, out)
    ws = torch.empty(_C.moe_experts_workspace(p, 0), dtype=torch.uint8)
    with pytest.raises(ValueError, match=rf"expert_index\[1\] = {bad_id}"):
        _C.moe_experts(set_workspace(p, ws), 0, 0, 0)
    with pytest.raises(ValueError, match=rf"expert_index\[1\] = {bad_id}"):  # the op: the same one check
        zaya_rt.ops.moe_experts(x, choice, gate, w1, w2)


def _backward_args(k=2, dtype=torch.float32, keep=True, needs=(True, True, True, True)):
    hidden, index, gate, w1, w2 = _experts(k=k, dtype=dtype)
    offsets, sorted_slots, slot_rows = zaya_rt.ops.moe_dispatch(index, w1.shape[0])
    grad_out = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    h = torch.randn(index.numel(), w1.shape[1]).to(dtype) if keep else None
    return [hidden, grad_out, gate, w1, w2, offsets, sorted_slots, slot_rows, h, list(needs)]


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("needs", [(True, True, True, True), (False, True, False, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_moe_experts_backward(dtype, needs, keep):
    torch.library.opcheck(torch.ops.zaya_rt.moe_experts_backward, tuple(_backward_args(dtype=dtype, keep=keep,
                                                                                     needs=needs)))


def _bad_backward(i, value):
    args = _backward_args()
    args[i] = value(args[i]) if callable(value) else value
    return args


BAD_BACKWARD = {
    "grad_out shape": (_bad_backward(1, lambda t: t[:, :4]), ValueError, "grad_out"),
    "offsets dtype": (_bad_backward(5, lambda t: t.long()), TypeError, "offsets"),
    "sorted_slots length": (_bad_backward(6, lambda t: t[:-1]), ValueError, "sorted_slots"),
    "h shape": (_bad_backward(8, lambda t: t[:, :4]), ValueError, "h must be"),
    "h dtype": (_bad_backward(8, lambda t: t.to(torch.bfloat16)), ValueError, "h must be"),
    "needs length": (_bad_backward(9, [True]), ValueError, "needs"),
    "weight dtype": (_bad_backward(4, lambda t: t.double()), TypeError, "down_proj"),
    "offsets past rows": (_bad_backward(5, lambda t: torch.full_like(t, 99)), ValueError, "offsets"),
    "sorted_slots out of range": (_bad_backward(6, lambda t: t + 1000), ValueError, "sorted_slots must lie"),
    "slot_rows out of range": (_bad_backward(7, lambda t: t - 5), ValueError, "slot_rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_BACKWARD))
def test_moe_experts_backward_rejects_bad_input(case):
    assert_rejects(torch.ops.zaya_rt.moe_experts_backward, BAD_BACKWARD, case)

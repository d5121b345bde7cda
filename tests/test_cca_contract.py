"""cca_prep as a custom op: opcheck, torch.compile(fullgraph) forward and backward, and bad inputs (clear
ValueError/TypeError; the ones that reach the C++ checks run in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import zaya_rt
from cca_helpers import make_inputs

OP = torch.ops.zaya_rt.cca_prep.default


def _positional(args, attrs):
    return (args["qp"], args["kp"], args["v_cur"], args["v_del"], args["conv0_w"], args["conv0_b"], args["conv1_w"],
            args["conv1_b"], args["temp"], args["positions"], args["cu_seqlens"], args["conv_state"],
            args["v_state"], attrs["num_q_heads"], attrs["num_kv_heads"], attrs["rope_dims"],
            float(attrs["rope_theta"]))


@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(state, dtype):
    args, attrs = make_inputs([5, 0, 20], dtype=dtype, state=state, seed=1)
    pos = list(_positional(args, attrs))
    for i in range(9):
        pos[i] = pos[i].requires_grad_()
    if state:
        pos[11] = pos[11].requires_grad_()
        pos[12] = pos[12].requires_grad_()
    torch.library.opcheck(OP, tuple(pos))


def test_torch_compile_fullgraph_forward_backward():
    args, attrs = make_inputs([6, 17], Hq=4, Hk=2, d=32, state=True, seed=2)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in args.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}

    def fn(a):
        q, k, v, cs, vs = zaya_rt.ops.cca_prep(**a, **attrs)
        return (q * q).sum() + (k * 2).sum() + v.sum() + cs.sum() + vs.sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss = compiled(dict(args, **leaves))
    loss.backward()
    eager_leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    eager = fn(dict(args, **eager_leaves))
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, eager_leaves[name].grad, msg=name)


def _bad_cases():
    """(name, mutate(args, attrs), expected exception)."""
    f = torch.float32

    def setk(key, value):
        def m(a, t):
            (t if key in t else a)[key] = value(a, t) if callable(value) else value
        return m

    return [
        ("qp not a tensor", setk("qp", [1.0]), TypeError),
        ("qp int dtype", setk("qp", lambda a, t: a["qp"].to(torch.int32)), TypeError),
        ("qp 3-d", setk("qp", lambda a, t: a["qp"][None]), ValueError),
        ("kp dtype differs", setk("kp", lambda a, t: a["kp"].double()), TypeError),
        ("kp width", setk("kp", lambda a, t: a["kp"][:, :-2]), ValueError),
        ("v_cur width", setk("v_cur", lambda a, t: a["v_cur"][:, :-1]), ValueError),
        ("v_del tokens", setk("v_del", lambda a, t: a["v_del"][:-1]), ValueError),
        ("qp width not heads x d", setk("num_q_heads", 3), ValueError),
        ("heads not a multiple", setk("num_kv_heads", 3), ValueError),
        ("zero heads", setk("num_q_heads", 0), ValueError),
        ("bool heads", setk("num_kv_heads", True), ValueError),
        ("conv0_w shape", setk("conv0_w", lambda a, t: a["conv0_w"][:-1]), ValueError),
        ("conv0_w zero kernel", setk("conv0_w", lambda a, t: a["conv0_w"][..., :0]), ValueError),
        ("conv1_w shape", setk("conv1_w", lambda a, t: a["conv1_w"][:, :-1]), ValueError),
        ("conv1_w dtype", setk("conv1_w", lambda a, t: a["conv1_w"].double()), TypeError),
        ("conv0_b length", setk("conv0_b", lambda a, t: a["conv0_b"][:-1]), ValueError),
        ("temp length", setk("temp", lambda a, t: torch.ones(5, dtype=f)), ValueError),
        ("positions float", setk("positions", lambda a, t: a["positions"].float()), TypeError),
        ("positions length", setk("positions", lambda a, t: a["positions"][:-1]), ValueError),
        ("cu_seqlens int64", setk("cu_seqlens", lambda a, t: a["cu_seqlens"].long()), TypeError),
        ("cu_seqlens empty", setk("cu_seqlens", torch.zeros(0, dtype=torch.int32)), ValueError),
        ("conv_state shape", setk("conv_state", lambda a, t: a["conv_state"][:, :, :-1]), ValueError),
        ("conv_state dtype", setk("conv_state", lambda a, t: a["conv_state"].to(torch.float16)), TypeError),
        ("v_state shape", setk("v_state", lambda a, t: a["v_state"][:1]), ValueError),
        ("state dtypes differ", setk("v_state", lambda a, t: a["v_state"].double()), TypeError),
        ("rope_dims odd", setk("rope_dims", 3), ValueError),
        ("rope_dims too big", setk("rope_dims", 1000), ValueError),
        ("rope_dims zero", setk("rope_dims", 0), ValueError),
        ("rope_theta negative", setk("rope_theta", -1.0), ValueError),
        ("rope_theta nan", setk("rope_theta", float("nan")), ValueError),
        ("device mismatch", setk("temp", lambda a, t: a["temp"].to("meta")), ValueError),
    ]


@pytest.mark.parametrize("name,mutate,exc", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs(name, mutate, exc):
    args, attrs = make_inputs([4, 0, 3], Hq=4, Hk=2, d=16, state=True, seed=3)
    mutate(args, attrs)
    with pytest.raises(exc, match="zaya_rt.cca_prep"):
        zaya_rt.ops.cca_prep(**args, **attrs)


def test_bad_cu_seqlens_values_in_subprocess():
    """Bad sequence offsets reach the C++ checks: run them where a crash could not take pytest down."""
    code = textwrap.dedent("""
        import sys, torch, zaya_rt
        sys.path.insert(0, TESTS_DIR)
        from cca_helpers import make_inputs
        bad = [[1, 4, 7], [0, 5, 4], [0, 4, 8], [0, 4, 6], [0, -1, 7]]
        for cu in bad:
            args, attrs = make_inputs([4, 3], Hq=4, Hk=2, d=16, state=True)
            args["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32)
            try:
                zaya_rt.ops.cca_prep(**args, **attrs)
            except ValueError as e:
                assert "cu_seqlens" in str(e), e
            else:
                raise SystemExit(f"no error for cu_seqlens={cu}")
        print("ok")
    """)
    code = code.replace("TESTS_DIR", repr(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr

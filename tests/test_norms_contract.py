"""The norms ops as library citizens: opcheck, torch.compile without graph breaks, clear errors."""

import subprocess
import sys

import pytest
import torch

import zaya_rt
from conftest import assert_rejects


def _residual_args(rows=6, dim=32, dtype=torch.float32, requires_grad=False):
    y = torch.randn(rows, dim, dtype=dtype, requires_grad=requires_grad)
    h = torch.randn(rows, dim, requires_grad=requires_grad)
    params = [torch.randn(dim, dtype=dtype, requires_grad=requires_grad) for _ in range(5)]
    return (y, h, *params, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 48), (1, 16)])
def test_opcheck_rms_norm(dtype, shape):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    w = torch.randn(shape[-1], dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.zaya_rt.rms_norm, (x, w, 1e-5))
    out, rstd = torch.ops.zaya_rt.rms_norm(x, w, 1e-5)
    torch.library.opcheck(torch.ops.zaya_rt.rms_norm_backward, (torch.randn_like(out), x.detach(), w.detach(), rstd))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_residual_rms_norm(dtype):
    args = _residual_args(dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.zaya_rt.residual_rms_norm, args)
    y, h, *params, eps = (a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    r, out, rstd = torch.ops.zaya_rt.residual_rms_norm(y, h, *params, eps)
    torch.library.opcheck(
        torch.ops.zaya_rt.residual_rms_norm_backward,
        (torch.randn_like(r), torch.randn_like(out), y, h, *params, r, rstd),
    )


def test_compile_fullgraph_has_no_graph_break():
    def block(y, h, yb, ys, hb, hs, w):
        r, x = zaya_rt.ops.residual_rms_norm(y, h, yb, ys, hb, hs, w, 1e-5)
        return zaya_rt.ops.rms_norm(x * 2, w, 1e-5).sum() + r.sum()

    args = _residual_args(requires_grad=True)[:-1]
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    got.backward()
    grads = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    want = block(*args)
    want.backward()
    torch.testing.assert_close(got, want)
    for g, a in zip(grads, args):
        torch.testing.assert_close(g, a.grad)


def test_gradcheck_float64_through_fp32_kernel_is_not_used():
    # float64 is the reference's dtype, not a kernel dtype: the op must refuse it clearly.
    with pytest.raises(TypeError, match="float64"):
        zaya_rt.ops.rms_norm(torch.randn(2, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))


W = torch.ones(8)
BAD_RMS_NORM = {
    "x not a tensor": (([1.0] * 8, W, 1e-5), TypeError, "must be a torch.Tensor"),
    "weight not a tensor": ((torch.randn(2, 8), 3.0, 1e-5), TypeError, "must be a torch.Tensor"),
    "int x": ((torch.ones(2, 8, dtype=torch.int32), W, 1e-5), TypeError, "dtype int32"),
    "int weight": ((torch.randn(2, 8), torch.ones(8, dtype=torch.int64), 1e-5), TypeError, "dtype int64"),
    "bool x": ((torch.ones(2, 8, dtype=torch.bool), W, 1e-5), TypeError, "dtype bool"),
    "complex x": ((torch.ones(2, 8, dtype=torch.complex64), W, 1e-5), TypeError, "complex64"),
    "float64 x": ((torch.randn(2, 8, dtype=torch.float64), W, 1e-5), TypeError, "float64"),
    "scalar x": ((torch.tensor(1.0), torch.ones(1), 1e-5), ValueError, "at least one dimension"),
    "2-D weight": ((torch.randn(2, 8), torch.ones(1, 8), 1e-5), ValueError, "1 dimension"),
    "size mismatch": ((torch.randn(2, 8), torch.ones(7), 1e-5), ValueError, r"last dimension \(8\)"),
    "empty hidden": ((torch.randn(2, 0), torch.ones(0), 1e-5), ValueError, "hidden size must be positive"),
    "negative eps": ((torch.randn(2, 8), W, -1.0), ValueError, "eps"),
    "nan eps": ((torch.randn(2, 8), W, float("nan")), ValueError, "eps"),
    "inf eps": ((torch.randn(2, 8), W, float("inf")), ValueError, "eps"),
    "meta and cpu": ((torch.randn(2, 8, device="meta"), W, 1e-5), ValueError, "one device"),
}


@pytest.mark.parametrize("case", sorted(BAD_RMS_NORM))
def test_rms_norm_rejects_bad_input(case):
    assert_rejects(zaya_rt.ops.rms_norm, BAD_RMS_NORM, case)


def _bad_residual(**change):
    names = ("y", "h", "y_bias", "y_scale", "h_bias", "h_scale", "weight", "eps")
    args = dict(zip(names, _residual_args(rows=3, dim=8)))
    args.update(change)
    return tuple(args[n] for n in names)


BAD_RESIDUAL = {
    "h shape": (_bad_residual(h=torch.randn(3, 9)), ValueError, "h has shape"),
    "h rows": (_bad_residual(h=torch.randn(4, 8)), ValueError, "h has shape"),
    "param shape": (_bad_residual(y_scale=torch.randn(9)), ValueError, "y_scale has shape"),
    "param 2-D": (_bad_residual(h_bias=torch.randn(1, 8)), ValueError, "h_bias must have 1"),
    "param dtype": (_bad_residual(h_scale=torch.randn(8, dtype=torch.bfloat16)), TypeError, "h_scale has dtype"),
    "int y": (_bad_residual(y=torch.ones(3, 8, dtype=torch.int64)), TypeError, "y has dtype int64"),
    "int h": (_bad_residual(h=torch.ones(3, 8, dtype=torch.int16)), TypeError, "h has dtype int16"),
    "list y": (_bad_residual(y=[[0.0] * 8] * 3), TypeError, "y must be a torch.Tensor"),
    "negative eps": (_bad_residual(eps=-0.5), ValueError, "eps"),
    "param on meta": (_bad_residual(y_bias=torch.randn(8, device="meta")), ValueError, "one device"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESIDUAL))
def test_residual_rms_norm_rejects_bad_input(case):
    assert_rejects(zaya_rt.ops.residual_rms_norm, BAD_RESIDUAL, case)


def test_raw_binding_rejects_bad_pointers_without_crashing():
    # The _C layer checks what Python could get wrong; run in a subprocess so a crash would show as one.
    code = """
import zaya_rt, torch
from zaya_rt import _C
from zaya_rt.ops.norms import rms_norm_fwd_params
x, w, out, rstd = torch.randn(4, 8), torch.randn(8), torch.empty(4, 8), torch.empty(4)

def call(dev_type=0, **over):
    p = rms_norm_fwd_params(x, w, out, rstd, 1e-5)
    for name, value in over.items():
        setattr(p, name, value)
    _C.rms_norm_fwd(p, dev_type, 0, 0)

cases = [
    lambda: call(x=0, weight=0),            # null pointers
    lambda: call(x_dtype=9),                # bad dtype code
    lambda: call(rows=-1),                  # negative rows
    lambda: call(x_row_stride=2),           # overlapping rows
    lambda: call(dev_type=1),               # GPU on a CPU build
    lambda: call(x_dtype=3),                # int32 x
    lambda: _C.set_cpu_isa("sse9"),
]
for i, case in enumerate(cases):
    try:
        case()
    except ValueError as exc:
        assert str(exc).startswith("zaya_rt"), exc
    else:
        if not (i == 4 and _C.gpu_backend != "none"):
            raise SystemExit(f"case {i} did not raise")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr

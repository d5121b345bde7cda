"""The packed-weight linear layer (`_C.pack_linear_weight` + `_C.packed_linear`, the CPU runtime's decode GEMM)
against a float64 reference, on every CPU ISA build, through `runtime.direct.Linear` and raw `_C` calls."""

import pytest
import torch

from zaya_rt import _C
from zaya_rt.ops._lib import set_workspace
from zaya_rt.ops.packed_linear import pack_linear_weight_params, packed_linear_params
from zaya_rt.runtime import direct

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = [  # (M, N, K): single row, chunk edges (8 rows), blocked/unblocked chunk counts, panel edges (48), odd K
    (1, 1, 1), (1, 47, 3), (2, 48, 2), (7, 49, 64), (8, 96, 129), (9, 130, 200), (16, 97, 512), (17, 48, 65),
    (32, 50, 130), (33, 49, 7), (70, 145, 33),
]


# bf16 runs both ways a bf16 x meets the packed bf16 pairs: widened to fp32 for FMAs (0), or vdpbf16ps (1, where
# the ISA build has it; the override is ignored elsewhere).
DTYPE_PATHS = [pytest.param(torch.float32, -1, id="float32"), pytest.param(torch.float16, -1, id="float16"),
               pytest.param(torch.bfloat16, 0, id="bfloat16-fma"), pytest.param(torch.bfloat16, 1, id="bfloat16-dot")]


@pytest.fixture
def bf16_dot_restored():
    previous = _C.cpu_bf16_dot()
    yield _C.set_cpu_bf16_dot
    _C.set_cpu_bf16_dot(previous)


def _aligned(nbytes: int) -> torch.Tensor:
    buf = torch.empty(nbytes + 64, dtype=torch.uint8)
    return buf[(-buf.data_ptr()) % 64:][:nbytes]


def _pack(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    packed = _aligned(_C.packed_linear_bytes(pack_linear_weight_params(w, b, None), 0))
    packed.fill_(0xFF)  # poison: every byte of the layout must be written
    _C.pack_linear_weight(pack_linear_weight_params(w, b, packed), 0, 0, 0)
    return packed


def _run(x: torch.Tensor, packed: torch.Tensor, out: torch.Tensor) -> None:
    p = packed_linear_params(x, packed, out)
    ws = torch.empty(_C.packed_linear_workspace(p, 0), dtype=torch.uint8)
    _C.packed_linear(set_workspace(p, ws), 0, 0, 0)


def _check(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """Products of fp32/bf16/fp16 values are exact in fp32: the error is the fp32 sum over K plus one rounding
    to the output dtype."""
    xd, wd = x.double(), w.double()
    ref = xd @ wd.T + (0 if b is None else b.double())
    mag = xd.abs() @ wd.abs().T + (0 if b is None else b.double().abs())
    unit = torch.finfo(y.dtype).eps / 2
    bound = unit * ref.abs() + (x.shape[1] + 2) * 2.0**-23 * mag * (1 + unit) + 1e-30
    err = (y.double() - ref).abs()
    assert torch.isfinite(y).all()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3e}"


@pytest.mark.parametrize("dtype,bf16_dot", DTYPE_PATHS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_packed_linear_matches_reference(cpu_isa, bf16_dot_restored, dtype, bf16_dot, M, N, K):
    bf16_dot_restored(bf16_dot)
    gen = torch.Generator().manual_seed(hash((M, N, K, str(dtype))) % 2**31)
    w = torch.randn(N, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype) if (M + N) % 2 else None
    x_wide = torch.randn(M, K + 5, generator=gen).to(dtype)
    x = x_wide[:, 2 : 2 + K]  # rows strided, not contiguous
    out_wide = torch.full((M, N + 3), float("nan"), dtype=dtype)
    out = out_wide[:, :N]
    _run(x, _pack(w, b), out)
    _check(out, x, w, b)
    assert torch.isnan(out_wide[:, N:]).all()  # nothing written past the row's N columns


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_layout_is_isa_independent(dtype):
    """A weight packed under one ISA build serves the others (the runner packs once, the ISA can change)."""
    gen = torch.Generator().manual_seed(5)
    w, x = torch.randn(61, 37, generator=gen).to(dtype), torch.randn(5, 37, generator=gen).to(dtype)
    previous = _C.cpu_isa()
    try:
        packs = []
        for isa in ("base", "avx2", "avx512"):
            if _C.set_cpu_isa(isa) == isa:
                packs.append(_pack(w, None))
        for p in packs[1:]:
            assert torch.equal(p, packs[0])
        outs = []
        for isa in ("base", "avx2", "avx512"):
            if _C.set_cpu_isa(isa) == isa:
                out = torch.full((5, 61), float("nan"), dtype=dtype)
                _run(x, packs[0], out)
                _check(out, x, w, None)
                outs.append(out)
    finally:
        _C.set_cpu_isa(previous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 16, 64, 65, 130])
def test_direct_linear_both_paths(dtype, T):
    """runtime.direct.Linear: packed up to PACKED_MAX_ROWS rows, zaya_rt's GEMM beyond; same results."""
    gen = torch.Generator().manual_seed(T)
    w, b = torch.randn(100, 72, generator=gen).to(dtype), torch.randn(100, generator=gen).to(dtype)
    x = torch.randn(T, 72, generator=gen).to(dtype)
    lin = direct.Linear(w, b, direct.Workspace())
    y = lin(x)
    assert y.shape == (T, 100) and y.dtype == dtype
    # the GEMM path rounds x W^T to the output dtype before adding the bias (a second rounding)
    xw = x.double() @ w.double().T
    ref = xw + b.double()
    unit = torch.finfo(dtype).eps / 2
    mag = x.double().abs() @ w.double().abs().T + b.double().abs()
    tol = unit * (xw.abs() + b.double().abs() + 2 * ref.abs()) + (72 + 2) * 2.0**-23 * mag * 2
    assert ((y.double() - ref).abs() <= tol).all()


def _call(**over):
    w = torch.randn(10, 8)
    packed = _pack(w, None)
    x, out = torch.randn(3, 8), torch.empty(3, 10)
    p = packed_linear_params(x, packed, out)
    ws = torch.empty(_C.packed_linear_workspace(p, 0), dtype=torch.uint8)
    set_workspace(p, ws)
    for name, value in over.items():
        setattr(p, name, value)
    _C.packed_linear(p, 0, 0, 0)


@pytest.mark.parametrize("over,match", [
    (dict(dtype=4), "dtype"), (dict(dtype=5), "dtype"), (dict(N=0), "positive"), (dict(K=-1), "positive"),
    (dict(M=-1), "non-negative"), (dict(workspace_bytes=8), "workspace"), (dict(x_row_stride=4), "overlap"),
    (dict(out_row_stride=9), "overlap"), (dict(x=0), "null"), (dict(packed=0), "null"), (dict(workspace=0), "null"),
])
def test_packed_linear_rejects_bad_arguments(over, match):
    with pytest.raises(ValueError, match=match):
        _call(**over)


def test_pack_rejects_bad_arguments():
    w = torch.randn(10, 8)
    packed = _aligned(_C.packed_linear_bytes(pack_linear_weight_params(w, None, None), 0) + 64)
    nbytes = packed.numel() - 64
    for over, match in [(dict(packed=packed.data_ptr() + 4), "aligned"), (dict(packed_bytes=nbytes - 4), "needs"),
                        (dict(weight_row_stride=7), "overlap"), (dict(dtype=3), "dtype"), (dict(weight=0), "null")]:
        p = pack_linear_weight_params(w, None, packed[:nbytes])
        for name, value in over.items():
            setattr(p, name, value)
        with pytest.raises(ValueError, match=match):
            _C.pack_linear_weight(p, 0, 0, 0)
    with pytest.raises(ValueError, match="CPU only"):
        _C.pack_linear_weight(pack_linear_weight_params(w, None, packed[:nbytes]), 1, 0, 0)


def test_zero_rows_is_a_no_op():
    _call(M=0, x=0, out=0)  # nothing to read or write: no pointer is touched


@pytest.mark.parametrize("dtype,bf16_dot", DTYPE_PATHS)
def test_packed_linear_decode_shape(bf16_dot_restored, dtype, bf16_dot):
    """The 124M config's qkv projection at batch 16 (several threads share the panels)."""
    bf16_dot_restored(bf16_dot)
    M, N, K = 16, 768, 512
    gen = torch.Generator().manual_seed(16)
    w, x = torch.randn(N, K, generator=gen).to(dtype), torch.randn(M, K, generator=gen).to(dtype)
    out = torch.full((M, N), float("nan"), dtype=dtype)
    _run(x, _pack(w, None), out)
    _check(out, x, w, None)

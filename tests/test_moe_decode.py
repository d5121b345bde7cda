"""moe_experts at decode shapes (at most 64 token slots, at most 32 on one expert: the CPU kernel's decode path,
csrc/cpu/moe_decode.cpp) vs the float64 reference, on both sides of both limits: one token to 80, 32 and 33 on
one expert, peaked and random routing,
zero-token experts, skipped tokens, all tokens on one expert, top-k > 1, each dtype and bf16 product path, row
strides of x and of the weights other than their widths, sizes that leave tails of every tile, poisoned outputs
and workspace. Tolerance as in test_moe.py (conftest.assert_close_to_peer)."""

import pytest
import torch

import zaya_rt
from conftest import assert_close_to_peer
from zaya_rt import _C, ref
from zaya_rt.ops.moe import moe_experts_params

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DECODE_MAX_SLOTS = 64  # kMoeDecodeMaxSlots (and at most kMoeDecodeMaxExpertRows = 32 on one expert)


@pytest.fixture(params=[(torch.float32, -1), (torch.float16, -1), (torch.bfloat16, 0), (torch.bfloat16, 1)],
                ids=["float32", "float16", "bfloat16-fma", "bfloat16-dot"])
def dtype_path(request):
    """Each dtype, bf16 once per way the CPU kernels can multiply it (fp32 FMAs on widened pairs, vdpbf16ps)."""
    dtype, dot = request.param
    _C.set_cpu_bf16_dot(dot)
    yield dtype
    _C.set_cpu_bf16_dot(-1)


def _route(T, top_k, E, kind, gen):
    """expert_index [T] (top-1) or [T, top_k]; E means skip."""
    shape = (T,) if top_k == 1 else (T, top_k)
    if kind == "peaked":  # a decode step's tokens reach a few experts; one is never used below
        used = torch.randperm(E - 1, generator=gen)[: min(3, E - 1)] + 1
        return used[torch.randint(0, len(used), shape, generator=gen)]
    if kind == "one_expert":
        return torch.full(shape, E - 1)
    if kind == "skipped":
        return torch.full(shape, E)
    return torch.randint(0, E + 1, shape, generator=gen)  # random, skips included


def _weights(E, D, I, dtype, gen, padded=False):
    """gate_up [E, 2I, D] and down [E, D, I]; padded: views whose rows are longer than their widths."""
    w1 = (torch.randn(E, 2 * I, D + 8 * padded, generator=gen) / D**0.5).to(dtype)
    w2 = (torch.randn(E, D, I + 5 * padded, generator=gen) / I**0.5).to(dtype)
    return w1[..., :D], w2[..., :I]


def _check(hidden, index, gate, w1, w2, what):
    want = ref.moe_experts(hidden.double(), index, gate.double(), w1.double(), w2.double())
    peer = ref.moe_experts(hidden, index, gate, w1, w2)
    got = zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2)
    assert got.shape == hidden.shape and got.dtype == hidden.dtype
    assert torch.isfinite(got).all(), what
    assert_close_to_peer(got, want, peer, what)
    return got


@pytest.mark.parametrize("T", [1, 2, 3, 7, 16, 32, 33, 63, 64, 65, 80])
@pytest.mark.parametrize("route", ["peaked", "random", "one_expert"])
def test_decode_shapes_match_reference(dtype_path, T, route):
    dtype = dtype_path
    gen = torch.Generator().manual_seed(1000 * T + len(route))
    E, D, I = 6, 100, 70  # tails in every tile: 6 rows, 48 columns, 16 and 32 elements of K
    hidden = torch.randn(T, D, generator=gen).to(dtype)
    w1, w2 = _weights(E, D, I, dtype, gen)
    index = _route(T, 1, E, route, gen)
    got = _check(hidden, index, torch.rand(T, generator=gen), w1, w2, f"T={T} {route}")
    assert torch.all(got[index == E] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,top_k", [(1, 2), (5, 3), (32, 2), (33, 2), (21, 3), (22, 3)])
def test_decode_top_k_sums_slots(dtype, T, top_k):
    """Slots of one token on the same expert, on different ones, or skipped; 64 slots and 65-66 either side."""
    gen = torch.Generator().manual_seed(T * top_k)
    E, D, I = 4, 64, 48
    hidden = torch.randn(T, D, generator=gen).to(dtype)
    w1, w2 = _weights(E, D, I, dtype, gen)
    index = _route(T, top_k, E, "random", gen)
    index[0] = 1  # all slots of token 0 on one expert
    _check(hidden, index, torch.rand(T, top_k, generator=gen), w1, w2, f"T={T} k={top_k}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_strided_rows(dtype):
    """x rows a row apart in a wider tensor, and weights whose rows are longer than their widths."""
    gen = torch.Generator().manual_seed(7)
    E, D, I, T = 5, 96, 72, 16
    hidden = torch.randn(T, 3 * D, generator=gen).to(dtype)[:, D : 2 * D]
    w1, w2 = _weights(E, D, I, dtype, gen, padded=True)
    assert hidden.stride(0) == 3 * D and w1.stride(1) == D + 8 and w2.stride(1) == I + 5
    _check(hidden, _route(T, 1, E, "random", gen), torch.rand(T, generator=gen), w1, w2, "strided")


@pytest.mark.parametrize("T", [1, 16, 64])
def test_decode_model_shape(dtype_path, T):
    """The 124M config's experts (D = I = 512, 16 experts), a few of them used."""
    dtype = dtype_path
    gen = torch.Generator().manual_seed(T)
    E, D, I = 16, 512, 512
    hidden = torch.randn(T, D, generator=gen).to(dtype)
    w1, w2 = _weights(E, D, I, dtype, gen)
    _check(hidden, _route(T, 1, E, "peaked", gen), torch.rand(T, generator=gen), w1, w2, f"T={T}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,route", [(1, "peaked"), (9, "random"), (64, "random"), (12, "skipped"), (65, "random")])
def test_decode_writes_every_output_element(dtype, T, route):
    """NaN-filled output and 0xff-filled workspace: every element is written and no stale scratch is read."""
    gen = torch.Generator().manual_seed(T)
    E, D, I = 5, 40, 24
    hidden = torch.randn(T, D, generator=gen).to(dtype)
    w1, w2 = _weights(E, D, I, dtype, gen)
    index, gate = _route(T, 1, E, route, gen), torch.rand(T, generator=gen)
    out = torch.full((T, D), float("nan"), dtype=dtype)
    p = moe_experts_params(hidden, index, gate, w1, w2, out)
    workspace = torch.full((_C.moe_experts_workspace(p, 0),), 0xFF, dtype=torch.uint8)
    p.workspace, p.workspace_bytes = workspace.data_ptr(), workspace.numel()
    _C.moe_experts(p, 0, 0, 0)
    want = ref.moe_experts(hidden.double(), index, gate.double(), w1.double(), w2.double())
    assert_close_to_peer(out, want, ref.moe_experts(hidden, index, gate, w1, w2), f"T={T} {route}")
    if route == "skipped":
        assert torch.all(out == 0)


def test_decode_zero_tokens_and_threads():
    """No tokens at all, and the same call on one thread equals the call on all of them bit for bit."""
    gen = torch.Generator().manual_seed(3)
    E, D, I = 4, 64, 96
    w1, w2 = _weights(E, D, I, torch.bfloat16, gen)
    empty = zaya_rt.ops.moe_experts(torch.zeros(0, D, dtype=torch.bfloat16), torch.zeros(0, dtype=torch.int64),
                                    torch.zeros(0), w1, w2)
    assert empty.shape == (0, D)
    hidden = torch.randn(DECODE_MAX_SLOTS, D, generator=gen).to(torch.bfloat16)
    index, gate = _route(DECODE_MAX_SLOTS, 1, E, "random", gen), torch.rand(DECODE_MAX_SLOTS, generator=gen)
    threads = torch.get_num_threads()
    all_threads = zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2)
    try:
        torch.set_num_threads(1)
        one_thread = zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(all_threads, one_thread)

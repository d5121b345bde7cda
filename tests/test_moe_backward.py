"""moe_experts' CPU backward (ops/moe.py _backward_routed) against the float64 reference where the generic
hypothesis test (test_moe.py) does not reach: a non-contiguous incoming gradient, gradients wanted for only some
inputs, every slot of a token on one expert, and skips next to zero-token experts. Tolerance: conftest's
same-precision rule (twice the error of ref.moe_experts run in the kernel's dtype, plus one ulp of scale)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import zaya_rt
import importlib

from conftest import assert_close_to_peer, poisoned_empty
from zaya_rt import ref

NAMES = ("hidden", "gate", "gate_up_proj", "down_proj")


def _inputs(T, D, I, E, index, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, D, generator=gen).to(dtype)
    w1 = (torch.randn(E, 2 * I, D, generator=gen) / D**0.5).to(dtype)
    w2 = (torch.randn(E, D, I, generator=gen) / I**0.5).to(dtype)
    gate = torch.rand(index.shape, generator=gen)
    grad = torch.randn(T, 2 * D, generator=gen).to(dtype)[:, ::2]  # every other column: non-contiguous
    return hidden, gate, w1, w2, grad, gen


def _check(index, hidden, gate, w1, w2, grad, wanted=NAMES, keep=False):
    """Backward of zaya_rt.moe_experts (keep_activations=keep) with `wanted` inputs requiring grad, against
    float64 and same-dtype refs; the forward too."""
    leaves = dict(zip(NAMES, (hidden, gate, w1, w2)))
    got = {k: v.detach().clone().requires_grad_(k in wanted) for k, v in leaves.items()}
    r64 = {k: v.detach().double().requires_grad_(k in wanted) for k, v in leaves.items()}
    peer = {k: v.detach().clone().requires_grad_(k in wanted) for k, v in leaves.items()}
    out = zaya_rt.ops.moe_experts(got["hidden"], index, got["gate"], got["gate_up_proj"], got["down_proj"],
                                  keep_activations=keep)
    want = ref.moe_experts(r64["hidden"], index, r64["gate"], r64["gate_up_proj"], r64["down_proj"])
    p_out = ref.moe_experts(peer["hidden"], index, peer["gate"], peer["gate_up_proj"], peer["down_proj"])
    assert not grad.is_contiguous()
    assert_close_to_peer(out.detach(), want.detach(), p_out.detach(), "out", dtype=hidden.dtype)
    out.backward(grad)
    want.backward(grad.double())
    p_out.backward(grad)
    for name in NAMES:
        if name not in wanted:
            assert got[name].grad is None
            continue
        scale = None
        if name == "gate":  # the gate's gradient is a sum of cancelling terms: judge it on their size
            scale = max((grad.double().abs() * want.detach().abs()).sum(-1).max().item(), 1e-6)
        assert_close_to_peer(got[name].grad, r64[name].grad, peer[name].grad, f"grad_{name}", scale=scale,
                             dtype=hidden.dtype)


KEEP = pytest.mark.parametrize("keep", [False, True], ids=["recompute", "keep"])


@KEEP
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 2])
def test_noncontiguous_grad_with_skips_and_empty_experts(dtype, top_k, keep):
    T, D, I, E = 40, 24, 16, 6
    gen = torch.Generator().manual_seed(top_k)
    # experts 1 and 4 get no token; about a third of the slots are skipped (index E)
    choices = torch.tensor([0, 2, 3, 5, E, E])
    index = choices[torch.randint(0, len(choices), (T, top_k), generator=gen)].squeeze(-1)
    _check(index, *_inputs(T, D, I, E, index, dtype, seed=10 + top_k)[:5], keep=keep)


@KEEP
@pytest.mark.parametrize("wanted", [("hidden",), ("gate",), ("gate_up_proj", "down_proj"), ("down_proj", "gate")])
def test_gradients_of_some_inputs_only(wanted, keep):
    T, D, I, E = 17, 16, 8, 3
    index = torch.randint(0, E + 1, (T,), generator=torch.Generator().manual_seed(3))
    _check(index, *_inputs(T, D, I, E, index, torch.float32, seed=4)[:5], wanted=wanted, keep=keep)


@KEEP
@pytest.mark.parametrize("T", [1, 9])
def test_every_slot_of_a_token_on_one_expert(T, keep):
    """top-k slots that repeat one expert: the token's gradient sums two rows of the same group."""
    D, I, E = 16, 8, 4
    index = torch.full((T, 2), 2)
    _check(index, *_inputs(T, D, I, E, index, torch.bfloat16, seed=T)[:5], keep=keep)


@KEEP
@pytest.mark.parametrize("I", [8, 0])
def test_all_slots_skipped_or_zero_width_gives_zero_gradients(I, keep):
    T, D, E = 5, 8, 3
    index = torch.full((T, 2), E) if I else torch.randint(0, E, (T, 2), generator=torch.Generator().manual_seed(2))
    hidden, gate, w1, w2, grad, _ = _inputs(T, D, I, E, index, torch.float32, seed=1)
    leaves = [t.requires_grad_() for t in (hidden, gate, w1, w2)]
    out = zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2, keep_activations=keep)
    assert torch.all(out == 0)
    out.backward(grad)
    for t in leaves:
        assert t.grad is not None and torch.all(t.grad == 0)


@KEEP
@pytest.mark.parametrize("top_k", [1, 2])
def test_outputs_allocated_poisoned_are_all_written(top_k, keep):
    """Every output element of moe_experts_backward (and of the kept forward: h, the dispatch) is written: the
    op's outputs start as NaN, skipped slots and an expert without tokens included."""
    T, D, I, E = 29, 24, 40, 4
    gen = torch.Generator().manual_seed(40 + top_k)
    index = torch.tensor([0, 1, 3, E])[torch.randint(0, 4, (T, top_k), generator=gen)].squeeze(-1)
    with poisoned_empty(importlib.import_module("zaya_rt.ops.moe")):
        _check(index, *_inputs(T, D, I, E, index, torch.bfloat16, seed=50 + top_k)[:5], keep=keep)
        if keep:  # the kept products are grouped_gemm's over the dispatch (rows of skipped slots zero)
            hidden, gate, w1, w2, _, _ = _inputs(T, D, I, E, index, torch.bfloat16, seed=50 + top_k)
            _, offsets, sorted_slots, slot_rows, h = torch.ops.zaya_rt.moe_experts_keep(hidden, index, gate, w1, w2)
            want = zaya_rt.ops.moe_dispatch(index, E)
            assert all(torch.equal(a, b) for a, b in zip((offsets, sorted_slots, slot_rows), want))
            tokens = sorted_slots.long() // top_k
            torch.testing.assert_close(h, zaya_rt.ops.grouped_gemm(hidden[tokens], w1, offsets), rtol=0, atol=0)


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls, self.h_args = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(func._overloadpacket.__name__)
        if self.calls[-1] == "moe_experts_backward":
            self.h_args.append(args[8])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("top_k", [1, 2])
def test_kept_activations_skip_the_dispatch_and_gate_up_gemm_in_backward(top_k):
    """The CPU backward is one moe_experts_backward call. The kept path hands it the forward's gate-up products
    (h) and runs no dispatch; the recomputing path runs a dispatch and passes no h (the kernel recomputes it)."""
    T, D, I, E = 12, 16, 8, 4
    index = torch.randint(0, E + 1, (T, top_k), generator=torch.Generator().manual_seed(5)).squeeze(-1)
    hidden, gate, w1, w2, grad, _ = _inputs(T, D, I, E, index, torch.float32, seed=6)
    counts, h_args = {}, {}
    for keep in (False, True):
        leaves = [t.detach().clone().requires_grad_() for t in (hidden, gate, w1, w2)]
        out = zaya_rt.ops.moe_experts(leaves[0], index, *leaves[1:], keep_activations=keep)
        with _OpCounter() as counter:
            out.backward(grad)
        counts[keep], h_args[keep] = counter.calls, counter.h_args
    assert counts[False].count("moe_dispatch") == 1 and counts[False].count("moe_experts_backward") == 1
    assert counts[True].count("moe_dispatch") == 0 and counts[True].count("moe_experts_backward") == 1
    assert "grouped_gemm" not in counts[False] + counts[True]
    assert h_args[False] == [None] and isinstance(h_args[True][0], torch.Tensor)
    assert h_args[True][0].shape == (T * top_k, 2 * I)


@KEEP
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 3])
def test_gemm_sized_blocks_with_ragged_tails(dtype, top_k, keep):
    """Sizes past one register tile, one B block and one column block of the kernel's epilogue, none of them
    multiples of the tiles (D 200, I 72, groups of ~50-150 rows), so that every tail and the per-column-block
    gate partials are exercised; one expert gets no token."""
    T, D, I, E = 130, 200, 72, 5
    gen = torch.Generator().manual_seed(20 + top_k)
    index = torch.tensor([0, 1, 3, 4, E])[torch.randint(0, 5, (T, top_k), generator=gen)].squeeze(-1)
    _check(index, *_inputs(T, D, I, E, index, dtype, seed=30 + top_k)[:5], keep=keep)


def test_keep_activations_without_grad_matches_the_fused_forward():
    T, D, I, E = 20, 16, 8, 4
    index = torch.randint(0, E + 1, (T, 2), generator=torch.Generator().manual_seed(7))
    hidden, gate, w1, w2, _, _ = _inputs(T, D, I, E, index, torch.bfloat16, seed=8)
    with torch.no_grad():
        kept = zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2, keep_activations=True)
    assert torch.equal(kept, zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2))


def test_keep_activations_bad_inputs_raise():
    T, D, I, E = 4, 8, 8, 2
    index = torch.zeros(T, dtype=torch.int64)
    hidden, gate, w1, w2, _, _ = _inputs(T, D, I, E, index, torch.float32, seed=9)
    hidden.requires_grad_()
    with pytest.raises(TypeError, match="keep_activations"):
        zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2, keep_activations=1)
    with pytest.raises(ValueError, match="down_proj"):
        zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2[:, :, :4], keep_activations=True)
    with pytest.raises(TypeError, match="gate_up_proj"):
        zaya_rt.ops.moe_experts(hidden, index, gate, w1.double(), w2, keep_activations=True)

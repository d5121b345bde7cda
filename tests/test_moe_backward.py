"""moe_experts' CPU backward (ops/moe.py _backward_routed) against the float64 reference where the generic
hypothesis test (test_moe.py) does not reach: a non-contiguous incoming gradient, gradients wanted for only some
inputs, every slot of a token on one expert, and skips next to zero-token experts. Tolerance: conftest's
same-precision rule (twice the error of ref.moe_experts run in the kernel's dtype, plus one ulp of scale)."""

import pytest
import torch

import zaya_rt
from conftest import assert_close_to_peer
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


def _check(index, hidden, gate, w1, w2, grad, wanted=NAMES):
    """Backward of zaya_rt.moe_experts with `wanted` inputs requiring grad, against float64 and same-dtype refs."""
    leaves = dict(zip(NAMES, (hidden, gate, w1, w2)))
    got = {k: v.detach().clone().requires_grad_(k in wanted) for k, v in leaves.items()}
    r64 = {k: v.detach().double().requires_grad_(k in wanted) for k, v in leaves.items()}
    peer = {k: v.detach().clone().requires_grad_(k in wanted) for k, v in leaves.items()}
    out = zaya_rt.ops.moe_experts(got["hidden"], index, got["gate"], got["gate_up_proj"], got["down_proj"])
    want = ref.moe_experts(r64["hidden"], index, r64["gate"], r64["gate_up_proj"], r64["down_proj"])
    p_out = ref.moe_experts(peer["hidden"], index, peer["gate"], peer["gate_up_proj"], peer["down_proj"])
    assert not grad.is_contiguous()
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 2])
def test_noncontiguous_grad_with_skips_and_empty_experts(dtype, top_k):
    T, D, I, E = 40, 24, 16, 6
    gen = torch.Generator().manual_seed(top_k)
    # experts 1 and 4 get no token; about a third of the slots are skipped (index E)
    choices = torch.tensor([0, 2, 3, 5, E, E])
    index = choices[torch.randint(0, len(choices), (T, top_k), generator=gen)].squeeze(-1)
    _check(index, *_inputs(T, D, I, E, index, dtype, seed=10 + top_k)[:5])


@pytest.mark.parametrize("wanted", [("hidden",), ("gate",), ("gate_up_proj", "down_proj"), ("down_proj", "gate")])
def test_gradients_of_some_inputs_only(wanted):
    T, D, I, E = 17, 16, 8, 3
    index = torch.randint(0, E + 1, (T,), generator=torch.Generator().manual_seed(3))
    _check(index, *_inputs(T, D, I, E, index, torch.float32, seed=4)[:5], wanted=wanted)


@pytest.mark.parametrize("T", [1, 9])
def test_every_slot_of_a_token_on_one_expert(T):
    """top-k slots that repeat one expert: the token's gradient sums two rows of the same group."""
    D, I, E = 16, 8, 4
    index = torch.full((T, 2), 2)
    _check(index, *_inputs(T, D, I, E, index, torch.bfloat16, seed=T)[:5])


def test_all_slots_skipped_gives_zero_gradients():
    T, D, I, E = 5, 8, 8, 3
    index = torch.full((T, 2), E)
    hidden, gate, w1, w2, grad, _ = _inputs(T, D, I, E, index, torch.float32, seed=1)
    leaves = [t.requires_grad_() for t in (hidden, gate, w1, w2)]
    zaya_rt.ops.moe_experts(hidden, index, gate, w1, w2).backward(grad)
    for t in leaves:
        assert t.grad is not None and torch.all(t.grad == 0)

"""The RL objective against hand-worked examples: advantages, the loss with and without Binary-TV masking,
the constant normalizer under micro-batching, dynamic sampling and the repetition canary."""

import math
import random

import pytest
import torch

from zaya_rt.train.rl import (advantages, compression_ratio, informative_groups, policy_loss, repetition_canary,
                              trust_region_keep)

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])


def test_advantages_drgrpo_by_hand():
    want = [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [0.25, 0.25, 0.25, -0.75]]
    torch.testing.assert_close(advantages(REWARDS, "drgrpo"), torch.tensor(want), rtol=0, atol=1e-7)


def test_advantages_grpo_by_hand():
    # row 0: deviations +-0.5, sample variance 1/3; row 2: deviations .25 x3, -.75, sample variance 0.25
    s0 = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    want = [[s0, -s0, -s0, s0], [0, 0, 0, 0], [0.25 / 0.500001] * 3 + [-0.75 / 0.500001]]
    torch.testing.assert_close(advantages(REWARDS.double(), "grpo"), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


def test_advantages_maxrl_by_hand():
    want = [[0.5 / 0.500001, -0.5 / 0.500001, -0.5 / 0.500001, 0.5 / 0.500001], [0, 0, 0, 0],
            [0.25 / 0.750001] * 3 + [-0.75 / 0.750001]]
    got = advantages(REWARDS.double(), "maxrl")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert got[1].eq(0).all() and got[1].isfinite().all()  # mean 0: zero, not 0/eps


def test_advantages_bad_input():
    with pytest.raises(ValueError, match="kind"):
        advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        advantages(REWARDS[0], "drgrpo")
    with pytest.raises(ValueError, match="G >= 2"):
        advantages(REWARDS[:, :1], "grpo")
    with pytest.raises(ValueError, match="NaN"):
        advantages(torch.tensor([[1.0, float("nan")]]), "maxrl")
    with pytest.raises(TypeError, match="rewards"):
        advantages([[1.0, 0.0]], "drgrpo")
    assert advantages(torch.zeros(0, 4), "drgrpo").shape == (0, 4)


# seq 0 (A = +1): p = .5 .9 .2 under mu = .5 .6 .25; seq 1 (A = -1): p = .3 .05 .4, mu = .3 .3 .5, last token unmasked
P = torch.tensor([[0.5, 0.9, 0.2], [0.3, 0.05, 0.4]], dtype=torch.float64)
MU = torch.tensor([[0.5, 0.6, 0.25], [0.3, 0.3, 0.5]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
A = torch.tensor([1.0, -1.0], dtype=torch.float64)


def test_loss_without_masking_by_hand():
    logp = P.log().requires_grad_()
    loss = policy_loss(logp, MU.log(), A, MASK, normalizer=10)
    # ratios 1, 1.5, 0.8 | 1, 1/6, (0.8 masked out): -(3.3 - 7/6) / 10
    assert loss.item() == pytest.approx(-(3.3 - 7 / 6) / 10, abs=1e-12)
    loss.backward()
    want = -torch.tensor([[1, 1.5, 0.8], [-1, -1 / 6, 0]], dtype=torch.float64) / 10
    torch.testing.assert_close(logp.grad, want, rtol=1e-12, atol=1e-12)


def test_loss_with_binary_tv_masking_by_hand():
    logp = P.log().requires_grad_()
    loss = policy_loss(logp, MU.log(), A, MASK, normalizer=10, tv_delta=0.2)
    # seq 0 token 1: p - mu = .3 > .2 with A > 0 -> masked; seq 1 token 1: p - mu = -.25 < -.2 with A < 0 -> masked
    assert loss.item() == pytest.approx(-(1 + 0.8 - 1) / 10, abs=1e-12)
    loss.backward()
    want = -torch.tensor([[1, 0, 0.8], [-1, 0, 0]], dtype=torch.float64) / 10
    torch.testing.assert_close(logp.grad, want, rtol=1e-12, atol=1e-12)
    keep = trust_region_keep(P.log(), MU.log(), A[:, None], 0.2)
    assert keep.tolist() == [[True, False, True], [True, False, True]]


def test_binary_tv_keeps_moves_against_the_advantage():
    # p rose past delta but A < 0 (the update pushes it back down): kept; p fell past delta with A > 0: kept
    p = torch.tensor([[0.9], [0.1]], dtype=torch.float64)
    mu = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    assert trust_region_keep(p.log(), mu.log(), torch.tensor([[-1.0], [1.0]]), 0.1).all()
    assert not trust_region_keep(p.log(), mu.log(), torch.tensor([[1.0], [-1.0]]), 0.1).any()


def test_masked_tokens_with_huge_ratio_stay_finite():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    rollout = torch.tensor([[-200.0, -0.5]])  # exp(200) overflows float32
    loss = policy_loss(logp, rollout, torch.tensor([1.0]), torch.tensor([[0, 1]]), normalizer=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 0] == 0


@pytest.mark.parametrize("tv_delta", [None, 0.05])
def test_normalizer_makes_micro_batches_add_up(tv_delta):
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    B, T = 11, 7
    logp = (-torch.rand(B, T, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    rollout = logp.detach() + 0.2 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    a = torch.randn(B, generator=gen, dtype=torch.float64)
    mask = torch.rand(B, T, generator=gen) > 0.3
    norm = float(B * T)
    whole = policy_loss(logp, rollout, a, mask, normalizer=norm, tv_delta=tv_delta)
    (g_whole,) = torch.autograd.grad(whole, logp)
    parts, grads = [], torch.zeros_like(logp)
    for idx in ([0, 1, 2, 3], [4], [5, 6, 7, 8, 9, 10]):
        part = policy_loss(logp[idx], rollout[idx], a[idx], mask[idx], normalizer=norm, tv_delta=tv_delta)
        parts.append(part)
        grads += torch.autograd.grad(part, logp)[0]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads, g_whole, rtol=1e-12, atol=1e-14)
    # a per-micro-batch token mean (what the constant normalizer replaces) would not add up
    per_mb = sum(policy_loss(logp[i], rollout[i], a[i], mask[i], normalizer=float(mask[i].sum()))
                 for i in ([0, 1, 2, 3], [4], [5, 6, 7, 8, 9, 10]))
    assert not torch.allclose(per_mb, whole * norm / float(mask.sum()))


def test_loss_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="normalizer"):
        policy_loss(x, x, torch.zeros(2), x, normalizer=0)
    with pytest.raises(ValueError, match="normalizer"):
        policy_loss(x, x, torch.zeros(2), x, normalizer=float("nan"))
    with pytest.raises(ValueError, match="one shape"):
        policy_loss(x, x[:, :2], torch.zeros(2), x, normalizer=1)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(x, x, torch.zeros(3), x, normalizer=1)
    with pytest.raises(ValueError, match="tv_delta"):
        policy_loss(x, x, torch.zeros(2), x, normalizer=1, tv_delta=2.0)
    with pytest.raises(TypeError, match="logp"):
        policy_loss(x.long(), x, torch.zeros(2), x, normalizer=1)
    assert policy_loss(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3), normalizer=1) == 0


def test_dynamic_sampling_drops_all_equal_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.25]])
    assert informative_groups(rewards).tolist() == [False, True, False, True]
    assert informative_groups(torch.zeros(0, 3)).tolist() == []


def test_repetition_canary():
    rng = random.Random(0)
    varied = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,0123456789") for _ in range(1000))
    loop = "the answer is 4. " * 60
    assert compression_ratio(loop) < 0.1 < compression_ratio(varied)
    assert compression_ratio([7, 8] * 300) < 0.05 and compression_ratio([]) == 1.0
    # token ids: as bytes when they fit, so byte-level ids give the text's ratio
    assert compression_ratio(list(varied.encode())) == compression_ratio(varied)
    assert compression_ratio([70000, 3] * 300) < 0.05 < compression_ratio([rng.randrange(70000) for _ in range(300)])
    rewards, flags = repetition_canary(torch.tensor([1.0, 1.0, 0.5]), [loop, varied, "short"], 0.1)
    assert rewards.tolist() == [0.0, 1.0, 0.5] and flags.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="threshold"):
        repetition_canary(torch.ones(1), ["x"], 1.5)
    with pytest.raises(ValueError, match="completions"):
        repetition_canary(torch.ones(2), ["x"], 0.1)

"""RouterBalancer: brings a skewed load to uniform, honours the skip target, round-trips its state, and agrees
across ranks (gloo)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import zaya_rt
from zaya_rt.train import RouterBalancer, collect_router_loads


def _simulate(balancer, bias, logits, steps):
    for _ in range(steps):
        p = logits.softmax(-1)
        choice = (p + bias).argmax(-1)
        balancer.step([torch.bincount(choice, minlength=bias.shape[0])])
    return torch.bincount((logits.softmax(-1) + bias).argmax(-1), minlength=bias.shape[0]).double()


def test_skewed_load_becomes_uniform():
    gen = torch.Generator().manual_seed(0)
    E, T = 8, 8192
    skew = torch.linspace(2.0, -2.0, E + 1)
    logits = torch.randn(T, E + 1, generator=gen) + skew
    bias = torch.zeros(E + 1)
    bias[-1] = -1.0
    before = torch.bincount((logits.softmax(-1) + bias).argmax(-1), minlength=E + 1).double()
    experts_before = before[:-1] / before[:-1].sum()
    assert (experts_before - 1 / E).abs().max() * E > 0.5  # strongly skewed to start with
    counts = _simulate(RouterBalancer([bias], lr=2e-3), bias, logits, steps=400)
    experts = counts[:-1] / counts[:-1].sum()
    assert (experts - 1 / E).abs().max().item() * E < 0.10, experts
    assert bias[-1].item() == -1.0  # no skip target: the skip bias is left alone


def test_skip_target_is_reached():
    gen = torch.Generator().manual_seed(1)
    E, T = 4, 8192
    logits = torch.randn(T, E + 1, generator=gen)
    bias = torch.zeros(E + 1)
    counts = _simulate(RouterBalancer([bias], lr=2e-3, skip_target=0.25), bias, logits, steps=400)
    f = counts / counts.sum()
    assert abs(f[-1].item() - 0.25) < 0.025
    assert (f[:-1] - 0.75 / E).abs().max().item() < 0.1 * 0.75 / E


def test_state_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(2)
    loads = [torch.randint(0, 100, (6,), generator=gen) for _ in range(5)]
    a_bias = [torch.zeros(6), torch.zeros(6)]
    a = RouterBalancer(a_bias, lr=1e-2, skip_target=0.1)
    for step_loads in loads[:3]:
        a.step([step_loads, step_loads.flip(0)])
    torch.save(a.state_dict(), tmp_path / "balancer.pt")
    b_bias = [torch.zeros(6), torch.zeros(6)]
    b = RouterBalancer(b_bias, lr=1e-2)
    b.load_state_dict(torch.load(tmp_path / "balancer.pt"))
    for step_loads in loads[3:]:
        a.step([step_loads, step_loads.flip(0)])
        b.step([step_loads, step_loads.flip(0)])
    for x, y in zip(a_bias, b_bias):
        assert torch.equal(x, y)


def test_collects_loads_from_the_model_and_drives_its_biases():
    cfg = zaya_rt.ZayaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=16, moe_intermediate_size=16, num_experts=4,
                             router_hidden_size=8)
    model = zaya_rt.ZayaForCausalLM(cfg).init_random(3)
    balancer = RouterBalancer.for_model(model, lr=0.05)
    ids = torch.randint(0, 50, (2, 12))
    before = [b.clone() for b in balancer.biases]
    with torch.no_grad(), collect_router_loads(model) as loads:
        model(ids)
    assert [int(c.sum()) for c in loads] == [24, 24]
    balancer.step(loads)
    assert all(not torch.equal(a, b) for a, b in zip(before, balancer.biases))
    assert balancer.biases[0] is model.model.layers[0].mlp.gate.balancing_biases


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one layer"):
        RouterBalancer([])
    with pytest.raises(ValueError, match="float32"):
        RouterBalancer([torch.zeros(5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="skip_target"):
        RouterBalancer([torch.zeros(5)], skip_target=1.5)
    with pytest.raises(ValueError, match="loads for 2 layers"):
        RouterBalancer([torch.zeros(5)]).step([torch.ones(5), torch.ones(5)])


@pytest.mark.slow
def test_loads_are_all_reduced_across_ranks(tmp_path):
    script = textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist
        from zaya_rt.train import RouterBalancer
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
        bias = torch.zeros(5)
        b = RouterBalancer([bias], lr=0.1)
        local = torch.tensor([10, 0, 0, 0, 3]) if rank == 0 else torch.tensor([0, 10, 0, 0, 3])
        f = b.step([local])[0]
        torch.save((f, bias), sys.argv[3] + f"/rank{rank}.pt")
        dist.destroy_process_group()
    """)
    (tmp_path / "worker.py").write_text(script)
    init = tmp_path / "init"
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(r), str(init), str(tmp_path)])
             for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    (f0, b0), (f1, b1) = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(f0, f1) and torch.equal(b0, b1)
    torch.testing.assert_close(f0[:4], torch.tensor([0.5, 0.5, 0.0, 0.0]))

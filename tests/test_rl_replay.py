"""Router replay: the trainer's forward uses the engine's expert choices (fp32: its log-probs equal the engine's
within 1e-4), the router keeps its gradients, and every record is used once per pass, under packing and
activation checkpointing."""

import copy
import random

import pytest
import torch

from zaya_rt import Engine, SamplingParams
from zaya_rt.model.modeling import ZayaExperts, ZayaRouter
from rl_helpers import routed_tiny_model
from zaya_rt.runtime import tiny_model
from zaya_rt.train.activation import checkpoint_layers


class ExpertCalls:
    """Records the choice [N] every expert block is called with, per layer, while active."""

    def __init__(self, model):
        self.calls = {}
        blocks = [m for m in model.modules() if isinstance(m, ZayaExperts)]
        self.handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i):
        def hook(module, args, out):
            self.calls.setdefault(i, []).append(args[1].detach().clone())
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def natural_choices(model, ids, **kw):
    choices = []
    handles = [r.register_forward_hook(lambda m, a, out: choices.append(out[2].clone()))
               for r in model.modules() if isinstance(r, ZayaRouter)]
    try:
        with torch.no_grad():
            logits = model(ids, **kw)
    finally:
        for h in handles:
            h.remove()
    return logits, torch.stack(choices, -1).reshape(*ids.shape, -1)


@pytest.fixture(scope="module")
def rollouts():
    """(model, prompts, completions) of fp32 engine rollouts with details."""
    model = routed_tiny_model(seed=5)
    rng = random.Random(random.randrange(2**31))
    prompts = [[rng.randrange(256) for _ in range(n)] for n in (7, 23, 2)]
    engine = Engine(model, num_pages=64, page_size=16, max_batch=4)
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, logprobs=True), details=True)
    return model, prompts, outs


def packed(prompts, outs):
    """(ids [N], cu_seqlens, routed [N, L]) of prompt + generated[:-1] of every rollout, packed."""
    ids = torch.cat([torch.tensor(p + o.token_ids[:-1]) for p, o in zip(prompts, outs)])
    lens = [len(p) + len(o.token_ids) - 1 for p, o in zip(prompts, outs)]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return ids, cu, torch.cat([o.routed_experts for o in outs])


def rollout_logp(logits, prompts, outs):
    """Log-probs [sum G] of each rollout's generated tokens from packed logits [N, vocab]."""
    logp, start = [], 0
    for p, o in zip(prompts, outs):
        n = len(p) + len(o.token_ids) - 1
        rows = torch.log_softmax(logits[start + len(p) - 1 : start + n].double(), -1)
        logp.append(rows.gather(1, torch.tensor(o.token_ids[: n - len(p) + 1])[:, None])[:, 0])
        start += n
    return torch.cat(logp)


def test_replayed_forward_equals_engine_logprobs(rollouts):
    model, prompts, outs = rollouts
    ids, cu, routed = packed(prompts, outs)
    calls = ExpertCalls(model)
    try:
        with torch.no_grad():
            logits = model(ids, cu_seqlens=cu, routed_experts=routed)
    finally:
        calls.close()
    engine_logp = torch.tensor([lp for o in outs for lp in o.logprobs], dtype=torch.float64)
    torch.testing.assert_close(rollout_logp(logits, prompts, outs), engine_logp, rtol=0, atol=1e-4)
    for layer, seen in calls.calls.items():
        assert len(seen) == 1 and torch.equal(seen[0], routed[:, layer].long())


def test_replay_forces_the_records_over_moved_weights(rollouts):
    model, prompts, outs = rollouts
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for r in moved.modules():
            if isinstance(r, ZayaRouter):
                r.router_mlp.out_proj.weight.add_(torch.randn_like(r.router_mlp.out_proj.weight) * 0.5)
    ids, cu, routed = packed(prompts, outs)
    _, natural = natural_choices(moved, ids, cu_seqlens=cu)
    assert (natural != routed).float().mean() > 0.2  # the moved router would choose otherwise
    calls = ExpertCalls(moved)
    try:
        logits = moved(ids, cu_seqlens=cu, routed_experts=routed)
    finally:
        calls.close()
    for layer, seen in calls.calls.items():
        assert torch.equal(seen[0], routed[:, layer].long())
    logits.float().logsumexp(-1).sum().backward()
    for r in moved.modules():
        if isinstance(r, ZayaRouter):
            g = r.router_mlp.out_proj.weight.grad
            assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("form", ["rows", "packed"])
def test_replaying_the_natural_choices_changes_nothing(form):
    """Same logits and the same gradients as the router's own choice: the replayed gate is the router's."""
    torch.manual_seed(random.randrange(2**31))
    model = routed_tiny_model(seed=6)
    replayed = copy.deepcopy(model)
    if form == "rows":
        ids, kw = torch.randint(0, 256, (2, 13)), {}
    else:
        ids, kw = torch.randint(0, 256, (19,)), {"cu_seqlens": torch.tensor([0, 5, 6, 19], dtype=torch.int32)}
    _, choices = natural_choices(model, ids, **kw)
    a = model(ids, **kw)
    b = replayed(ids, routed_experts=choices, **kw)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    for (name, p), q in zip(model.named_parameters(), replayed.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_replay_under_activation_checkpointing_reads_each_record_once_per_pass(rollouts):
    model, prompts, outs = rollouts
    plain, ckpt = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    assert checkpoint_layers(ckpt) == model.config.num_hidden_layers
    ids, cu, routed = packed(prompts, outs)
    calls = ExpertCalls(ckpt)
    try:
        loss_c = ckpt(ids, cu_seqlens=cu, routed_experts=routed).float().logsumexp(-1).sum()
        loss_c.backward()
    finally:
        calls.close()
    loss_p = plain(ids, cu_seqlens=cu, routed_experts=routed).float().logsumexp(-1).sum()
    loss_p.backward()
    torch.testing.assert_close(loss_c, loss_p)
    for layer, seen in calls.calls.items():
        assert len(seen) == 2  # the forward and its recompute, each with the same, whole record
        assert all(torch.equal(s, routed[:, layer].long()) for s in seen)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_routed_experts_bad_input():
    model = tiny_model(seed=1)
    ids = torch.randint(0, 256, (1, 4))
    L, E = model.config.num_hidden_layers, model.config.num_experts
    with pytest.raises(ValueError, match="routed_experts must have shape"):
        model(ids, routed_experts=torch.zeros(1, 3, L, dtype=torch.long))
    with pytest.raises(TypeError, match="routed_experts must be an integer"):
        model(ids, routed_experts=torch.zeros(1, 4, L))
    with pytest.raises(ValueError, match=r"routed_experts must lie in \[0, 8\]"):
        model(ids, routed_experts=torch.full((1, 4, L), E + 1))
    with pytest.raises(TypeError, match="routed_experts must be a torch.Tensor"):
        model(ids, routed_experts=[[0] * L] * 4)
    skip_all = model(ids, routed_experts=torch.full((1, 4, L), E, dtype=torch.int32))  # every layer skips
    assert torch.isfinite(skip_all).all()

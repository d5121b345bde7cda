"""zaya_rt.train.Muon against torch.optim.Muon (2-D, per expert on 3-D) and a float64 restatement of its update;
zaya_rt.train.param_groups on the ZAYA model."""

import math

import pytest
import torch

from zaya_rt import ref
from zaya_rt.model.modeling import ZayaForCausalLM
from zaya_rt.runtime import tiny_config
from zaya_rt.train import Muon, param_groups

COEFFS = (3.4445, -4.775, 2.0315)


def grads_for(shape, steps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def run(opt_cls, p0, grads, **kw):
    p = torch.nn.Parameter(p0.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


def float64_muon(p0, grads, lr, weight_decay, momentum, nesterov, adjust_lr_fn):
    """torch.optim.Muon's documented update, restated in float64 with the reference Newton-Schulz."""
    p, buf = p0.double().clone(), torch.zeros_like(p0, dtype=torch.float64)
    rows, cols = p0.shape[-2:]
    scale = 0.2 * math.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw" else math.sqrt(max(1, rows / cols))
    for g in grads:
        g = g.double()
        buf = momentum * buf + (1 - momentum) * g
        u = (1 - momentum) * g + momentum * buf if nesterov else buf
        p = p * (1 - lr * weight_decay) - lr * scale * ref.newton_schulz(u, 5, COEFFS, 1e-7)
    return p


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("shape", [(48, 96), (96, 48)])
def test_matches_torch_muon_2d(adjust_lr_fn, shape):
    torch.manual_seed(0)
    p0 = torch.randn(shape) * 0.1
    grads = grads_for(shape, 4, 1)
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn=adjust_lr_fn)
    ours, opt = run(Muon, p0, grads, **kw)
    theirs, topt = run(torch.optim.Muon, p0, grads, **kw)
    # Momentum is plain fp32 arithmetic: identical. The parameters differ by bf16 Newton-Schulz rounding only.
    assert torch.equal(opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"],
                       topt.state[topt.param_groups[0]["params"][0]]["momentum_buffer"])
    moved_ours, moved_theirs = ours - p0, theirs - p0
    assert ((moved_ours - moved_theirs).norm() / moved_theirs.norm()).item() < 1.5e-2


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_fp32_matches_float64_update(adjust_lr_fn, nesterov):
    torch.manual_seed(2)
    p0 = torch.randn(40, 72) * 0.1
    grads = grads_for((40, 72), 3, 3)
    kw = dict(lr=0.05, weight_decay=0.2, momentum=0.8, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ours, _ = run(Muon, p0, grads, ns_dtype=torch.float32, **kw)
    want = float64_muon(p0, grads, **kw)
    assert (ours.double() - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_3d_stack_is_torch_muon_per_expert(adjust_lr_fn):
    torch.manual_seed(4)
    E, A, B = 4, 64, 24
    p0 = torch.randn(E, A, B) * 0.1
    grads = grads_for((E, A, B), 3, 5)
    kw = dict(lr=0.03, weight_decay=0.05, momentum=0.95, adjust_lr_fn=adjust_lr_fn)
    ours, _ = run(Muon, p0, grads, **kw)
    for e in range(E):
        theirs, _ = run(torch.optim.Muon, p0[e], [g[e] for g in grads], **kw)
        moved_ours, moved_theirs = ours[e] - p0[e], theirs - p0[e]
        assert ((moved_ours - moved_theirs).norm() / moved_theirs.norm()).item() < 1.5e-2


def test_skips_params_without_grad_and_closure():
    a = torch.nn.Parameter(torch.randn(8, 8))
    b = torch.nn.Parameter(torch.randn(8, 8))
    before = b.detach().clone()
    opt = Muon([a, b], lr=0.1)
    a.grad = torch.randn(8, 8)
    assert opt.step(lambda: 3.0) == 3.0
    assert torch.equal(b, before) and b not in opt.state


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D matrices or 3-D stacks"):
        Muon([torch.nn.Parameter(torch.randn(5))])
    with pytest.raises(ValueError, match="2-D matrices or 3-D stacks"):
        Muon([torch.nn.Parameter(torch.randn(2, 2, 2, 2))])
    p = [torch.nn.Parameter(torch.randn(4, 4))]
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        Muon(p, adjust_lr_fn="sqrt")
    with pytest.raises(ValueError, match="lr"):
        Muon(p, lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        Muon(p, momentum=1.5)
    with pytest.raises(TypeError, match="ns_dtype"):
        Muon(p, ns_dtype=torch.float16)


def test_param_groups_on_zaya():
    model = ZayaForCausalLM(tiny_config())
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in groups["muon"]}
    adamw = {names[id(p)] for p in groups["adamw"]}
    assert muon.isdisjoint(adamw)
    assert len(groups["muon"]) + len(groups["adamw"]) == len(list(model.parameters()))
    for name in muon:
        leaf = name.rsplit(".", 1)[-1]
        assert leaf in ("weight", "gate_up_proj", "down_proj"), name
        assert not any(s in name for s in ("embed", "lm_head", "norm", "conv", "bias", "scale", "temp")), name
    expected_muon = [n for n, p in model.named_parameters()
                     if n.endswith(("q_proj.weight", "k_proj.weight", "o_proj.weight", "fc1.weight", "fc2.weight",
                                    "out_proj.weight", "experts.gate_up_proj", "experts.down_proj"))
                     or (n.endswith("gate.down_proj.weight"))]
    assert set(expected_muon) <= muon
    for name in adamw:
        assert any(s in name for s in ("embed", "lm_head", "norm", "conv", "bias", "scale", "temp")), name
    # Every Muon parameter is something Muon accepts.
    Muon(groups["muon"])

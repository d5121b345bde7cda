"""The fused chunked LM-head cross-entropy (model/loss.py) against F.cross_entropy on the full logits in float64:
values and gradients of hidden, weight and bias, with ignored tokens, chunk sizes that do not divide the token
count, all-ignored chunks, bf16 with its same-precision yardstick, tied embeddings through the model, and
the claim that no [tokens, vocab] tensor is ever made."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_peer
from torch.utils._python_dispatch import TorchDispatchMode

import zaya_rt
from zaya_rt.model.loss import linear_cross_entropy

IGNORE = -100


def _inputs(N, D, V, dtype, seed, bias=False, ignored=()):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=gen).to(dtype)
    weight = (2 * D**-0.5 * torch.randn(V, D, generator=gen)).to(dtype)
    b = (0.5 * torch.randn(V, generator=gen)).to(dtype) if bias else None
    labels = torch.randint(0, V, (N,), generator=gen)
    for rows in ignored:
        labels[rows] = IGNORE
    return hidden, weight, b, labels


def _grads(loss_fn, tensors, grad_out):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    loss = loss_fn(*leaves)
    loss.backward(torch.tensor(grad_out, dtype=loss.dtype))
    return loss.detach(), [None if t is None else t.grad for t in leaves]


def _reference(reduction):
    return lambda h, w, b, labels: F.cross_entropy(F.linear(h, w, b).float() if h.dtype != torch.float64
                                                   else F.linear(h, w, b), labels, ignore_index=IGNORE,
                                                   reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_matches_float64_cross_entropy(dtype, reduction, bias, chunk):
    N, D, V = 45, 24, 97
    # rows 16..31 ignored: with chunk 16 (over the loss-carrying rows as placed) and 7 whole chunks drop out
    h, w, b, labels = _inputs(N, D, V, dtype, seed=chunk * 4 + bias, bias=bias, ignored=(slice(16, 32), 3, N - 1))
    fused = lambda h, w, b: linear_cross_entropy(h, w, labels, b, reduction=reduction, chunk_size=chunk)  # noqa: E731
    ref = lambda h, w, b: _reference(reduction)(h, w, b, labels)  # noqa: E731
    loss, grads = _grads(fused, (h, w, b), 0.37)
    want_loss, want = _grads(ref, [None if t is None else t.double() for t in (h, w, b)], 0.37)
    peer_loss, peer = _grads(ref, (h, w, b), 0.37)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert_close_to_peer(loss, want_loss, peer_loss, "loss", dtype=dtype)
    for name, g, gw, gp in zip(("d_hidden", "d_weight", "d_bias"), grads, want, peer):
        if gw is None:
            assert g is None
            continue
        assert g.dtype == dtype and torch.isfinite(g).all(), name
        assert_close_to_peer(g, gw, gp, name)
    assert (grads[0][16:32] == 0).all() and (grads[0][3] == 0).all()


def test_leading_dims_and_non_contiguous_hidden():
    B, T, D, V = 3, 11, 16, 40
    h, w, _, labels = _inputs(B * T, D, V, torch.float32, seed=5, ignored=(slice(0, 4),))
    wide = torch.randn(B, T, 2 * D)
    wide[..., ::2] = h.view(B, T, D)
    h_BTD = wide[..., ::2]  # a strided view
    assert not h_BTD.is_contiguous()
    leaf = h_BTD.detach().requires_grad_()
    loss = linear_cross_entropy(leaf, w, labels.view(B, T), chunk_size=4)
    loss.backward()
    h64 = h.double().requires_grad_()
    want = F.cross_entropy(F.linear(h64, w.double()), labels, ignore_index=IGNORE)
    want.backward()
    assert abs(loss.item() - want.item()) < 1e-5
    assert leaf.grad.shape == (B, T, D)
    assert (leaf.grad.reshape(-1, D).double() - h64.grad).abs().max() < 1e-6


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("N", [0, 9])
def test_all_ignored_and_empty(reduction, N):
    h, w, b, labels = _inputs(N, 8, 13, torch.float32, seed=2, bias=True, ignored=(slice(None),))
    fused = lambda h, w, b: linear_cross_entropy(h, w, labels, b, reduction=reduction, chunk_size=4)  # noqa: E731
    loss, grads = _grads(fused, (h, w, b), 1.0)
    want_loss, want = _grads(lambda h, w, b: _reference(reduction)(h, w, b, labels), (h, w, b), 1.0)
    assert torch.equal(loss.isnan(), want_loss.isnan())
    if reduction == "sum":
        assert loss.item() == 0.0
    for g, gw in zip(grads, want):
        assert torch.equal(g, gw) and not g.any()


def test_no_grad_gives_the_same_loss():
    h, w, _, labels = _inputs(30, 16, 50, torch.bfloat16, seed=3, ignored=(slice(2, 9),))
    with torch.no_grad():
        plain = linear_cross_entropy(h, w, labels, chunk_size=8)
    graded = linear_cross_entropy(h, w.requires_grad_(), labels, chunk_size=8)
    assert graded.requires_grad and not plain.requires_grad
    assert torch.equal(plain, graded.detach())


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_never_makes_full_logits(dtype):
    N, D, V, chunk = 256, 8, 512, 32
    h, w, _, labels = _inputs(N, D, V, dtype, seed=4)
    h.requires_grad_()
    w.requires_grad_()
    with _LargestOutput() as fused:
        linear_cross_entropy(h, w, labels, chunk_size=chunk).backward()
    with _LargestOutput() as unfused:
        _reference("mean")(h, w, None, labels).backward()
    assert unfused.largest >= N * V  # the yardstick sees the full logits
    assert fused.largest <= chunk * V


def _tiny_model(dtype, tie=True, lm_head_bias=False):
    config = zaya_rt.ZayaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=32, moe_intermediate_size=32, num_experts=4,
                                router_hidden_size=16, max_position_embeddings=128, tie_word_embeddings=tie,
                                lm_head_bias=lm_head_bias)
    model = zaya_rt.ZayaForCausalLM(config).init_random(seed=7).to(dtype)
    for layer in model.model.layers:
        layer.mlp.gate.balancing_biases.data = layer.mlp.gate.balancing_biases.float()
    return model


def _model_step(model, ids, labels, cu, fused):
    """(summed loss, {parameter name: gradient}) of one packed training step."""
    model.zero_grad(set_to_none=True)
    if fused:
        loss = model.loss(ids, labels, cu_seqlens=cu, reduction="sum", chunk_size=6)
    else:
        logits = model(ids, cu_seqlens=cu)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie,lm_head_bias", [(True, False), (False, True)])
def test_model_loss_equals_full_logits_path(tie, lm_head_bias):
    """model.loss (fused) against F.cross_entropy on model(...)'s logits, both fp32, in the loss and every
    parameter's gradient (the tied weight gets both the embedding's and the LM head's), with
    test_model_packed.py's tolerances for two fp32 computations of one step (the loss itself is checked against
    float64 above; ops take no float64 model)."""
    model = _tiny_model(torch.float32, tie, lm_head_bias)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (40,), generator=gen)
    labels = torch.randint(0, 96, (40,), generator=gen)
    labels[[9, 25, 39]] = IGNORE
    cu = torch.tensor([0, 10, 26, 40], dtype=torch.int32)
    loss, got = _model_step(model, ids, labels, cu, fused=True)
    want_loss, want = _model_step(model, ids, labels, cu, fused=False)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max().item()
        assert (got[name] - want[name]).abs().max().item() <= 1e-4 * scale, name


def test_model_loss_rejects_mismatched_labels():
    model = _tiny_model(torch.float32)
    ids = torch.zeros(2, 5, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels"):
        model.loss(ids, torch.zeros(2, 4, dtype=torch.int64))


@pytest.mark.parametrize("change,error,match", [
    (dict(hidden=[1.0]), TypeError, "hidden"),
    (dict(hidden=torch.zeros(4, 8, dtype=torch.int64)), TypeError, "hidden"),
    (dict(weight=torch.zeros(10, 7)), ValueError, "weight"),
    (dict(weight=torch.zeros(10, 8, dtype=torch.bfloat16)), TypeError, "weight"),
    (dict(bias=torch.zeros(9)), ValueError, "bias"),
    (dict(labels=torch.zeros(4)), TypeError, "labels"),
    (dict(labels=torch.zeros(5, dtype=torch.int64)), ValueError, "labels"),
    (dict(labels=torch.tensor([0, 1, 10, 2])), ValueError, "labels"),
    (dict(labels=torch.tensor([0, 1, -1, 2])), ValueError, "labels"),
    (dict(reduction="none"), ValueError, "reduction"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
])
def test_bad_input(change, error, match):
    args = dict(hidden=torch.zeros(4, 8), weight=torch.zeros(10, 8), labels=torch.tensor([0, 1, IGNORE, 9]),
                bias=None, reduction="mean", chunk_size=None)
    args.update(change)
    with pytest.raises(error, match=match):
        linear_cross_entropy(args["hidden"], args["weight"], args["labels"], args["bias"],
                             reduction=args["reduction"], chunk_size=args["chunk_size"])

"""The packed (training) forward: `model(ids, cu_seqlens=cu)` equals running every document alone through the
batch form (itself checked against transformers in test_model_transformers.py), in logits and in the parameter
gradients of a summed next-token loss; positions, bad inputs and torch.compile of a packed training step."""

import pytest
import torch
import torch.nn.functional as F

from zaya_rt.model import ZayaConfig, ZayaForCausalLM

LOGITS_TOL, GRAD_TOL = 1e-5, 1e-4

CONFIGS = {
    # head_dim 12: the reference attention; odd hidden/vocab/expert sizes, sliding window shorter than documents
    "ref_attention_sliding_odd": dict(
        vocab_size=53, hidden_size=36, num_attention_heads=3, num_key_value_heads=1, head_dim=12,
        moe_intermediate_size=20, num_experts=3, router_hidden_size=14, num_hidden_layers=3,
        layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"], sliding_window=3, cca_time0=3, cca_time1=2,
    ),
    # head_dim 32: zaya_rt's attention kernels; biases everywhere, skip passthrough, untied head
    "kernel_attention_biases": dict(
        vocab_size=61, hidden_size=40, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        moe_intermediate_size=24, num_experts=5, router_hidden_size=18, num_hidden_layers=2,
        layer_types=["hybrid", "hybrid_sliding"], sliding_window=4, attention_bias=True, lm_head_bias=True,
        tie_word_embeddings=False, skip_passthrough=True, cca_time0=2, cca_time1=3,
    ),
}
# Document lengths: one-token documents at the start, in the middle and at the end.
DOC_LENS = [1, 7, 1, 12, 5, 1]


def _model(name: str, seed: int) -> ZayaForCausalLM:
    cfg = ZayaConfig(max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                     **CONFIGS[name])
    model = ZayaForCausalLM(cfg).init_random(seed=seed, std=0.2)
    with torch.no_grad():  # spread the router's probabilities so that tokens take different experts and skips
        for layer in model.model.layers:
            layer.mlp.gate.router_mlp.out_proj.weight.mul_(5.0)
    return model


def _packed_inputs(vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (sum(DOC_LENS),), generator=gen)
    cu = torch.tensor([0, *torch.tensor(DOC_LENS).cumsum(0).tolist()], dtype=torch.int32)
    return ids, cu


def _next_token_labels(ids: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """labels[i] = ids[i + 1] inside a document, -100 on each document's last token."""
    labels = torch.cat([ids[1:], ids.new_full((1,), -100)])
    labels[cu[1:].long() - 1] = -100
    return labels


def _loss(logits_NV: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_NV.float(), labels_N, ignore_index=-100, reduction="sum")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_packed_equals_documents_alone(name):
    seed = sorted(CONFIGS).index(name)
    model = _model(name, seed)
    ids, cu = _packed_inputs(model.config.vocab_size, seed + 10)
    labels = _next_token_labels(ids, cu)

    model.zero_grad()
    packed = model(ids[None], cu_seqlens=cu)
    assert packed.shape == (1, ids.numel(), model.config.vocab_size)
    _loss(packed[0], labels).backward()
    packed_grads = _grads(model)

    model.zero_grad()
    alone = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        logits = model(ids[None, a:b])[0]  # the batch form, one document
        _loss(logits, labels[a:b]).backward()  # grads accumulate over the documents
        alone.append(logits.detach())
    alone_grads = _grads(model)

    assert _rel(packed[0].detach(), torch.cat(alone)) < LOGITS_TOL
    assert sorted(packed_grads) == sorted(alone_grads)
    assert len(packed_grads) == len(list(model.parameters()))  # every parameter takes part
    worst = max(packed_grads, key=lambda n: _rel(packed_grads[n], alone_grads[n]))
    assert _rel(packed_grads[worst], alone_grads[worst]) < GRAD_TOL, worst
    # the documents interact if packed as one sequence: the test can see a missed boundary
    joined = model(ids[None]).detach()[0]
    assert _rel(joined, torch.cat(alone)) > 1e-3


def test_flat_ids_and_position_ids():
    model = _model("kernel_attention_biases", 3)
    ids, cu = _packed_inputs(model.config.vocab_size, 4)
    with torch.no_grad():
        base = model(ids, cu_seqlens=cu)
        assert base.shape == (ids.numel(), model.config.vocab_size)
        starts = torch.repeat_interleave(cu[:-1].long(), torch.tensor(DOC_LENS))
        restart = torch.arange(ids.numel()) - starts
        assert torch.equal(model(ids, cu_seqlens=cu, position_ids=restart[None]), base)
        # RoPE is relative: shifting each document's positions by its own constant changes nothing ...
        shift = torch.repeat_interleave(torch.tensor([3, 0, 11, 5, 2, 40]), torch.tensor(DOC_LENS))
        assert _rel(model(ids, cu_seqlens=cu, position_ids=restart + shift), base) < LOGITS_TOL
        # ... while positions that are not a shift do change the logits
        assert _rel(model(ids, cu_seqlens=cu, position_ids=torch.arange(ids.numel()).flip(0)), base) > 1e-4


@pytest.mark.parametrize("bad, error, match", [
    (dict(cu_seqlens=torch.tensor([0, 3, 5], dtype=torch.int64)), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 3, 4], dtype=torch.int32)), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 4, 3, 5], dtype=torch.int32)), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([1, 5], dtype=torch.int32)), ValueError, "cu_seqlens"),
    (dict(cu_seqlens=[0, 5]), TypeError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 5], dtype=torch.int32), attention_mask=torch.ones(1, 5)), ValueError,
     "attention_mask"),
    (dict(cu_seqlens=torch.tensor([0, 5], dtype=torch.int32), position_ids=torch.arange(4)), ValueError,
     "position_ids"),
    (dict(cu_seqlens=torch.tensor([0, 5], dtype=torch.int32), position_ids=torch.zeros(5)), TypeError,
     "position_ids"),
    (dict(position_ids=torch.arange(5)), ValueError, "position_ids"),
])
def test_bad_packed_inputs_raise(bad, error, match):
    model = _model("kernel_attention_biases", 0)
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    with pytest.raises(error, match=match):
        model(ids, **bad)


def test_two_row_ids_with_cu_seqlens_raise():
    model = _model("kernel_attention_biases", 0)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 5, dtype=torch.long), cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))


def test_compiled_packed_training_step_equals_eager():
    model = _model("kernel_attention_biases", 5)
    ids, cu = _packed_inputs(model.config.vocab_size, 6)
    labels = _next_token_labels(ids, cu)

    def step(ids, cu, labels):
        return _loss(model(ids, cu_seqlens=cu), labels)

    model.zero_grad()
    eager_loss = step(ids, cu, labels)
    eager_loss.backward()
    eager_grads = _grads(model)

    torch._dynamo.reset()
    model.zero_grad()
    # aot_eager traces the ops' fake kernels and autograd formulas as inductor does, without its code generation
    compiled_loss = torch.compile(step, backend="aot_eager")(ids, cu, labels)
    compiled_loss.backward()
    compiled_grads = _grads(model)

    assert _rel(compiled_loss.detach(), eager_loss.detach()) < LOGITS_TOL
    assert sorted(compiled_grads) == sorted(eager_grads)
    for n in eager_grads:
        assert _rel(compiled_grads[n], eager_grads[n]) < GRAD_TOL, n

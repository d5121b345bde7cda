"""`zaya_rt.benchmarks.decode_floor`: the weight bytes one batch-1 decode token reads, against a count from the
config's shapes, tied and untied LM heads, fp32 and bf16; and the bandwidth probe's argument checks."""

import pytest
import torch

from zaya_rt.benchmarks.decode_floor import decode_bytes_per_token, read_bandwidth_gb_s
from zaya_rt.runtime.tiny import tiny_model


def _expected_bytes(model, tied: bool) -> int:
    """All weights from the state dict's shapes, less E-1 of every E experts and, untied, all but one
    embedding row."""
    cfg, elt = model.config, model.lm_head.weight.element_size()
    total = 0
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        n = t.numel() * t.element_size()
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            n = n // cfg.num_experts
        if name == "model.embed_tokens.weight" and not tied:
            n = cfg.hidden_size * elt
        total += n
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_decode_bytes_per_token(dtype, tied):
    model = tiny_model(seed=3, dtype=dtype)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    got = decode_bytes_per_token(model)
    assert got == _expected_bytes(model, tied)
    cfg = model.config
    expert = 3 * cfg.moe_intermediate_size * cfg.hidden_size * model.lm_head.weight.element_size()
    lm_head = cfg.vocab_size * cfg.hidden_size * model.lm_head.weight.element_size()
    assert got > cfg.num_hidden_layers * expert + lm_head  # one expert a layer and the LM head, at least


def test_read_bandwidth_measures_and_checks():
    assert read_bandwidth_gb_s(1 << 20, repeats=2) > 0
    for bad in (dict(nbytes=0), dict(nbytes=1 << 20, repeats=0)):
        with pytest.raises(ValueError, match="read_bandwidth_gb_s"):
            read_bandwidth_gb_s(**bad)


def test_run_e2e_reports_the_batch1_floor():
    from zaya_rt.benchmarks.e2e import run_e2e

    config = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=32, moe_intermediate_size=64, num_experts=4, router_hidden_size=16,
                  max_position_embeddings=256)
    lines = []
    results = run_e2e(config=config, batches=(1, 2), prompt_len=8, new_tokens=3, repeats=1,
                      peers=[("eager", "sdpa")], log=lines.append)
    one, two = results
    assert one.floor_tok_s is not None and one.floor_tok_s > 0 and two.floor_tok_s is None
    floor_lines = [s for s in lines if "floor" in s]
    assert len(floor_lines) == 2, lines  # the floor itself, and batch 1's fraction of it
    assert "MB per token" in floor_lines[0] and "of the bandwidth floor" in floor_lines[1]

"""ZayaForCausalLM rejects bad inputs with clear errors."""

import pytest
import torch

import zaya_rt


@pytest.fixture(scope="module")
def model():
    cfg = zaya_rt.ZayaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=16, moe_intermediate_size=16, num_experts=3,
                             router_hidden_size=8)
    return zaya_rt.ZayaForCausalLM(cfg).init_random(0).eval()


@pytest.mark.parametrize(
    "ids, mask, exc, pattern",
    [
        ([[1, 2, 3]], None, TypeError, "input_ids must be a torch.Tensor"),
        (torch.ones(1, 3), None, TypeError, "int64 or int32"),
        (torch.ones(3, dtype=torch.long), None, ValueError, r"\[batch, tokens\]"),
        (torch.ones(1, 0, dtype=torch.long), None, ValueError, "tokens >= 1"),
        (torch.tensor([[1, 40]]), None, ValueError, r"\[0, 40\)"),
        (torch.tensor([[-1, 2]]), None, ValueError, r"\[0, 40\)"),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4), ValueError, "attention_mask has shape"),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(3, 3), ValueError, "attention_mask has shape"),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(6), ValueError, r"\[batch, tokens\] tensor"),
    ],
)
def test_bad_inputs(model, ids, mask, exc, pattern):
    with pytest.raises(exc, match=pattern):
        model(ids, mask)


def test_cache_limits(model):
    cache = model.new_cache(2, 4)
    with pytest.raises(ValueError, match="cache holds 2 sequences"):
        model(torch.ones(1, 2, dtype=torch.long), cache=cache)
    model(torch.ones(2, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="at most 4 tokens; 3 stored \\+ 2 new"):
        model(torch.ones(2, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate_greedy(torch.ones(1, 2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="positive"):
        model.new_cache(0, 4)

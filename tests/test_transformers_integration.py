"""experts_implementation="zaya_rt" inside transformers' own Zaya model equals "eager"."""

import sys

import torch

import zaya_rt  # noqa: F401  (installs the registration hook)
from hf_helpers import hf_model


def test_experts_implementation_zaya_rt_matches_eager(tmp_path, monkeypatch):
    import transformers

    hf_model(seed=4, num_experts=7).save_pretrained(tmp_path)
    eager = transformers.ZayaForCausalLM.from_pretrained(tmp_path, experts_implementation="eager")
    ours = transformers.ZayaForCausalLM.from_pretrained(tmp_path, experts_implementation="zaya_rt")
    assert ours.config._experts_implementation == "zaya_rt"
    calls = []
    original = zaya_rt.ops.moe_experts
    monkeypatch.setattr(zaya_rt.ops, "moe_experts", lambda *a: calls.append(1) or original(*a))
    ids = torch.randint(1, eager.config.vocab_size, (2, 9))
    with torch.no_grad():
        want = eager(ids).logits
        got = ours(ids).logits
    assert len(calls) == eager.config.num_hidden_layers
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_registration_is_lazy():
    import subprocess

    code = (
        "import sys, zaya_rt; assert 'transformers' not in sys.modules\n"
        "from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS\n"
        "assert 'zaya_rt' in ALL_EXPERTS_FUNCTIONS, list(ALL_EXPERTS_FUNCTIONS)\nprint('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def _zaya_rt_attention_calls(monkeypatch) -> list:
    calls = []
    original = zaya_rt.ops.attention_varlen
    monkeypatch.setattr(zaya_rt.ops, "attention_varlen", lambda *a, **k: calls.append(k.get("window")) or original(*a, **k))
    return calls


def test_attn_implementation_zaya_rt_matches_eager(tmp_path, monkeypatch):
    """Full-attention and sliding-window layers, prefill and cached greedy decode, unpadded (kernel path) and
    left-padded (transformers' mask on the reference path)."""
    import transformers

    hf_model(seed=5, head_dim=32, layer_types=["hybrid", "hybrid_sliding", "hybrid"],
             sliding_window=4).save_pretrained(tmp_path)
    eager = transformers.ZayaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    ours = transformers.ZayaForCausalLM.from_pretrained(tmp_path, attn_implementation="zaya_rt")
    assert ours.config._attn_implementation == "zaya_rt"
    calls = _zaya_rt_attention_calls(monkeypatch)
    ids = torch.randint(1, eager.config.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, eager(ids).logits, rtol=1e-5, atol=1e-5)
        assert calls == [None, 4, None]
        want = eager.generate(ids, max_new_tokens=6, do_sample=False)
        got = ours.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        want = eager(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)


def test_attention_registration_is_lazy():
    import subprocess

    code = (
        "import sys, zaya_rt; assert 'transformers' not in sys.modules\n"
        "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
        "from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS\n"
        "assert 'zaya_rt' in ALL_ATTENTION_FUNCTIONS and 'zaya_rt' in ALL_MASK_ATTENTION_FUNCTIONS\nprint('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr

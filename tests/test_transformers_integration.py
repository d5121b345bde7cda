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

"""The runner's direct `_C` path (runtime.direct, the CPU default) against its checked `zaya_rt.ops` path:
the same greedy tokens and the logits each token was sampled from, over prefill, chunked prefill, shared
prefixes and decode, in fp32 and bf16, with and without skip passthrough and attention biases."""

import pytest
import torch

import zaya_rt
from engine_helpers import record_logits
from hf_helpers import hf_model
from zaya_rt.runtime.runner import ModelRunner

CONFIGS = {
    "plain": dict(),
    "bias_skip_passthrough": dict(attention_bias=True, num_hidden_layers=3),
}
# Both paths run the same kernels on the same data except the dense projections (zaya_rt's GEMM against
# PyTorch's), so the logits agree to a few roundings of the dtype.
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def _engine(model, direct_calls: bool):
    engine = zaya_rt.Engine(model, num_pages=64, page_size=16, max_batch=4, max_tokens_per_step=40)
    engine.runner = ModelRunner(model, engine.cache, direct_calls=direct_calls)
    assert engine.runner.direct is direct_calls
    return engine


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_direct_path_equals_ops_path(tmp_path, name, dtype):
    hf = hf_model(seed=11, head_dim=32, **CONFIGS[name])
    hf.save_pretrained(tmp_path)
    model = zaya_rt.load(tmp_path, dtype=dtype)
    if name == "bias_skip_passthrough":  # the older skip semantics (not a checkpoint field)
        for layer in model.model.layers:
            layer.mlp.skip_passthrough = True
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(1, hf.config.vocab_size, (20,), generator=g).tolist()
    prompts = [shared + [7, 8], shared + [9], torch.randint(1, hf.config.vocab_size, (45,), generator=g).tolist(), [3]]
    params = zaya_rt.SamplingParams(max_new_tokens=6, temperature=0)
    results = []
    for direct_calls in (True, False):
        engine = _engine(model, direct_calls)
        seen = record_logits(engine)
        results.append((engine.generate(prompts, params), seen))
    (out_d, seen_d), (out_o, seen_o) = results
    for rid, (toks_d, toks_o) in enumerate(zip(out_d, out_o)):
        # Compare up to the first token where the paths part (bf16 near-ties may); the contexts agree until then.
        n = next((i for i, (a, b) in enumerate(zip(toks_d, toks_o)) if a != b), len(toks_o) - 1) + 1
        got, want = torch.stack(seen_d[rid][:n]).float(), torch.stack(seen_o[rid][:n]).float()
        rel = ((got - want).abs().max() / want.abs().max()).item()
        assert rel < TOL[dtype], f"request {rid}: direct path logits differ by {rel:.2e}"
    if dtype == torch.float32:
        assert out_d == out_o

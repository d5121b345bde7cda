"""The runner's direct path keeps each kernel's outputs in buffers it reuses step after step
(`runtime.direct`). Poisoned between steps (NaN, out-of-range expert ids), they must not leak into any result:
the Engine's greedy tokens and logits equal the model's own forward (`model/modeling.py`, teacher-forced over
prompt + generated tokens) on fresh random weights, fp32 and bf16, batch 1 and ragged batches with chunked
prefill, and prefill steps above `REUSE_MAX_ROWS` rows (fresh outputs)."""

import pytest
import torch

import zaya_rt
from engine_helpers import record_logits
from zaya_rt.runtime import direct
from zaya_rt.runtime.tiny import tiny_model

# Engine and full forward run the same kernels on different row groupings (decode vs prefill attention,
# per-row vs blocked GEMMs), so they agree to a few roundings of the dtype.
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _reused_buffers(kernels) -> list[torch.Tensor]:
    """Every output buffer the direct kernel set and the module-level decode attention hold."""
    linears = list(kernels._linear.values()) + [linear for linear, _ in kernels._qkv.values()]
    found = [entry[2] for op in linears for entry in op._params.values()]  # (params, bytes, out, offsets)
    found += [entry[1] for op in kernels._residual.values() for entry in op._cached.values()]  # (params, (r, out))
    for table in (kernels._router, kernels._experts, kernels._cca):  # (params, bytes, output or outputs)
        found += [entry[2] for op in table.values() for entry in op._cached.values()]
    found += [entry[2] for entry in direct._DECODE.values()]
    flat = []
    for t in found:  # None: a call of more than REUSE_MAX_ROWS rows, whose outputs are fresh tensors
        flat += list(t) if isinstance(t, tuple) else [t] if t is not None else []
    assert all(isinstance(t, torch.Tensor) for t in flat)
    return flat


def _poison_after_each_step(engine) -> list[int]:
    """Wraps engine.step: afterwards every reused buffer holds NaN (ints: expert id 1000). Returns a list
    whose length counts the buffers poisoned."""
    count, step = [], engine.step

    def poisoned_step():
        out = step()
        for t in _reused_buffers(engine.runner.kernels):
            t.fill_(float("nan") if t.is_floating_point() else 1000)
            count.append(1)
        return out

    engine.step = poisoned_step
    return count


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lengths,step_tokens", [([9], 11), ([1, 5, 17, 9], 11), ([70, 3], 96)],
                         ids=["batch1", "ragged", "prefill_above_reuse_rows"])
def test_reused_buffers_equal_model_forward(dtype, lengths, step_tokens):
    model = tiny_model(seed=17, dtype=dtype)
    engine = zaya_rt.Engine(model, num_pages=64, page_size=4, max_batch=4, max_tokens_per_step=step_tokens)
    assert engine.runner.direct
    seen = record_logits(engine)
    poisoned = _poison_after_each_step(engine)
    g = torch.Generator().manual_seed(len(lengths))
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    outputs = engine.generate(prompts, zaya_rt.SamplingParams(max_new_tokens=5, temperature=0))
    assert poisoned, "no reused buffer was poisoned"
    experts = [entry[2] for op in engine.runner.kernels._experts.values() for entry in op._cached.values()]
    assert any(out is None for out in experts) == (sum(lengths) > direct.REUSE_MAX_ROWS)  # fresh prefill outputs
    for prompt, out, rid in zip(prompts, outputs, engine.last_request_ids):
        with torch.no_grad():
            want = model(torch.tensor([prompt + out]))[0, len(prompt) - 1 : len(prompt) - 1 + len(out)].float()
        got = torch.stack(seen[rid]).float()
        assert torch.isfinite(got).all()
        rel = ((got - want).abs().max() / want.abs().max()).item()
        assert rel < TOL[dtype], f"request {rid}: logits differ from the model's forward by {rel:.2e}"
        if dtype == torch.float32:
            assert out == want.argmax(-1).tolist()

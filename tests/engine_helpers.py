"""Shared pieces of the engine tests: a randomised transformers model with its zaya_rt twin, and an engine
wrapper that records the logits each request was sampled from (test-only; needs transformers)."""

from __future__ import annotations

import torch

import zaya_rt
from hf_helpers import hf_model


def model_pair(tmp_path, seed: int = 0, **overrides):
    """(transformers model, zaya_rt model loaded from its checkpoint), fp32, every weight randomised."""
    hf = hf_model(seed=seed, **overrides)
    hf.save_pretrained(tmp_path)
    return hf, zaya_rt.load(tmp_path)


def record_logits(engine) -> dict[int, list[torch.Tensor]]:
    """Makes `engine` keep, per request id, the logits row of every token it samples."""
    seen: dict[int, list[torch.Tensor]] = {}
    sample = engine._sample

    def recording(logits, seqs):
        for row, seq in zip(logits, seqs):
            seen.setdefault(seq.request_id, []).append(row.detach().clone())
        return sample(logits, seqs)

    engine._sample = recording
    return seen


def hf_greedy(hf, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


def hf_logits(hf, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """transformers' logits for each generated token's position (teacher forced): [len(generated), vocab]."""
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = hf(ids).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)]


def assert_matches(hf, prompt, generated, logits_rows, tol=2e-5):
    """Engine's greedy tokens are transformers' greedy tokens and its logits match transformers' to `tol`
    (relative). Checked with one teacher-forced transformers forward: every generated token is the argmax
    of transformers' logits after the tokens before it, which is what transformers' greedy generate emits."""
    want = hf_logits(hf, prompt, generated)
    assert generated == want.argmax(-1).tolist()
    got = torch.stack(logits_rows)
    assert got.shape == want.shape
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel < tol, f"logits differ from transformers: relative error {rel:.2e}"

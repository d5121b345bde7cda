"""Engines Markovian RSA runs on, and the one call the loop makes per round.

An engine is anything with `generate(prompts, params) -> list[list[int]]`: prompts are N token-id lists,
params one SamplingParams per prompt (RSA gives each request its own seed), the result the generated ids
per prompt (no prompt ids). zaya_rt's `Engine` is one; `HFEngine` wraps a transformers causal LM and
`OpenAIEngine` an OpenAI-compatible `/v1/completions` server (vLLM, SGLang) given token-id prompts. An
engine may set `last_finish_reasons` (one 'stop'/'length'/... per prompt of its last call).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from zaya_rt.runtime.engine import Engine
from zaya_rt.runtime.params import SamplingParams


def _as_list(params, n: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n or not all(isinstance(p, SamplingParams) for p in params):
        raise ValueError(f"params must be a SamplingParams or {n} of them (one per prompt)")
    return params


def _check_prompts(prompts) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a list of token-id lists")
    out = []
    for p in prompts:
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or not p:
            raise ValueError("each prompt must be a non-empty list of token ids")
        out.append([int(t) for t in p])
    return out


def _stop_reason(ids: list[int], params: SamplingParams) -> str:
    if ids and ids[-1] in params.stop_token_ids:
        return "stop"
    return "length" if len(ids) >= params.max_new_tokens else "unknown"


class HFEngine:
    """A transformers causal LM as an RSA engine: one batched `generate` per call, prompts left-padded.

    model: a transformers PreTrainedModel with `generate`. pad_token_id: padding id (default: the model's
    pad, else its EOS, else 0). The batch shares one sampling setup (temperature, top_p, top_k, min_p, budget,
    stop ids); the first prompt's seed seeds torch's RNG for the call (transformers samples the whole batch
    from one generator), so a call is reproducible but rows are not independent of the batch.
    """

    def __init__(self, model, *, pad_token_id: int | None = None) -> None:
        if not callable(getattr(model, "generate", None)) or not hasattr(model, "config"):
            raise TypeError("HFEngine needs a transformers causal LM (with .generate and .config)")
        self.model = model
        if pad_token_id is None:
            pad_token_id = getattr(model.config, "pad_token_id", None)
        if pad_token_id is None:
            eos = getattr(model.config, "eos_token_id", None)
            pad_token_id = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.last_finish_reasons: list[str] = []

    def generate(self, prompts, params) -> list[list[int]]:
        """Generated ids per prompt (the stop token kept, padding dropped)."""
        from transformers import GenerationConfig

        prompts = _check_prompts(prompts)
        if not prompts:
            self.last_finish_reasons = []
            return []
        plist = _as_list(params, len(prompts))
        shared = {replace(p, seed=None) for p in plist}
        if len(shared) != 1:
            raise ValueError("HFEngine: all prompts of a call must share sampling settings (seeds may differ)")
        p = plist[0]
        device = next(self.model.parameters()).device
        width = max(len(x) for x in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, x in enumerate(prompts):
            ids[row, width - len(x):] = torch.tensor(x)
            mask[row, width - len(x):] = 1
        sample = p.temperature > 0
        config = GenerationConfig(
            max_new_tokens=p.max_new_tokens, min_new_tokens=0, do_sample=sample,
            temperature=p.temperature if sample else None, top_p=p.top_p if sample else None,
            top_k=p.top_k if sample else None, min_p=(p.min_p or None) if sample else None,
            eos_token_id=list(p.stop_token_ids) or None, pad_token_id=self.pad_token_id)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if p.seed is not None:
                torch.manual_seed(p.seed % 2**63)
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      generation_config=config)
        results = []
        for row in out[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in p.stop_token_ids), len(row))
            results.append(row[:cut])
        self.last_finish_reasons = [_stop_reason(r, p) for r in results]
        return results


@dataclass
class OpenAIEngine:
    """An OpenAI-compatible completions server as an RSA engine (vLLM, SGLang: token-id prompts).

    base_url: the server root (`http://host:8000`, with or without `/v1`); model: the served model name;
    api_key: sent as a Bearer token. Each prompt is its own request (its own seed), all of a call sent at once
    from `max_workers` threads so the server batches them. The response must carry the generated token ids
    (vLLM: `return_token_ids`, which this engine requests; or logprobs tokens as `token_id:N`).
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 3600.0
    max_workers: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIEngine: base_url must be an http(s) URL, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("OpenAIEngine: model must be a non-empty string")
        root = self.base_url.rstrip("/")
        self.url = root + ("/completions" if root.endswith("/v1") else "/v1/completions")
        self.last_finish_reasons: list[str] = []

    def request_body(self, prompt: list[int], p: SamplingParams) -> dict:
        body = {"model": self.model, "prompt": prompt, "max_tokens": p.max_new_tokens,
                "temperature": p.temperature, "top_p": p.top_p, "return_token_ids": True}
        if p.top_k:
            body["top_k"] = p.top_k
        if p.min_p:
            body["min_p"] = p.min_p
        if p.stop_token_ids:
            body["stop_token_ids"] = list(p.stop_token_ids)
        if p.seed is not None:
            body["seed"] = p.seed % 2**63
        return body

    def _post(self, body: dict) -> tuple[list[int], str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise RuntimeError(f"OpenAIEngine: {self.url} answered HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise RuntimeError(f"OpenAIEngine: cannot reach {self.url}: {exc.reason}") from None
        try:
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"OpenAIEngine: reply without choices: {str(reply)[:300]}") from None
        ids = choice.get("token_ids")
        if ids is None:
            tokens = (choice.get("logprobs") or {}).get("tokens") or []
            if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
                ids = [int(t.split(":", 1)[1]) for t in tokens]
        if ids is None:
            raise RuntimeError("OpenAIEngine: the reply holds no generated token ids; the server must support "
                               "`return_token_ids` (vLLM >= 0.10.2) or logprobs with return_tokens_as_token_ids")
        return [int(t) for t in ids], choice.get("finish_reason") or "unknown"

    def generate(self, prompts, params) -> list[list[int]]:
        """Generated ids per prompt, requests sent concurrently."""
        prompts = _check_prompts(prompts)
        plist = _as_list(params, len(prompts))
        if not prompts:
            self.last_finish_reasons = []
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(prompts))) as pool:
            replies = list(pool.map(self._post, [self.request_body(x, p) for x, p in zip(prompts, plist)]))
        self.last_finish_reasons = [reason for _, reason in replies]
        return [ids for ids, _ in replies]


@dataclass
class RoundOutput:
    completions: list[list[int]]
    finish_reasons: list[str]
    prefix_hit_tokens: int | None
    peak_kv_pages: int | None


def run_round(engine, prompts: list[list[int]], params: list[SamplingParams], progress=None) -> RoundOutput:
    """Submits all prompts of a round at once; returns completions, finish reasons and the engine's counters
    (zaya_rt's Engine: prefix-cache hit tokens and peak KV pages of this round; None where unknown).
    progress: a tqdm bar advanced per generated token (zaya_rt's Engine) or per finished round."""
    if not callable(getattr(engine, "generate", None)):
        raise TypeError(f"engine must have generate(prompts, params), got {type(engine).__name__}")
    n = len(prompts)
    if isinstance(engine, Engine):
        hits0 = engine.stats["prefix_hit_tokens"]
        engine.cache.reset_peak()
        completions: list[list[int]] = [[] for _ in prompts]
        for index, token in engine.stream(prompts, params):
            completions[index].append(token)
            if progress is not None:
                progress.update(1)
        rids = engine.last_request_ids
        reasons = [engine.finish_reason(rid) for rid in rids]
        for rid in rids:
            engine.forget(rid)
        return RoundOutput(completions, reasons, engine.stats["prefix_hit_tokens"] - hits0,
                           engine.cache.peak_held_pages)
    out = engine.generate(prompts, params)
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence) or len(out) != n:
        got = len(out) if isinstance(out, Sequence) else type(out).__name__
        raise ValueError(f"engine.generate returned {got} completions for {n} prompts")
    completions = []
    for ids in out:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or any(
                not isinstance(t, int) or isinstance(t, bool) for t in ids):
            raise ValueError("engine.generate must return lists of int token ids")
        completions.append(list(ids))
    reasons = getattr(engine, "last_finish_reasons", None)
    if not isinstance(reasons, list) or len(reasons) != n:
        reasons = [_stop_reason(ids, p) for ids, p in zip(completions, params)]
    if progress is not None:
        progress.update(sum(len(c) for c in completions))
    return RoundOutput(completions, list(reasons), None, None)

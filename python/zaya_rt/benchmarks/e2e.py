"""End-to-end greedy decode throughput (SPEC section 8): zaya_rt's Engine against transformers'
`ZayaForCausalLM.generate` on the same random weights, after a 128-token prompt, at batch 1 and 16.

Decode tok/s = batch * (N - 1) / (time(generate N tokens) - time(generate 1 token)), so prefill is excluded
for both. transformers runs every combination of experts_implementation eager/grouped_mm and
attn_implementation eager/sdpa, and the best is the peer. The timed runs of ours and of every peer take turns,
best of `repeats` each, so that all of them see the same state of a shared machine. The Engine runs decode steps
as CUDA graphs on CUDA and as recorded step tapes on the CPU (its defaults); it is also timed with
`cuda_graphs=False` to show what those give. On the CPU, batch 1
is also set against its memory-bandwidth floor (`decode_floor`): the host's measured read bandwidth over the
weight bytes one token reads, and the fraction of that floor reached.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch

from zaya_rt.benchmarks.decode_floor import decode_bytes_per_token, read_bandwidth_gb_s

# SPEC section 8's 124M-parameter config (heads chosen as 8 x 64 with 2 kv heads, router width 64).
CONFIG_124M = dict(vocab_size=32768, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                   num_key_value_heads=2, head_dim=64, moe_intermediate_size=512, num_experts=16,
                   router_hidden_size=64, max_position_embeddings=4096)
# ZAYA1-8B's layer shape (D 2048, 8 x 128 heads, 2 kv heads, 16 experts of width 2048, vocab 262K), fewer layers.
CONFIG_8B_SHAPED = dict(vocab_size=262272, hidden_size=2048, num_attention_heads=8, num_key_value_heads=2,
                        head_dim=128, moe_intermediate_size=2048, num_experts=16, router_hidden_size=256,
                        max_position_embeddings=8192)


@dataclass
class E2EResult:
    batch: int
    ours_tok_s: float
    peer_tok_s: float
    peer_name: str
    all_peers: dict[str, float]
    ours_eager_tok_s: float | None = None  # the Engine without CUDA graphs (CUDA) or step tapes (CPU)
    floor_tok_s: float | None = None  # CPU batch 1: read bandwidth / bytes per token (`decode_floor`)


def use_hf_implementation(hf, experts_impl: str, attn_impl: str, log) -> bool:
    """Switches the transformers model to these experts/attention implementations; False (logged) when this
    transformers/torch lacks one."""
    try:
        hf.set_experts_implementation(experts_impl)
        hf.set_attn_implementation(attn_impl)
    except Exception as exc:  # an implementation this transformers/torch lacks
        log(f"  transformers {experts_impl}/{attn_impl}: unavailable ({exc})")
        return False
    return True


def _build(config: dict, device: str, dtype: torch.dtype, seed: int):
    """(transformers model, zaya_rt model) with the same random weights."""
    import transformers

    import zaya_rt

    torch.manual_seed(seed)
    hf_cfg = transformers.ZayaConfig(**config, tie_word_embeddings=True, pad_token_id=0, eos_token_id=None,
                                     bos_token_id=None)
    hf = transformers.ZayaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as path:
        hf.save_pretrained(path)
        ours = zaya_rt.load(path, dtype=dtype).to(device).eval()
    hf = hf.to(device=device, dtype=dtype)
    for name, buf in hf.named_buffers():
        if name.endswith("balancing_biases"):
            buf.data = buf.data.float()
    return hf, ours


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best_time(fn, device: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_decode_tok_s(generators: dict, batch: int, new_tokens: int, device: str,
                             repeats: int) -> dict[str, float]:
    """decode_tok_s of every generator, their timed runs taken in turns (ours, peer 1, peer 2, ..., ours, ...)
    so that all of them see the same machine: a shared CPU's speed drifts over the seconds one takes."""
    for generate in generators.values():
        generate(2)  # warm-up
    t_all = dict.fromkeys(generators, float("inf"))
    t_one = dict.fromkeys(generators, float("inf"))
    for _ in range(repeats):
        for name, generate in generators.items():
            t_all[name] = min(t_all[name], _best_time(lambda: generate(new_tokens), device, 1))
            t_one[name] = min(t_one[name], _best_time(lambda: generate(1), device, 1))
    return {name: batch * (new_tokens - 1) / max(t_all[name] - t_one[name], 1e-9) for name in generators}


def run_e2e(*, device: str = "cpu", config: dict | None = None, batches=(1, 16), prompt_len: int = 128,
            new_tokens: int = 32, dtype: torch.dtype = torch.bfloat16, repeats: int = 3, seed: int = 0,
            peers=None, log=print) -> list[E2EResult]:
    """Measures ours and transformers' greedy decode tok/s per batch size."""
    import zaya_rt

    config = dict(CONFIG_124M if config is None else config)
    hf, ours = _build(config, device, dtype, seed)
    log(f"model: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, {config['num_hidden_layers']} "
        f"layers, {dtype}, device {device}")
    floor = None
    if device == "cpu" and 1 in batches:
        gb_s, nbytes = read_bandwidth_gb_s(), decode_bytes_per_token(ours)
        floor = gb_s * 1e9 / nbytes
        log(f"batch-1 floor: read bandwidth {gb_s:.1f} GB/s (fp32 sum over 1 GiB) / {nbytes / 1e6:.1f} MB per token "
            f"-> {floor:.0f} tok/s")
    peers = peers or [(e, a) for e in ("eager", "grouped_mm") for a in ("eager", "sdpa")]
    gen = torch.Generator().manual_seed(seed + 1)
    results = []
    for batch in batches:
        prompts = torch.randint(1, config["vocab_size"], (batch, prompt_len), generator=gen)
        max_batch = max(batch, 1)
        pages = max_batch * -(-(prompt_len + new_tokens + 16) // 16) + 8
        prompt_lists = prompts.tolist()

        def ours_with(cuda_graphs):
            engine = zaya_rt.Engine(ours, num_pages=pages, page_size=16, max_batch=max_batch,
                                    max_tokens_per_step=batch * prompt_len, cuda_graphs=cuda_graphs)

            def ours_generate(n):
                out = engine.generate(prompt_lists, zaya_rt.SamplingParams(max_new_tokens=n, temperature=0))
                engine.cache.clear_prefix_cache()
                return out

            return ours_generate

        generators = {"ours": ours_with(None), "ours eager": ours_with(False)}
        ids = prompts.to(device)
        mask = torch.ones_like(ids)
        for experts_impl, attn_impl in peers:
            if not use_hf_implementation(hf, experts_impl, attn_impl, log):
                continue

            def hf_generate(n, ids=ids, mask=mask, experts_impl=experts_impl, attn_impl=attn_impl):
                hf.set_experts_implementation(experts_impl)
                hf.set_attn_implementation(attn_impl)
                with torch.inference_mode():
                    return hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False)

            generators[f"{experts_impl}/{attn_impl}"] = hf_generate
        rates = interleaved_decode_tok_s(generators, batch, new_tokens, device, repeats)
        ours_rate = rates.pop("ours")
        ours_eager = rates.pop("ours eager")
        static = "CUDA graphs" if device == "cuda" else "step tapes"
        log(f"batch {batch}: zaya_rt with {static} {ours_rate:.1f} tok/s, without {ours_eager:.1f} tok/s "
            f"-> {ours_rate / ours_eager:.2f}x")
        all_peers = rates
        name = max(all_peers, key=all_peers.get)
        batch_floor = floor if batch == 1 else None
        results.append(E2EResult(batch, ours_rate, all_peers[name], name, all_peers, ours_eager, batch_floor))
        log(f"batch {batch}: zaya_rt {ours_rate:.1f} tok/s; transformers best ({name}) {all_peers[name]:.1f} tok/s "
            f"-> {ours_rate / all_peers[name]:.2f}x; all peers: "
            + ", ".join(f"{k} {v:.1f}" for k, v in all_peers.items()))
        if batch_floor is not None:
            log(f"batch 1: zaya_rt {ours_rate:.1f} tok/s = {ours_rate / batch_floor:.2f} of the bandwidth floor "
                f"({batch_floor:.0f} tok/s)")
    return results

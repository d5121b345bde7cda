"""The device script's (bench/device_check.sh) workloads of what zaya_rt's users run, beyond single kernels:

  train  a packed training step (forward, fused loss, backward) of ZAYA1-8B-shaped layers in bf16 over an 8K-token
         window of 4 documents: tokens/s of zaya_rt and of transformers' best training step on the same GPU and
         weights (benchmarks/train.py), and their ratio;
  rsa    RSA's decode: batch 16 and 64 sequences decoding in parallel after 8K-32K-token contexts through the
         Engine (paged cache, CUDA-graph decode steps): decode tokens/s and the % of the HBM roofline that the
         bytes a decode step must read (weights it touches + the K/V of every context) give.

  python -m zaya_rt.benchmarks.device_workloads {train,rsa} [--dry-run] [--budget-s S]

--dry-run runs the same code on the CPU with tiny shapes and one repeat, so that the script cannot rot
(tests/test_device_workloads.py); its numbers mean nothing. --budget-s: rsa skips its remaining cases (with a
line saying so) once this many seconds have passed, to keep the device script inside its time budget.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from zaya_rt.benchmarks.e2e import CONFIG_8B_SHAPED, _sync
from zaya_rt.benchmarks.train import run_train

PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}
# Tiny shapes of the dry run: head dim 64 (zaya_rt's attention kernels), 2 layers (both layer types).
TINY = dict(vocab_size=97, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            moe_intermediate_size=32, num_experts=4, router_hidden_size=16, num_hidden_layers=2,
            max_position_embeddings=512)


def peak_gbs() -> float | None:
    """HBM bandwidth (GB/s) of this GPU from its name, or None (unknown GPU, or the CPU)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_GBS.items() if k in name), None)


def train(dry_run: bool, log=print) -> None:
    """Training step tokens/s, ours and transformers' (best of its experts/attention implementations)."""
    if dry_run:
        config, device, docs, doc_len, repeats = dict(TINY), "cpu", 2, 16, 1
        peers = [("eager", "sdpa")]
    else:
        config, device, docs, doc_len, repeats = dict(CONFIG_8B_SHAPED, num_hidden_layers=2), "cuda", 4, 2048, 3
        peers = [("grouped_mm", "sdpa"), ("eager", "sdpa")]
    tokens = docs * doc_len
    shape = "tiny (dry run)" if dry_run else "ZAYA1-8B-shaped"
    for r in run_train(device=device, config=config, sequences=docs, seq_len=doc_len, dtypes=(torch.bfloat16,),
                       repeats=repeats, peers=peers, log=log):
        log(f"train step, {config['num_hidden_layers']} {shape} layers, {docs} x {doc_len} tokens packed, "
            f"{str(r.dtype).removeprefix('torch.')}: zaya_rt {tokens / r.ours_s:.0f} tokens/s, transformers "
            f"({r.peer_name}) {tokens / r.peer_s:.0f} tokens/s -> {r.ratio:.2f}x")


def decode_step_bytes(model, batch: int, context: int) -> int:
    """Bytes one decode step of `batch` sequences at `context` cached tokens must read: every non-expert weight
    (the tied embedding once, as the LM head), each layer's experts in the share that uniform top-1 routing hits
    (E (1 - (1 - 1/E)^batch) of E), and the K/V of every context in every layer."""
    cfg = model.config
    E = cfg.num_experts
    hit = (1.0 - (1.0 - 1.0 / E) ** batch) if E else 0.0
    total, seen = 0.0, set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        nbytes = p.numel() * p.element_size()
        total += nbytes * hit if ".experts." in name else nbytes
    kv_elt = next(model.parameters()).element_size()
    kv = batch * context * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * kv_elt
    return int(total + kv)


def _decode_rate(model, batch: int, context: int, steps: int, page: int, dry_run: bool, log) -> None:
    import zaya_rt

    device = next(model.parameters()).device
    chunk = min(batch * context, 128 if dry_run else 32768)
    # Sequences whose prompt is in decode while the others prefill (one token per step): room for that too.
    warmup = 2  # pure decode steps before the timed ones: the decode graph of this batch is captured there
    new_tokens = warmup + steps + 2 + -(-batch * context // chunk)
    engine = zaya_rt.Engine(model, num_pages=batch * -(-(context + new_tokens) // page) + 8, page_size=page,
                            max_batch=batch, max_tokens_per_step=chunk)
    gen = torch.Generator().manual_seed(batch * 7 + context)
    params = zaya_rt.SamplingParams(max_new_tokens=new_tokens, temperature=0)
    ids = [engine.add_request(torch.randint(1, model.config.vocab_size, (context,), generator=gen).tolist(), params)
           for _ in range(batch)]
    produced: set[int] = set()
    start = time.perf_counter()
    while len(produced) < batch:  # prefill, and each sequence's first token
        produced.update(rid for rid, _ in engine.step())
    _sync(device.type)
    prefill_s = time.perf_counter() - start
    for _ in range(warmup):
        engine.step()
    _sync(device.type)
    start = time.perf_counter()
    n = sum(len(engine.step()) for _ in range(steps))
    _sync(device.type)
    decode_s = time.perf_counter() - start
    for rid in ids:
        engine.abort(rid)
    if n != batch * steps:
        raise RuntimeError(f"rsa: {steps} decode steps of {batch} sequences gave {n} tokens")
    nbytes = decode_step_bytes(model, batch, context + steps // 2)
    gbs = nbytes * steps / decode_s / 1e9
    peak = peak_gbs()
    log(f"{batch:>5} {context:>8} {batch * context / prefill_s:>12.0f} {n / decode_s:>10.0f} "
        f"{1e3 * decode_s / steps:>8.2f} {nbytes / 1e9:>8.2f} {gbs:>7.0f} "
        f"{'?' if peak is None else f'{gbs / peak:.0%}':>8}")


def rsa(dry_run: bool, budget_s: float, log=print) -> None:
    """RSA decode: batch 16 / 64 at 8K / 32K contexts (cheapest first; later cases skipped past budget_s)."""
    from zaya_rt.model import ZayaConfig, ZayaForCausalLM

    if dry_run:
        raw, device, cases, steps, page = dict(TINY), "cpu", [(2, 40), (3, 72)], 3, 16
    else:
        raw = dict(CONFIG_8B_SHAPED, num_hidden_layers=2, max_position_embeddings=65536)
        device, steps, page = "cuda", 32, 16
        cases = [(16, 8192), (64, 8192), (16, 32768), (64, 32768)]
    cfg = ZayaConfig(**raw, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = ZayaForCausalLM(cfg).init_random(seed=0).to(device=device, dtype=torch.bfloat16).eval()
    peak = peak_gbs()
    shape = "tiny (dry run)" if dry_run else "ZAYA1-8B-shaped"
    log(f"RSA decode: {cfg.num_hidden_layers} {shape} layers, bf16, {steps} greedy decode steps per case "
        f"after the contexts' prefill; roofline {peak or '?'} GB/s; bytes/step = weights touched + K/V read")
    log(f"{'batch':>5} {'context':>8} {'prefill t/s':>12} {'decode t/s':>10} {'ms/step':>8} {'GB/step':>8} "
        f"{'GB/s':>7} {'of peak':>8}")
    start = time.perf_counter()
    for batch, context in cases:
        if time.perf_counter() - start > budget_s:
            log(f"{batch:>5} {context:>8}  skipped: past the {budget_s:.0f} s budget of this workload")
            continue
        with torch.inference_mode():
            _decode_rate(model, batch, context, steps, page, dry_run, log)
        if device == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zaya_rt.benchmarks.device_workloads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=("train", "rsa"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, one repeat (numbers mean nothing)")
    ap.add_argument("--budget-s", type=float, default=150.0, help="rsa: skip the remaining cases past this")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("device_workloads: no GPU visible to torch (use --dry-run on the CPU)")
    if not math.isfinite(args.budget_s) or args.budget_s <= 0:
        raise SystemExit("device_workloads: --budget-s must be a positive number of seconds")
    if args.workload == "train":
        train(args.dry_run)
    else:
        rsa(args.dry_run, args.budget_s)


if __name__ == "__main__":
    main()

"""Whole training step (SPEC section 8, issue 23): forward + next-token loss + backward of zaya_rt's model against
transformers' `ZayaForCausalLM` on the same random weights.

zaya_rt runs the step as its Trainer does: one packed forward `model(ids, cu_seqlens=cu)` over the sequences as
documents, the summed next-token cross-entropy (the chunked fused loss over the LM head by default, or
`F.cross_entropy` on full logits with `fused_loss=False`) and backward. transformers runs `hf(ids, labels=ids)`
on the same tokens as [sequences, tokens] rows (its loss shifts the labels itself) and backward, under every
combination of experts_implementation eager/grouped_mm and attn_implementation eager/sdpa; the best is the
peer. Both predict the same targets (every token but each sequence's last). The timed steps of ours and of
every peer take turns, best of `repeats` each, so that all of them see the same state of a shared machine.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zaya_rt.benchmarks.e2e import CONFIG_124M, _build, _sync, use_hf_implementation

IGNORE_INDEX = -100
_OURS = {"fused": "zaya_rt", "unfused": "zaya_rt (F.cross_entropy on full logits)",
         "recompute": "zaya_rt (MoE gate-up recomputed in the backward)"}


@dataclass
class TrainStepResult:
    dtype: torch.dtype
    ours_s: float
    peer_s: float
    peer_name: str
    all_peers: dict[str, float]
    first_losses: dict[str, float]  # every side's loss on the first step: the same work gives the same loss

    @property
    def ratio(self) -> float:
        """Peer step time over ours: above 1 means zaya_rt is faster."""
        return self.peer_s / self.ours_s


def host_description() -> str:
    """CPU model, torch threads and torch version (or the GPU's name) of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def packed_batch(sequences: int, seq_len: int, vocab: int, seed: int, device: str):
    """(ids [B, T] int64, packed ids [B*T], next-token labels [B*T] with each sequence's last = IGNORE_INDEX,
    cu_seqlens int32 [B+1]) of random tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (sequences, seq_len), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    cu = torch.arange(0, (sequences + 1) * seq_len, seq_len, dtype=torch.int32)
    return ids.to(device), ids.reshape(-1).to(device), labels.reshape(-1).to(device), cu.to(device)


def set_keep_activations(model, keep: bool) -> None:
    """Sets the MoE blocks' kept-activation switch (ZayaExperts.keep_activations) throughout `model`."""
    for module in model.modules():
        if hasattr(module, "keep_activations"):
            module.keep_activations = keep


def ours_step_fn(model, ids_N, labels_N, cu, fused_loss: bool = True, keep_activations: bool = True):
    """One zaya_rt training step (grads zeroed, forward, summed loss / targets, backward); returns the loss.
    keep_activations: the MoE blocks keep their gate-up activations for the backward during this step (the
    model's default); False recomputes them."""
    targets = max(int((labels_N != IGNORE_INDEX).sum()), 1)

    def step():
        set_keep_activations(model, keep_activations)
        model.zero_grad(set_to_none=True)
        if fused_loss:
            loss = model.loss(ids_N, labels_N, cu_seqlens=cu, reduction="sum")
        else:
            logits = model(ids_N, cu_seqlens=cu)
            loss = F.cross_entropy(logits.float(), labels_N, ignore_index=IGNORE_INDEX, reduction="sum")
        (loss / targets).backward()
        return loss.detach() / targets

    return step


def peer_step_fn(hf, ids_BT, experts_impl: str, attn_impl: str):
    """One transformers training step under the given implementations; returns the loss."""

    def step():
        hf.set_experts_implementation(experts_impl)
        hf.set_attn_implementation(attn_impl)
        hf.zero_grad(set_to_none=True)
        loss = hf(ids_BT, labels=ids_BT, use_cache=False).loss
        loss.backward()
        return loss.detach()

    return step


def interleaved_step_s(steps: dict, device: str, repeats: int) -> dict[str, float]:
    """Best seconds per call of every step function, their timed calls taken in turns (ours, peer 1, ..., ours,
    ...) after one warm-up call each."""
    for step in steps.values():
        step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def profile_table(step, row_limit: int = 25) -> str:
    """torch.profiler's top ops by self CPU time over one call of `step` (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


def run_train(*, device: str = "cpu", config: dict | None = None, sequences: int = 4, seq_len: int = 512,
              dtypes=(torch.bfloat16, torch.float32), repeats: int = 3, seed: int = 0, peers=None,
              losses=("fused",), profile: bool = False, log=print) -> list[TrainStepResult]:
    """Times ours and transformers' training step per dtype; logs the host, losses, times and ratios.

    losses: zaya_rt's step forms to time, "fused", "unfused" and/or "recompute" (the fused loss with the MoE's
    gate-up activations recomputed in the backward instead of kept); the first one's ratio is the result, several
    in one run show what each choice gives.
    peers: (experts_implementation, attn_implementation) pairs (default: all four of eager/grouped_mm x
    eager/sdpa)."""
    config = dict(CONFIG_124M if config is None else config)
    if not losses or any(form not in _OURS for form in losses):
        raise ValueError(f"losses must name some of {tuple(_OURS)}, got {losses!r}")
    peers = peers or [(e, a) for e in ("eager", "grouped_mm") for a in ("eager", "sdpa")]
    log(f"host: {host_description()}")
    results = []
    for dtype in dtypes:
        hf, ours = _build(config, device, dtype, seed)
        hf.train()
        ours.train()
        ids_BT, ids_N, labels_N, cu = packed_batch(sequences, seq_len, config["vocab_size"], seed + 1, device)
        log(f"{dtype}: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, "
            f"{config['num_hidden_layers']} layers, {sequences} x {seq_len} tokens, device {device}")
        steps = {_OURS[form]: ours_step_fn(ours, ids_N, labels_N, cu, form != "unfused", form != "recompute")
                 for form in losses}
        for experts_impl, attn_impl in peers:
            if not use_hf_implementation(hf, experts_impl, attn_impl, log):
                continue
            steps[f"{experts_impl}/{attn_impl}"] = peer_step_fn(hf, ids_BT, experts_impl, attn_impl)
        first = {name: float(step()) for name, step in steps.items()}
        log("  first-step loss: " + ", ".join(f"{k} {v:.4f}" for k, v in first.items()))
        times = interleaved_step_s(steps, device, repeats)
        ours_times = {_OURS[form]: times.pop(_OURS[form]) for form in losses}
        name = min(times, key=times.get)
        result = TrainStepResult(dtype, ours_times[_OURS[losses[0]]], times[name], name, times, first)
        results.append(result)
        for ours_name, ours_s in ours_times.items():
            log(f"  {dtype}: {ours_name} {1e3 * ours_s:.0f} ms/step; transformers best ({name}) "
                f"{1e3 * times[name]:.0f} ms -> {times[name] / ours_s:.2f}x")
        log("  all peers: " + ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in times.items()))
        if profile:
            log(f"  profile of {_OURS[losses[0]]}'s step ({dtype}), top ops by self CPU time:")
            log(profile_table(steps[_OURS[losses[0]]]))
        del hf, ours, steps
    return results

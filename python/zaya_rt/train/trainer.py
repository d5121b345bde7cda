"""The trainer behind `zaya-rt train --config FILE.toml` (SPEC section 7).

One optimizer step takes `batch_windows` packed windows (data.py) in `grad_accum` micro-batches; each
micro-batch is one packed forward `model(ids, cu_seqlens=cu)` over its windows' documents. The loss is the mean
next-token cross-entropy over the step's loss-carrying tokens, so it does not depend on grad_accum.
With dtype "bfloat16" the model computes in bf16 while fp32 master weights (and the optimizer states over them)
take the updates. After the optimizer step, the router balancer moves the balancing biases from the loads the
step's forwards chose; loads are counted in the forward only, so activation-checkpointing recomputes do not
count twice. Checkpoints hold everything a bit-exact resume needs; rerunning the same command resumes.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict

import torch

from zaya_rt.model.checkpoint import save as save_model
from zaya_rt.model.modeling import ZayaForCausalLM
from zaya_rt.train.activation import checkpoint_layers
from zaya_rt.train.balancing import RouterBalancer, collect_router_loads
from zaya_rt.train.checkpoint import checkpoint_steps, latest_checkpoint, save_checkpoint
from zaya_rt.train.config import RunConfig
from zaya_rt.train.data import IGNORE_INDEX, Window, load_samples, load_tokenizer, pack_windows
from zaya_rt.train.muon import Muon
from zaya_rt.train.params import param_groups
from zaya_rt.train.schedule import wsd_lr

_STATE_FILE = "trainer.pt"
_METRICS = "metrics.jsonl"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def router_metrics(loads: list[torch.Tensor]) -> tuple[float, float]:
    """(load entropy, skip share) of per-layer counts [E + 1] (skip last): the entropy of the experts' load
    fractions among non-skipped tokens over log(E), averaged over layers (1.0 = uniform), and the share of
    skipped router decisions over all layers."""
    entropies, skipped, total = [], 0.0, 0.0
    for c in loads:
        c = c.double()
        experts = c[:-1]
        n = experts.sum()
        if n > 0:
            f = experts / n
            h = -(f * f.clamp_min(1e-300).log()).sum()
            entropies.append(float(h) / math.log(experts.numel()))
        skipped += float(c[-1])
        total += float(c.sum())
    entropy = sum(entropies) / len(entropies) if entropies else 0.0
    return entropy, (skipped / total if total else 0.0)


def _batch(windows: list[Window]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenates packed windows into one packed micro-batch: (ids [N], labels [N], cu_seqlens int32)."""
    ids = torch.cat([w.input_ids for w in windows])
    labels = torch.cat([w.labels for w in windows])
    cu, offset = [torch.zeros(1, dtype=torch.int32)], 0
    for w in windows:
        cu.append(w.cu_seqlens[1:] + offset)
        offset += int(w.input_ids.shape[0])
    return ids, labels, torch.cat(cu)


class Trainer:
    """Trains a ZayaForCausalLM as `config` (a RunConfig) says; `run()` trains to `config.train.steps`,
    resuming from the newest complete checkpoint in out_dir unless `fresh`."""

    def __init__(self, config: RunConfig, *, fresh: bool = False, progress: bool = True) -> None:
        if not isinstance(config, RunConfig):
            raise TypeError(f"Trainer: config must be a RunConfig, got {type(config).__name__}")
        tc = config.train
        if tc.batch_windows % tc.grad_accum:
            raise ValueError(f"config: train.batch_windows ({tc.batch_windows}) must be a multiple of "
                             f"train.grad_accum ({tc.grad_accum})")
        if tc.clip < 0:
            raise ValueError(f"config: train.clip must be non-negative (0 disables clipping), got {tc.clip}")
        self.config, self.progress = config, progress
        self.out_dir = tc.out_dir
        self.fingerprint = json.dumps(asdict(config), sort_keys=True, default=str)
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)

        self.tokenizer = load_tokenizer(config.data.tokenizer)
        self.model = self._build_model()
        vocab = getattr(self.tokenizer, "vocab_size", None)
        if vocab is not None and vocab > self.model.config.vocab_size:
            raise ValueError(f"config: model.vocab_size ({self.model.config.vocab_size}) is smaller than the "
                             f"tokenizer's vocabulary ({vocab})")
        samples, self.dropped = load_samples(config.data.path, self.tokenizer, config.data.window,
                                             config.data.sft_budget)
        if not samples:
            raise ValueError(f"config: data.path {config.data.path} holds no usable samples")
        self.windows = pack_windows(samples, config.data.window)

        self.dtype = _DTYPES[tc.dtype]
        self.masters = self._master_weights()
        self.optimizers = self._build_optimizers()
        self.balancer = RouterBalancer.for_model(self.model, lr=config.balancer.lr,
                                                 skip_target=config.balancer.skip_target)
        if tc.activation_checkpointing:
            checkpoint_layers(self.model)
        self.step = 0
        self.resumed = False
        if fresh:
            self._clear_out_dir()

    # -- setup -------------------------------------------------------------------------------------------------
    def _build_model(self) -> ZayaForCausalLM:
        config = self.config
        if config.init_from is not None:
            from zaya_rt.model.checkpoint import load

            return load(config.init_from, dtype=torch.float32)
        return ZayaForCausalLM(config.model).init_random(seed=config.train.seed)

    def _master_weights(self) -> dict[int, torch.nn.Parameter]:
        """Maps each model parameter (by id) to its fp32 master: itself for float32, else an fp32 copy while the
        model's own parameter is cast to the compute dtype."""
        masters = {}
        for p in self.model.parameters():
            if self.dtype == torch.float32:
                masters[id(p)] = p
            else:
                masters[id(p)] = torch.nn.Parameter(p.detach().float().clone())
                p.data = p.data.to(self.dtype)
        return masters

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        tc = self.config.train
        groups = param_groups(self.model)
        decay = lambda ps: [self.masters[id(p)] for p in ps if p.dim() >= 2]  # noqa: E731
        no_decay = lambda ps: [self.masters[id(p)] for p in ps if p.dim() < 2]  # noqa: E731
        if tc.optimizer == "muon":
            muon = Muon(decay(groups["muon"]), lr=tc.lr, weight_decay=tc.weight_decay,
                        adjust_lr_fn="match_rms_adamw")
            rest = groups["adamw"]
            optimizers = [muon]
        else:
            rest = groups["muon"] + groups["adamw"]
            optimizers = []
        adamw_groups = [g for g in ({"params": decay(rest), "weight_decay": tc.weight_decay},
                                    {"params": no_decay(rest), "weight_decay": 0.0}) if g["params"]]
        optimizers.append(torch.optim.AdamW(adamw_groups, lr=tc.lr, betas=(0.9, 0.95)))
        return optimizers

    def _clear_out_dir(self) -> None:
        for step in checkpoint_steps(self.out_dir):
            shutil.rmtree(os.path.join(self.out_dir, f"step-{step:08d}"))
        for name in (_METRICS, "final"):
            path = os.path.join(self.out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)

    # -- data --------------------------------------------------------------------------------------------------
    def windows_for_step(self, step: int) -> list[Window]:
        """The `batch_windows` windows of optimizer step `step` (from 1): the windows in a seeded order that is
        reshuffled every epoch; a function of the step alone, so the data position is the step."""
        per_step, n = self.config.train.batch_windows, len(self.windows)
        out = []
        for position in range((step - 1) * per_step, step * per_step):
            epoch, index = divmod(position, n)
            out.append(self.windows[int(self._epoch_order(epoch)[index])])
        return out

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_order", (None,))[0] != epoch:
            gen = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.windows), generator=gen))
        return self._order[1]

    # -- one step ----------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        """Runs optimizer step `step` (from 1): forwards and backwards of its micro-batches, clipping, the
        optimizer and balancer updates. Returns the metrics line (timing fields excluded)."""
        tc = self.config.train
        windows = self.windows_for_step(step)
        micro = tc.batch_windows // tc.grad_accum
        batches = [_batch(windows[i:i + micro]) for i in range(0, len(windows), micro)]
        targets = sum(int((labels != IGNORE_INDEX).sum()) for _, labels, _ in batches)
        lr = wsd_lr(step, tc.lr, tc.steps, tc.warmup_steps, tc.decay_steps, tc.min_lr_ratio)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        step_loads = None
        for ids, labels, cu in batches:
            with collect_router_loads(self.model) as loads:
                # The fused chunked LM-head loss (model/loss.py): the [tokens, vocab] logits are never held.
                loss = self.model.loss(ids, labels, cu_seqlens=cu, ignore_index=IGNORE_INDEX, reduction="sum")
            # The hooks are gone before backward: recomputed forwards (activation checkpointing) are not counted.
            step_loads = loads if step_loads is None else [a + b for a, b in zip(step_loads, loads)]
            (loss / max(targets, 1)).backward()
            loss_sum += loss.detach().double()
        masters = list(self.masters.values())
        if self.dtype != torch.float32:
            for p in self.model.parameters():
                m = self.masters[id(p)]
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None
        grads = [m for m in masters if m.grad is not None]
        if tc.clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(grads, tc.clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([m.grad for m in grads])
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.dtype != torch.float32:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(self.masters[id(p)])
        self.last_loads = step_loads
        self.balancer.step(step_loads)
        entropy, skip = router_metrics(step_loads)
        return {"step": step, "loss": float(loss_sum / max(targets, 1)), "grad_norm": float(grad_norm), "lr": lr,
                "tokens": sum(int(ids.shape[0]) for ids, _, _ in batches), "router_load_entropy": entropy,
                "skip_share": skip}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a bit-exact resume needs (master weights, model buffers, optimizers, balancer, step =
        data position, RNG states, the config fingerprint)."""
        return {
            "step": self.step,
            "fingerprint": self.fingerprint,
            "masters": [m.detach().clone() for m in self.masters.values()],
            "buffers": {k: v.clone() for k, v in self.model.named_buffers()},
            "optimizers": [o.state_dict() for o in self.optimizers],
            "balancer": self.balancer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"{self.out_dir} holds checkpoints of a different config; rerun with --fresh to "
                             "start over (this deletes them) or pick another train.out_dir")
        with torch.no_grad():
            for m, saved in zip(self.masters.values(), state["masters"], strict=True):
                m.copy_(saved)
            for p in self.model.parameters():
                p.copy_(self.masters[id(p)])
            buffers = dict(self.model.named_buffers())
            for k, v in state["buffers"].items():
                buffers[k].copy_(v)
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        self.balancer.load_state_dict(state["balancer"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.step = state["step"]

    def save_checkpoint(self) -> str:
        state = self.state_dict()
        return save_checkpoint(self.out_dir, self.step, lambda d: torch.save(state, os.path.join(d, _STATE_FILE)),
                               self.config.train.keep_checkpoints)

    def resume(self) -> int:
        """Loads the newest complete checkpoint in out_dir, if any; returns the step it resumes after. A
        checkpoint of another config raises ValueError."""
        self.resumed = True
        path = latest_checkpoint(self.out_dir)
        if path is not None:
            self.load_state_dict(torch.load(os.path.join(path, _STATE_FILE), weights_only=False))
            print(f"resuming from {path} (step {self.step})", file=sys.stderr)
        self._truncate_metrics()
        return self.step

    def _truncate_metrics(self) -> None:
        """Drops metrics lines of steps after the resumed one (a killed run may have logged past its last
        checkpoint), so the file ends up with one line per step."""
        path = os.path.join(self.out_dir, _METRICS)
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a line cut short by the kill
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def final_model(self) -> ZayaForCausalLM:
        """A float32 ZayaForCausalLM with the master weights and current buffers."""
        model = ZayaForCausalLM(self.model.config)
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.model.named_buffers()}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            state[name] = self.masters[id(p)].detach()
        model.load_state_dict(state)
        return model

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> str:
        """Trains from the resumed step to train.steps, logging metrics and writing checkpoints; saves the final
        model to out_dir/final (zaya_rt checkpoint layout) and returns that folder."""
        from tqdm import tqdm

        tc = self.config.train
        os.makedirs(self.out_dir, exist_ok=True)
        if not self.resumed:
            self.resume()
        bar = tqdm(total=tc.steps, initial=self.step, disable=not self.progress, desc="train", unit="step")
        with open(os.path.join(self.out_dir, _METRICS), "a", encoding="utf-8") as metrics:
            while self.step < tc.steps:
                start = time.perf_counter()
                line = self.train_step(self.step + 1)
                self.step += 1
                elapsed = time.perf_counter() - start
                line["tokens_per_s"] = line["tokens"] / elapsed if elapsed > 0 else 0.0
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{line['lr']:.2e}")
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                    self.save_checkpoint()
        bar.close()
        final = os.path.join(self.out_dir, "final")
        tmp = os.path.join(self.out_dir, ".tmp-final")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(self.final_model(), tmp)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final

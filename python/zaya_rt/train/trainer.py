"""The trainer behind `zaya-rt train --config FILE.toml` (SPEC section 7).

One optimizer step takes `batch_windows` packed windows (data.py) in `grad_accum` micro-batches; each
micro-batch is one packed forward `model(ids, cu_seqlens=cu)` over its windows' documents. The loss is the mean
next-token cross-entropy over the step's loss-carrying tokens, so it does not depend on grad_accum.
With dtype "bfloat16" the model computes in bf16 while fp32 master weights (and the optimizer states over them)
take the updates. After the optimizer step, the router balancer moves the balancing biases from the loads the
step's forwards chose; loads are counted in the forward only, so activation-checkpointing recomputes do not
count twice. Checkpoints hold everything a bit-exact resume needs; rerunning the same command resumes.
Under torchrun the same trainer runs on torch.distributed (distributed.py: FSDP2, expert parallelism, every rank
on its share of the same global batch); checkpoints go through torch.distributed.checkpoint at any world size.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict

import torch

from zaya_rt.model.modeling import ZayaForCausalLM
from zaya_rt.train.activation import checkpoint_layers
from zaya_rt.train.balancing import RouterBalancer, collect_router_loads
from zaya_rt.train.checkpoint import (clear_run_dir, save_final_model, latest_checkpoint, read_sharded, save_checkpoint,
                                      write_sharded)
from zaya_rt.train.config import RunConfig
from zaya_rt.train.data import IGNORE_INDEX, Window, load_samples, load_tokenizer, pack_windows
from zaya_rt.train.dist_muon import DistributedMuon
from zaya_rt.train.distributed import (clip_grads, full_tensor, global_grad_norm, global_view, init_parallel,
                                       is_expert_stack, local_share, shard_model)
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
        # The [parallel] layout is not part of the run's identity: a checkpoint resumes at any world size.
        self.fingerprint = json.dumps({k: v for k, v in asdict(config).items() if k != "parallel"}, sort_keys=True,
                                      default=str)
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)

        self.tokenizer = load_tokenizer(config.data.tokenizer)
        self.model = self._build_model()
        self.par = init_parallel(config.parallel.expert_parallel, self.model.config.num_experts)
        world = 1 if self.par is None else self.par.world_size
        if tc.batch_windows % (world * tc.grad_accum):
            raise ValueError(f"config: train.batch_windows ({tc.batch_windows}) must be a multiple of the world "
                             f"size ({world}) times train.grad_accum ({tc.grad_accum}): every rank takes an "
                             "equal share of each step's windows")
        self.is_main = self.par is None or self.par.is_main
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
        if tc.activation_checkpointing:
            checkpoint_layers(self.model)
        if self.par is not None:
            shard_model(self.model, self.par, self.dtype)
        self.experts = is_expert_stack(self.model)
        self._separate_masters = self.par is None and self.dtype != torch.float32
        self.masters = self._master_weights()
        self.optimizers = self._build_optimizers()
        self.balancer = RouterBalancer.for_model(self.model, lr=config.balancer.lr,
                                                 skip_target=config.balancer.skip_target)
        self.step = 0
        self.resumed = False
        if fresh:
            if self.is_main:
                clear_run_dir(self.out_dir, _METRICS)
            self._barrier()

    # -- setup -------------------------------------------------------------------------------------------------
    def _build_model(self) -> ZayaForCausalLM:
        config = self.config
        if config.init_from is not None:
            from zaya_rt.model.checkpoint import load

            return load(config.init_from, dtype=torch.float32)
        return ZayaForCausalLM(config.model).init_random(seed=config.train.seed)

    def _master_weights(self) -> dict[int, torch.nn.Parameter]:
        """Maps each model parameter (by id) to its fp32 master: itself for float32 or under FSDP2 (whose mixed
        precision policy computes in the compute dtype), else an fp32 copy while the model's own parameter is cast
        to the compute dtype."""
        masters = {}
        for p in self.model.parameters():
            if self.dtype == torch.float32 or self.par is not None:
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
            muon_class = Muon if self.par is None else DistributedMuon
            muon = muon_class(decay(groups["muon"]), lr=tc.lr, weight_decay=tc.weight_decay,
                              adjust_lr_fn="match_rms_adamw", ns_dtype=_DTYPES[tc.muon_ns_dtype])
            rest = groups["adamw"]
            optimizers = [muon]
        else:
            rest = groups["muon"] + groups["adamw"]
            optimizers = []
        adamw_groups = [g for g in ({"params": decay(rest), "weight_decay": tc.weight_decay},
                                    {"params": no_decay(rest), "weight_decay": 0.0}) if g["params"]]
        optimizers.append(torch.optim.AdamW(adamw_groups, lr=tc.lr, betas=(0.9, 0.95)))
        return optimizers

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
        targets = sum(int((w.labels != IGNORE_INDEX).sum()) for w in windows)  # over the global batch
        windows = local_share(windows, self.par)
        micro = len(windows) // tc.grad_accum
        batches = [_batch(windows[i:i + micro]) for i in range(0, len(windows), micro)]
        if self.par is not None:
            batches = [tuple(t.to(self.par.device) for t in b) for b in batches]
        lr = wsd_lr(step, tc.lr, tc.steps, tc.warmup_steps, tc.decay_steps, tc.min_lr_ratio)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=batches[0][0].device)
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
        if self._separate_masters:
            for p in self.model.parameters():
                m = self.masters[id(p)]
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None
        grads = [m for m in masters if m.grad is not None]
        if tc.clip > 0:
            grad_norm = clip_grads(grads, tc.clip, self.par)
        else:
            grad_norm = global_grad_norm([m.grad for m in grads], self.par)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self._separate_masters:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(self.masters[id(p)])
        self.last_loads = step_loads
        self.balancer.step(step_loads)
        tokens = torch.tensor(sum(int(ids.shape[0]) for ids, _, _ in batches), dtype=torch.float64)
        if self.par is not None:  # the metrics of the global batch
            parts = [tokens.reshape(1), loss_sum.cpu().reshape(1), *(c.double().cpu() for c in step_loads)]
            summed = torch.cat(parts).to(self.par.device)
            torch.distributed.all_reduce(summed)
            tokens, loss_sum, *step_loads = summed.cpu().split([p.numel() for p in parts])
        entropy, skip = router_metrics(step_loads)
        return {"step": step, "loss": float(loss_sum / max(targets, 1)), "grad_norm": float(grad_norm), "lr": lr,
                "tokens": int(tokens), "router_load_entropy": entropy, "skip_share": skip}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.par is not None:
            torch.distributed.barrier()

    def sharded_state(self) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors by name, each a view of the whole model's tensor (global_view): master weights
        ("model.NAME") and optimizer states ("optim.I.NAME.KEY"). Loading into them restores the run in place."""
        def view(p, t):
            return global_view(t, id(p) in self.experts, self.par)

        params = dict(self.model.named_parameters())
        state = {f"model.{name}": view(p, self.masters[id(p)]) for name, p in params.items()}
        for i, opt in enumerate(self.optimizers):
            _init_optimizer_state(opt)
            for name, p in params.items():
                for key, value in opt.state.get(self.masters[id(p)], {}).items():
                    state[f"optim.{i}.{name}.{key}"] = view(p, value) if value.dim() else value
        return state

    def meta_state(self) -> dict:
        """What every rank holds alike: step = data position, config fingerprint, model buffers, balancer state,
        optimizer hyperparameters, RNG states."""
        return {
            "step": self.step,
            "fingerprint": self.fingerprint,
            "buffers": {k: v.detach().cpu().clone() for k, v in self.model.named_buffers()},
            "param_groups": [[{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]
                             for o in self.optimizers],
            "balancer": self.balancer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def load_meta_state(self, meta: dict) -> None:
        if meta["fingerprint"] != self.fingerprint:
            raise ValueError(f"{self.out_dir} holds checkpoints of a different config; rerun with --fresh to "
                             "start over (this deletes them) or pick another train.out_dir")
        with torch.no_grad():
            buffers = dict(self.model.named_buffers())
            for k, v in meta["buffers"].items():
                buffers[k].copy_(v)
        for opt, groups in zip(self.optimizers, meta["param_groups"], strict=True):
            for group, saved in zip(opt.param_groups, groups, strict=True):
                group.update(saved)
        self.balancer.load_state_dict(meta["balancer"])
        torch.set_rng_state(meta["rng"]["torch"])
        random.setstate(meta["rng"]["python"])
        self.step = meta["step"]

    def save_checkpoint(self) -> str:
        """Writes checkpoint out_dir/step-NNNNNNNN (collective under torch.distributed): the sharded tensors
        through torch.distributed.checkpoint, the shared state in trainer.pt."""
        meta = self.meta_state()

        def write(folder: str) -> None:
            write_sharded(folder, self.sharded_state())
            if self.is_main:
                torch.save(meta, os.path.join(folder, _STATE_FILE))

        return save_checkpoint(self.out_dir, self.step, write, self.config.train.keep_checkpoints,
                               coordinator=self.is_main, barrier=self._barrier)

    def load_checkpoint(self, path: str) -> None:
        """Restores the run from checkpoint folder `path`, written at this or any other world size."""
        self.load_meta_state(torch.load(os.path.join(path, _STATE_FILE), weights_only=False))
        read_sharded(path, self.sharded_state())
        if self._separate_masters:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(self.masters[id(p)])

    def resume(self) -> int:
        """Loads the newest complete checkpoint in out_dir, if any; returns the step it resumes after. A
        checkpoint of another config raises ValueError."""
        self.resumed = True
        path = latest_checkpoint(self.out_dir)
        self._barrier()  # every rank sees the same newest checkpoint
        if path is not None:
            self.load_checkpoint(path)
            if self.is_main:
                print(f"resuming from {path} (step {self.step})", file=sys.stderr)
        if self.is_main:
            self._truncate_metrics()
        self._barrier()
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
        """A float32 ZayaForCausalLM on the CPU with the master weights and current buffers (collective under
        torch.distributed: the shards are gathered on every rank)."""
        model = ZayaForCausalLM(self.model.config)
        state = {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in self.model.named_buffers()}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            state[name] = full_tensor(self.masters[id(p)].detach(), id(p) in self.experts, self.par).cpu()
        model.load_state_dict(state)
        return model

    def close(self) -> None:
        """Leaves the process group of a distributed run (nothing in a single process)."""
        if self.par is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> str:
        """Trains from the resumed step to train.steps, logging metrics and writing checkpoints; saves the final
        model to out_dir/final (zaya_rt checkpoint layout) and returns that folder."""
        from tqdm import tqdm

        tc = self.config.train
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
        if not self.resumed:
            self.resume()
        bar = tqdm(total=tc.steps, initial=self.step, disable=not (self.progress and self.is_main), desc="train",
                   unit="step")
        metrics_path = os.path.join(self.out_dir, _METRICS) if self.is_main else os.devnull
        with open(metrics_path, "a", encoding="utf-8") as metrics:
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
        model = self.final_model()
        if self.is_main:
            save_final_model(model, self.out_dir)
        self._barrier()
        return os.path.join(self.out_dir, "final")


def _init_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Creates the per-parameter states AdamW and Muon make on their first step (zeros), for parameters that
    have none yet, so that a checkpoint can be loaded into them."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            if state:
                continue
            if isinstance(opt, Muon):
                state["momentum_buffer"] = torch.zeros_like(p)
            elif isinstance(opt, torch.optim.AdamW):
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)

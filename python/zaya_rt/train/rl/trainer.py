"""The RL trainer behind `zaya-rt rl --config FILE.toml` (SPEC section 7): RL with verifiable rewards on the
Engine's rollouts.

One optimizer step, for step s:
1. P prompts from the jsonl (`problem`, `answer`) in a seeded order reshuffled every epoch (a function of s);
   a seeded share (`aggregation_ratio`) of them becomes Markovian RSA round-1 aggregation prompts: C round-0
   rollouts of the problem by the current policy, their tails (last tau tokens) spliced into the RSA template.
2. G rollouts per prompt from the Engine, which runs the policy's own weights (synced after every step, prefix
   cache dropped), with details: token ids, raw log-probs, routed experts. Every request has a seed derived
   from (seed, s, slot), so a step's rollouts depend only on the weights and s: resumes are exact.
3. Rewards from the checker (`reward`), the repetition canary, advantages [P, G] (`advantage`), dynamic sampling.
4. Packed micro-batches of rollouts: the forward replays the engine's expert choices; the loss is
   `policy_loss` with normalizer P * G * max_new_tokens (constant, so micro-batching does not change it) and
   Binary-TV masking; no KL. Then gradient clipping, the Muon/AdamW step and the router balancer.
Metrics per step go to out_dir/metrics.jsonl; checkpoints and exact resume as the Trainer's.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict

import torch

from zaya_rt.jsonl import read_jsonl
from zaya_rt.model.modeling import ZayaForCausalLM
from zaya_rt.rsa.loop import make_tail
from zaya_rt.rsa.templates import DefaultTemplate
from zaya_rt.runtime.engine import Engine
from zaya_rt.runtime.params import SamplingParams
from zaya_rt.train.activation import checkpoint_layers
from zaya_rt.train.balancing import RouterBalancer, collect_router_loads
from zaya_rt.train.checkpoint import clear_run_dir, save_final_model, latest_checkpoint, save_checkpoint
from zaya_rt.train.data import chat_text, load_tokenizer
from zaya_rt.train.muon import Muon
from zaya_rt.train.params import param_groups
from zaya_rt.train.rl.config import RLRunConfig
from zaya_rt.train.rl.objective import (advantages, informative_groups, policy_loss, repetition_canary,
                                        trust_region_keep)
from zaya_rt.train.rl.rewards import make_reward

_STATE_FILE = "rl_trainer.pt"
_METRICS = "metrics.jsonl"


def load_prompts(path: str) -> list[dict]:
    """Rows of a jsonl with a str `problem` and an `answer` each; ValueError naming the line otherwise."""
    rows = []
    for i, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("problem"), str) or "answer" not in row:
            raise ValueError(f"{path}: line {i} needs a str 'problem' and an 'answer'")
        rows.append({"problem": row["problem"], "answer": row["answer"]})
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def build_optimizers(model: torch.nn.Module, kind: str, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """Muon for the 2-D/3-D weight matrices of `param_groups` (with kind "muon") and AdamW for the rest, as the
    Trainer builds them (decay on matrices only)."""
    groups = param_groups(model)
    optimizers: list[torch.optim.Optimizer] = []
    rest = groups["adamw"]
    if kind == "muon":
        optimizers.append(Muon([p for p in groups["muon"] if p.dim() >= 2], lr=lr, weight_decay=weight_decay,
                               adjust_lr_fn="match_rms_adamw"))
    else:
        rest = groups["muon"] + rest
    adamw = [g for g in ({"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                         {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}) if g["params"]]
    optimizers.append(torch.optim.AdamW(adamw, lr=lr, betas=(0.9, 0.95)))
    return optimizers


class ChatFormat:
    """`tokenizer` with zaya_rt.train.data's chat format as its chat template, so that a prompt becomes the user
    turn `<|user|>\\n PROMPT <|end|>\\n<|assistant|>\\n` that SFT rendered (rsa.templates wraps prompts with it)."""

    chat_template = "zaya_rt.train.data chat format"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = getattr(tokenizer, "vocab_size", None)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def apply_chat_template(self, messages: list[dict], *, tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        """The chat as text (only tokenize=False is offered)."""
        if tokenize:
            raise ValueError("ChatFormat.apply_chat_template: only tokenize=False is offered")
        return chat_text(messages, add_generation_prompt=add_generation_prompt)


class RLTrainer:
    """RL on Engine rollouts as `config` (an RLRunConfig) says; `run()` trains to `config.rl.steps`, resuming
    from the newest complete checkpoint in out_dir unless `fresh`. The policy trains in float32."""

    def __init__(self, config: RLRunConfig, *, fresh: bool = False, progress: bool = True) -> None:
        if not isinstance(config, RLRunConfig):
            raise TypeError(f"RLTrainer: config must be an RLRunConfig, got {type(config).__name__}")
        rc = config.rl
        self.config, self.progress, self.out_dir = config, progress, rc.out_dir
        self.fingerprint = json.dumps(asdict(config), sort_keys=True, default=str)
        torch.manual_seed(rc.seed)
        random.seed(rc.seed)
        self.tokenizer = load_tokenizer(config.data.tokenizer)
        if config.data.chat:
            self.tokenizer = ChatFormat(self.tokenizer)
        self.template = DefaultTemplate(self.tokenizer, use_chat_template=config.data.chat)
        self.prompts = load_prompts(config.data.path)
        self.rewards = [make_reward(rc.reward, row["answer"]) for row in self.prompts]
        self.model = self._build_model()
        vocab = getattr(self.tokenizer, "vocab_size", None)
        if vocab is not None and vocab > self.model.config.vocab_size:
            raise ValueError(f"config: the model's vocab_size ({self.model.config.vocab_size}) is smaller than the "
                             f"tokenizer's vocabulary ({vocab})")
        self.optimizers = build_optimizers(self.model, rc.optimizer, rc.lr, rc.weight_decay)
        self.balancer = RouterBalancer.for_model(self.model, lr=config.balancer.lr,
                                                 skip_target=config.balancer.skip_target)
        if rc.activation_checkpointing:
            checkpoint_layers(self.model)
        # the engine runs the policy's own tensors; update_weights() after each step re-reads them
        self.engine = Engine(self.model, num_pages=rc.engine_pages, page_size=rc.page_size,
                             max_batch=rc.prompts_per_step * rc.group_size, cuda_graphs=False)
        self.step, self.resumed = 0, False
        if fresh:
            clear_run_dir(self.out_dir, _METRICS)

    def _build_model(self) -> ZayaForCausalLM:
        if self.config.init_from is not None:
            from zaya_rt.model.checkpoint import load

            return load(self.config.init_from, dtype=torch.float32)
        return ZayaForCausalLM(self.config.model).init_random(seed=self.config.rl.seed)

    # -- prompts and rollouts ----------------------------------------------------------------------------------
    def prompts_for_step(self, step: int) -> list[int]:
        """Indices of the P prompts of step `step` (from 1): a seeded order, reshuffled every epoch."""
        per_step, n = self.config.rl.prompts_per_step, len(self.prompts)
        out = []
        for position in range((step - 1) * per_step, step * per_step):
            epoch, index = divmod(position, n)
            gen = torch.Generator().manual_seed(self.config.rl.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(n, generator=gen)[index]))
        return out

    def _params(self, seed: int) -> SamplingParams:
        rc = self.config.rl
        return SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                              stop_token_ids=tuple(rc.stop_token_ids), seed=seed, logprobs=True)

    def _seed(self, step: int, slot: int, kind: int) -> int:
        return (self.config.rl.seed * 1_000_003 + step) * 1_000_033 + slot * 4 + kind

    def build_prompts(self, step: int, problems: list[int]) -> tuple[list[list[int]], list[bool]]:
        """Prompt ids of each slot, and whether it is an aggregation prompt (round 1 over tails of C round-0
        rollouts of the problem by the current policy)."""
        rc = self.config.rl
        gen = random.Random(self._seed(step, 0, 3))
        aggregate = [gen.random() < rc.aggregation_ratio for _ in problems]
        prompts = [self.template.rollout(self.prompts[i]["problem"]) for i in problems]
        slots = [s for s, a in enumerate(aggregate) if a]
        if slots:
            requests = [prompts[s] for s in slots for _ in range(rc.aggregation_tails)]
            params = [self._params(self._seed(step, s, 1) + 97 * c) for s in slots for c in range(rc.aggregation_tails)]
            traces = self.engine.generate(requests, params)
            for k, s in enumerate(slots):
                own = traces[k * rc.aggregation_tails : (k + 1) * rc.aggregation_tails]
                tails = [make_tail(t, rc.tail_tokens) for t in own]
                prompts[s] = self.template.aggregate(self.prompts[problems[s]]["problem"], tails)
        return prompts, aggregate

    # -- one step ----------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        """Runs RL step `step` (from 1); returns its metrics line (timing excluded)."""
        rc = self.config.rl
        P, G = rc.prompts_per_step, rc.group_size
        problems = self.prompts_for_step(step)
        prompts, aggregate = self.build_prompts(step, problems)
        requests = [prompts[p] for p in range(P) for _ in range(G)]
        params = [self._params(self._seed(step, p, 0) + 97 * g) for p in range(P) for g in range(G)]
        outs = self.engine.generate(requests, params, details=True)
        texts = [self.tokenizer.decode(o.token_ids) for o in outs]
        raw = torch.tensor([self.rewards[problems[i // G]](t) for i, t in enumerate(texts)], dtype=torch.float64)
        rewards, degenerate = (raw, torch.zeros_like(raw, dtype=torch.bool)) if rc.canary_threshold == 0 else (
            repetition_canary(raw, texts, rc.canary_threshold))
        rewards = rewards.view(P, G)
        adv = advantages(rewards, rc.advantage)
        keep_groups = informative_groups(rewards) if rc.dynamic_sampling else torch.ones(P, dtype=torch.bool)
        rollouts = [i for i in range(P * G) if keep_groups[i // G]]
        normalizer = float(P * G * rc.max_new_tokens)

        self.model.train()
        loss_sum, gap_sum, masked, tokens = 0.0, 0.0, 0, 0
        step_loads = None
        for start in range(0, len(rollouts), rc.micro_batch):
            chunk = rollouts[start : start + rc.micro_batch]
            ids, cu, routed, targets, rows, rollout_logp, a = self._pack(requests, outs, adv.view(-1), chunk)
            with collect_router_loads(self.model) as loads:
                logits = self.model(ids, cu_seqlens=cu, routed_experts=routed)
            step_loads = loads if step_loads is None else [x + y for x, y in zip(step_loads, loads)]
            logp = torch.log_softmax(logits.index_select(0, rows).float(), -1).gather(1, targets[:, None])[:, 0]
            mask = torch.ones_like(logp, dtype=torch.bool)
            loss = policy_loss(logp, rollout_logp, a, mask, normalizer=normalizer, tv_delta=rc.tv_delta)
            loss.backward()
            loss_sum += float(loss.detach())
            gap_sum += float((logp.detach().double() - rollout_logp.double()).abs().sum())
            masked += int((~trust_region_keep(logp, rollout_logp, a, rc.tv_delta)).sum())
            tokens += int(logp.numel())
        grads = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = 0.0
        if grads:
            if rc.clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, rc.clip))
            else:
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in grads]))
            for opt in self.optimizers:
                opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if step_loads is not None:
            self.balancer.step(step_loads)
        self.engine.update_weights()
        lengths = [len(o.token_ids) for o in outs]
        return {
            "step": step, "loss": loss_sum, "reward": float(rewards.mean()), "accuracy": float((raw >= 1).double().mean()),
            "response_length": sum(lengths) / len(lengths), "logprob_gap": gap_sum / tokens if tokens else 0.0,
            "masked_share": masked / tokens if tokens else 0.0, "kept_groups": int(keep_groups.sum()),
            "canary_share": float(degenerate.double().mean()), "aggregation_prompts": sum(aggregate),
            "grad_norm": grad_norm, "tokens": tokens,
        }

    def _pack(self, requests, outs, adv, chunk):
        """One packed micro-batch of rollouts (prompt + generated[:-1] each): ids [N], cu_seqlens, routed [N, L],
        the generated targets [M], their logit rows [M], the engine's log-probs [M] and advantages [M]."""
        ids, lens, routed, targets, rows, old, a = [], [], [], [], [], [], []
        offset = 0
        for i in chunk:
            prompt, out = requests[i], outs[i]
            seq = prompt + out.token_ids[:-1]
            ids.append(torch.tensor(seq, dtype=torch.long))
            routed.append(out.routed_experts)
            n = len(seq)
            rows.append(torch.arange(offset + len(prompt) - 1, offset + n))
            targets.append(torch.tensor(out.token_ids, dtype=torch.long))
            old.append(torch.tensor(out.logprobs, dtype=torch.float32))
            a.append(adv[i].expand(len(out.token_ids)))
            lens.append(n)
            offset += n
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        return (torch.cat(ids), cu, torch.cat(routed), torch.cat(targets), torch.cat(rows), torch.cat(old),
                torch.cat(a).float())

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything an exact resume needs: weights and buffers, optimizers, balancer, step, RNG, fingerprint."""
        return {
            "step": self.step, "fingerprint": self.fingerprint,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizers": [o.state_dict() for o in self.optimizers], "balancer": self.balancer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"{self.out_dir} holds checkpoints of a different config; rerun with --fresh to "
                             "start over (this deletes them) or pick another rl.out_dir")
        self.model.load_state_dict(state["model"])
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        self.balancer.load_state_dict(state["balancer"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.step = state["step"]
        self.engine.update_weights()

    def save_checkpoint(self) -> str:
        state = self.state_dict()
        return save_checkpoint(self.out_dir, self.step, lambda d: torch.save(state, os.path.join(d, _STATE_FILE)),
                               self.config.rl.keep_checkpoints)

    def resume(self) -> int:
        """Loads the newest complete checkpoint in out_dir, if any; returns the step it resumes after."""
        self.resumed = True
        path = latest_checkpoint(self.out_dir)
        if path is not None:
            self.load_state_dict(torch.load(os.path.join(path, _STATE_FILE), weights_only=False))
            print(f"resuming from {path} (step {self.step})", file=sys.stderr)
        metrics = os.path.join(self.out_dir, _METRICS)
        if os.path.exists(metrics):  # drop lines logged after the checkpoint by a killed run
            with open(metrics, encoding="utf-8") as f:
                kept = []
                for line in f:
                    try:
                        if json.loads(line)["step"] <= self.step:
                            kept.append(line)
                    except (json.JSONDecodeError, KeyError):
                        break
            with open(metrics, "w", encoding="utf-8") as f:
                f.writelines(kept)
        return self.step

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> str:
        """Trains from the resumed step to rl.steps, logging metrics and writing checkpoints; saves the final
        model to out_dir/final and returns that folder."""
        from tqdm import tqdm

        rc = self.config.rl
        os.makedirs(self.out_dir, exist_ok=True)
        if not self.resumed:
            self.resume()
        bar = tqdm(total=rc.steps, initial=self.step, disable=not self.progress, desc="rl", unit="step")
        with open(os.path.join(self.out_dir, _METRICS), "a", encoding="utf-8") as metrics:
            while self.step < rc.steps:
                start = time.perf_counter()
                line = self.train_step(self.step + 1)
                self.step += 1
                line["seconds"] = time.perf_counter() - start
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(reward=f"{line['reward']:.3f}", acc=f"{line['accuracy']:.3f}")
                if rc.checkpoint_every and self.step % rc.checkpoint_every == 0:
                    self.save_checkpoint()
        bar.close()
        return save_final_model(self.model, self.out_dir)

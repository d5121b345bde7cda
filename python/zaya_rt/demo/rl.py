"""`zaya-rt demo --rl`: RL with verifiable rewards from the demo's SFT model, as a `zaya-rt rl` run.

1. training prompts: problems of the demo task from the *train* split under `RLRecipe.seed` (the held-out
   evaluation draws from the eval split, so no evaluation problem is a training problem), operations per problem
   drawn from `task_steps`, as jsonl (`problem`, `answer`);
2. OUT/rl.toml: a `zaya-rt rl` config from the SFT model (`init_from`), its tokenizer, the prompts in the SFT
   chat format and `<|end|>` as the stop token; the run goes to OUT/rl (rerunning resumes it, and
   `zaya-rt rl --config OUT/rl.toml` runs the same thing);
3. the final policy in bfloat16 with tokenizer.json and demo.json in OUT/model, like `--train`'s model.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, replace

from zaya_rt.demo.corpus import write_jsonl
from zaya_rt.demo.recipe import Recipe
from zaya_rt.demo.task import make_problem
from zaya_rt.demo.tokenizer import DemoTokenizer
from zaya_rt.demo.train import _write_config, export_model


@dataclass(frozen=True)
class RLRecipe:
    """The RL stage: `steps` optimizer steps of `prompts_per_step` problems x `group_size` rollouts. lr and steps
    were chosen on dev seed 7 of the eval split (lr 1e-4 / 5e-4 / 1e-3 for 30 steps, then 5e-4 for 60), never on
    the held-out seed."""

    steps: int = 60
    prompts: int = 4000          # training problems (train split)
    seed: int = 1                # training problems and the trainer's sampling; the SFT data used seed 0
    task_steps: tuple[int, int] = (3, 6)  # operations per training problem (inclusive range)
    prompts_per_step: int = 16
    group_size: int = 8
    micro_batch: int = 64
    max_new_tokens: int = 96
    temperature: float = 1.0
    advantage: str = "maxrl"
    tv_delta: float = 0.2
    lr: float = 5e-4
    optimizer: str = "muon"
    checkpoint_every: int = 10

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


RL_RECIPE = RLRecipe()


def rl_problems(recipe: RLRecipe, modulus: int) -> list[dict]:
    """The training prompts: problem i of the train split under recipe.seed, with a seeded number of operations
    in recipe.task_steps; [{"problem": text, "answer": str}]."""
    low, high = recipe.task_steps
    if not 1 <= low <= high:
        raise ValueError(f"task_steps must be an increasing pair of positive ints, got {recipe.task_steps}")
    rows = []
    for i in range(recipe.prompts):
        steps = random.Random(f"zaya_rt.demo.rl:{recipe.seed}:{i}").randint(low, high)
        p = make_problem("train", recipe.seed, i, steps=steps, modulus=modulus)
        rows.append({"problem": p.text(), "answer": p.answer()})
    return rows


def write_rl_config(out: str, model_dir: str, recipe: RLRecipe, demo: Recipe) -> str:
    """Writes OUT/rl_prompts.jsonl and OUT/rl.toml (the `zaya-rt rl` config of the stage); returns the toml path."""
    os.makedirs(out, exist_ok=True)
    prompts = write_jsonl(os.path.join(out, "rl_prompts.jsonl"), rl_problems(recipe, demo.modulus))
    tokenizer = os.path.join(model_dir, "tokenizer.json")
    eos = DemoTokenizer(tokenizer).eos_token_id
    longest_prompt = 160  # the chat-wrapped rollout prompt of a 6-step problem is about 60 tokens
    pages = -(-(longest_prompt + recipe.max_new_tokens) // 16) * recipe.prompts_per_step * recipe.group_size
    rl = dict(steps=recipe.steps, out_dir=os.path.join(out, "rl"), prompts_per_step=recipe.prompts_per_step,
              group_size=recipe.group_size, micro_batch=recipe.micro_batch, max_new_tokens=recipe.max_new_tokens,
              temperature=recipe.temperature, stop_token_ids=[eos], advantage=recipe.advantage,
              tv_delta=recipe.tv_delta, reward="exact", dynamic_sampling=True, aggregation_ratio=0.0,
              lr=recipe.lr, optimizer=recipe.optimizer, seed=recipe.seed, checkpoint_every=recipe.checkpoint_every,
              keep_checkpoints=1, engine_pages=pages, page_size=16)
    return _write_config(os.path.join(out, "rl.toml"), {
        "model": {"init_from": os.path.abspath(model_dir)},
        "data": dict(path=os.path.abspath(prompts), tokenizer=os.path.abspath(tokenizer), chat=True), "rl": rl})


def rl_demo(out: str, recipe: RLRecipe = RL_RECIPE, *, model_dir: str | None = None, progress: bool = True,
            log=print) -> str:
    """Runs the RL stage from the demo model in `model_dir` (default: the shipped one) into folder `out`;
    returns OUT/model (the policy in bfloat16 with tokenizer.json and demo.json)."""
    from zaya_rt.demo.evaluate import packaged_model_dir
    from zaya_rt.train.rl.config import load_rl_config
    from zaya_rt.train.rl.trainer import RLTrainer

    model_dir = packaged_model_dir() if model_dir is None else os.fspath(model_dir)
    demo = Recipe.from_json_file(os.path.join(model_dir, "demo.json"))
    config = write_rl_config(out, model_dir, recipe, demo)
    with open(os.path.join(out, "rl_recipe.json"), "w", encoding="utf-8") as f:
        f.write(recipe.to_json())
    trainer = RLTrainer(load_rl_config(config), progress=progress)
    trainer.resume()
    final = trainer.run()
    log(f"RL done ({trainer.step} steps): {final}; metrics in {trainer.out_dir}/metrics.jsonl")
    return export_model(final, os.path.join(model_dir, "tokenizer.json"), demo, os.path.join(out, "model"))


def with_steps(recipe: RLRecipe, steps: int | None) -> RLRecipe:
    """The recipe with `steps` RL steps (None keeps the recipe's)."""
    if steps is None:
        return recipe
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"--rl-steps must be a positive int, got {steps!r}")
    return replace(recipe, steps=steps)


def summarize_metrics(path: str, window: int = 5) -> dict:
    """Reward curve summary of an RL run's metrics.jsonl: steps, mean reward of the first and last `window`
    steps, mean masked share and log-prob gap, kept groups, seconds."""
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no metrics")

    def mean(key, rows):
        return sum(r[key] for r in rows) / len(rows)

    return {"steps": len(lines), "reward_first": mean("reward", lines[:window]),
            "reward_last": mean("reward", lines[-window:]), "masked_share": mean("masked_share", lines),
            "logprob_gap": mean("logprob_gap", lines), "kept_groups": mean("kept_groups", lines),
            "response_length_last": mean("response_length", lines[-window:]),
            "seconds": sum(r.get("seconds", 0.0) for r in lines)}

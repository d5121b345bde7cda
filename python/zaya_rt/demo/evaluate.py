"""`zaya-rt demo`: the shipped demo model on held-out problems, sampled once, voted and aggregated by RSA.

Every problem runs Markovian RSA (zaya_rt.rsa.markovian_rsa) with N candidates, C tails and T rounds; all
problems share one engine call per round (batching.py). Round 0 is N independent samples, so its mean accuracy
is the single-sample accuracy and its majority answer the majority vote over N; rounds 1..T are RSA.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from importlib import resources

import torch

from zaya_rt.demo.batching import SharedRoundEngine, run_threads
from zaya_rt.demo.recipe import Recipe
from zaya_rt.demo.task import Problem, check, make_problems
from zaya_rt.demo.tokenizer import DemoTokenizer
from zaya_rt.plotting import headless_pyplot


def packaged_model_dir() -> str:
    """The folder of the demo model shipped inside the package."""
    return os.fspath(resources.files("zaya_rt.demo") / "model")


def load_demo_model(model_dir: str | os.PathLike | None = None):
    """(model float32 eval, DemoTokenizer, Recipe) of a demo model folder (default: the shipped one)."""
    from zaya_rt.model.checkpoint import load

    model_dir = packaged_model_dir() if model_dir is None else os.fspath(model_dir)
    recipe_path = os.path.join(model_dir, "demo.json")
    if not os.path.isfile(recipe_path):
        raise ValueError(f"{model_dir}: no demo.json, so not a demo model (build one with zaya-rt demo --train)")
    return load(model_dir, dtype=torch.float32), DemoTokenizer(model_dir), Recipe.from_json_file(recipe_path)


def _rate(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def evaluate(model, tokenizer, recipe: Recipe, *, seed: int, problems: int, population: int | None = None,
             tails: int | None = None, rounds: int | None = None, temperature: float | None = None,
             steps: int | None = None) -> dict:
    """Runs the evaluation; returns the report: `single` (round-0 mean accuracy), `majority` (majority vote
    over round 0's N), `rsa` (per round: mean accuracy, majority vote, pass@N, tokens; round 0 first),
    `problems` (text, answer, each round's answers), `config`, `seconds`, `generated_tokens`, `tokens_per_s`.
    Unset settings come from the recipe."""
    from zaya_rt.rsa import RSAConfig, markovian_rsa
    from zaya_rt.rsa.templates import DefaultTemplate
    from zaya_rt.runtime.engine import Engine

    if not isinstance(problems, int) or isinstance(problems, bool) or problems < 1:
        raise ValueError(f"problems must be a positive int, got {problems!r}")
    steps = recipe.eval_steps if steps is None else steps
    config = RSAConfig(population=recipe.population if population is None else population,
                       tails=recipe.tails if tails is None else tails,
                       rounds=recipe.rounds if rounds is None else rounds, budget=recipe.budget,
                       tail_tokens=recipe.tail_tokens,
                       temperature=recipe.temperature if temperature is None else temperature, seed=seed)
    items = make_problems("eval", seed, problems, steps=steps, modulus=recipe.modulus)
    template = DefaultTemplate(tokenizer)
    longest = max(len(template.aggregate(p.text(), [[]] * config.tails)) for p in items)
    per_request = -(-(longest + config.tails * config.tail_tokens + config.budget) // 16)
    width = min(len(items) * config.population, 512)
    engine = Engine(model, num_pages=width * per_request, page_size=16, max_batch=width, max_tokens_per_step=4096)
    shared = SharedRoundEngine(engine, len(items))

    def solve(problem: Problem):
        return markovian_rsa(shared, tokenizer, problem.text(), config, template=template, progress=False)

    start = time.perf_counter()
    results = run_threads(solve, items, shared)
    seconds = time.perf_counter() - start
    rsa = []
    for t in range(config.rounds + 1):
        per_problem = [[check(p, a) for a in r.answers(t)] for p, r in zip(items, results)]
        rsa.append({
            "round": t,
            "mean_accuracy": _rate([_rate(hits) for hits in per_problem]),
            "majority_vote": _rate([bool(check(p, r.majority_answer(t))) for p, r in zip(items, results)]),
            "pass_at_n": _rate([any(hits) for hits in per_problem]),
            "generated_tokens": sum(r.stats[t].generated_tokens for r in results),
            "prompt_tokens": sum(r.stats[t].prompt_tokens for r in results),
        })
    return {
        "single": {"accuracy": rsa[0]["mean_accuracy"], "samples": len(items) * config.population},
        "majority": {"accuracy": rsa[0]["majority_vote"], "n": config.population},
        "rsa": rsa,
        "problems": [{"problem": p.text(), "answer": p.answer(), "answers": [r.answers(t) for t in
                      range(config.rounds + 1)]} for p, r in zip(items, results)],
        "config": {"rsa": asdict(config), "steps": steps, "modulus": recipe.modulus, "seed": seed,
                   "split": "eval", "threads": torch.get_num_threads()},
        "seconds": seconds,
        "generated_tokens": shared.generated_tokens,
        "tokens_per_s": shared.generated_tokens / shared.seconds if shared.seconds else 0.0,
    }


def format_table(report: dict) -> str:
    """The report as a text table."""
    c = report["config"]
    r = c["rsa"]
    n = len(report["problems"])
    lines = [f"{n} held-out problems (eval split, seed {c['seed']}): {c['steps']} steps modulo {c['modulus']}; "
             f"N={r['population']} C={r['tails']} T={r['rounds']}, temperature {r['temperature']}",
             f"{'':24}{'accuracy':>9}{'majority':>10}{'pass@N':>8}{'tokens':>9}{'cum. tokens':>13}"]
    lines.append(f"{'single sample':24}{report['single']['accuracy']:9.3f}")
    lines.append(f"{'majority vote of N':24}{report['majority']['accuracy']:9.3f}")
    total = 0
    for row in report["rsa"]:
        total += row["generated_tokens"]
        name = "round 0 (N samples)" if row["round"] == 0 else f"RSA round {row['round']}"
        lines.append(f"{name:24}{row['mean_accuracy']:9.3f}{row['majority_vote']:10.3f}{row['pass_at_n']:8.3f}"
                     f"{row['generated_tokens']:9d}{total:13d}")
    lines.append(f"{report['generated_tokens']} tokens generated at {report['tokens_per_s']:.0f} tok/s "
                 f"({c['threads']} threads); {report['seconds']:.1f}s in all")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """PNG: accuracy vs round and accuracy vs cumulative generated tokens (per problem)."""
    plt = headless_pyplot()

    rows = report["rsa"]
    rounds = [r["round"] for r in rows]
    n = len(report["problems"])
    tokens, total = [], 0
    for r in rows:
        total += r["generated_tokens"]
        tokens.append(total / n)
    fig, (by_round, by_tokens) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, xs, label in ((by_round, rounds, "round"), (by_tokens, tokens, "generated tokens per problem")):
        axis.plot(xs, [r["mean_accuracy"] for r in rows], marker="o", label="RSA mean accuracy")
        axis.plot(xs, [r["majority_vote"] for r in rows], marker="s", label="majority vote per round")
        axis.axhline(report["single"]["accuracy"], color="gray", linestyle="--", label="single sample")
        axis.set(xlabel=label, ylabel="accuracy", ylim=(-0.02, 1.02))
    by_round.set_xticks(rounds)
    by_round.set_title("accuracy vs RSA round")
    by_tokens.set_title("accuracy vs test-time compute")
    by_round.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

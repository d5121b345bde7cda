"""`zaya-rt demo`: evaluate the shipped tiny reasoning model with Markovian RSA, rebuild it (`--train`), or train it
further with RL from its SFT weights (`--rl`, evaluated on the same held-out problems before and after)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict


def add_demo_parser(sub) -> None:
    """Registers the `demo` subcommand on an argparse subparsers object."""
    p = sub.add_parser("demo", help="a tiny reasoning model trained by zaya_rt, evaluated with Markovian RSA")
    p.add_argument("--train", action="store_true", help="build the demo model from scratch (pretraining + SFT)")
    p.add_argument("--rl", action="store_true", help="RL with verifiable rewards from the demo model (--model or the "
                   "shipped one) on training-split problems; evaluates before and after")
    p.add_argument("--rl-steps", type=int, default=None, help="--rl: RL optimizer steps (default: the RL recipe's)")
    p.add_argument("--out", default=None, help="--train / --rl: the run folder (model in OUT/model); default "
                   "zaya-demo / zaya-demo-rl")
    p.add_argument("--recipe", default=None, help="--train: a recipe JSON (the demo.json format) instead of the "
                   "built-in one, e.g. a shortened run")
    p.add_argument("--model", default=None, help="evaluate this demo model folder (default: the shipped model)")
    p.add_argument("--seed", type=int, default=1234, help="evaluation problems and sampling (never a training seed)")
    p.add_argument("--problems", type=int, default=100, help="held-out problems (default %(default)s)")
    p.add_argument("--population", type=int, default=None, help="N candidates per round (default: the recipe's)")
    p.add_argument("--tails", type=int, default=None, help="C tails per aggregation (default: the recipe's)")
    p.add_argument("--rounds", type=int, default=None, help="T aggregation rounds (default: the recipe's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the recipe's)")
    p.add_argument("--steps", type=int, default=None, help="operations per problem (default: the recipe's)")
    p.add_argument("--json", default=None, help="write the report (single, majority, rsa, problems, config, seconds)")
    p.add_argument("--plot", default=None, help="PNG of accuracy vs round and vs generated tokens (matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="--train / --rl: no progress bars")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Entry of `zaya-rt demo`: bad arguments print one line and return 2."""
    try:
        return _run(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"zaya-rt demo: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from zaya_rt.demo.evaluate import format_table, plot
    from zaya_rt.demo.recipe import RECIPE, Recipe

    model_dir = args.model
    for flag, value in (("--problems", args.problems), ("--population", args.population), ("--tails", args.tails),
                        ("--steps", args.steps)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive int, got {value}")
    if args.rounds is not None and args.rounds < 0:
        raise ValueError(f"--rounds must be >= 0, got {args.rounds}")
    if args.recipe is not None and not args.train:
        raise ValueError("--recipe only applies to --train")
    if args.rl_steps is not None and not args.rl:
        raise ValueError("--rl-steps only applies to --rl")
    if args.rl and args.train:
        raise ValueError("--train and --rl are separate runs: train first, then --rl --model OUT/model")
    if args.rl:
        return _run_rl(args)
    if args.train:
        from zaya_rt.demo.train import train_demo

        recipe = RECIPE if args.recipe is None else Recipe.from_json_file(args.recipe)
        start = time.perf_counter()
        model_dir = train_demo(args.out or "zaya-demo", recipe, progress=not args.no_progress)
        print(f"trained the demo model in {time.perf_counter() - start:.0f}s: {model_dir} "
              f"(evaluate it again with: zaya-rt demo --model {model_dir})")
    report = _evaluate(args, model_dir)
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    return 0


def _evaluate(args: argparse.Namespace, model_dir: str | None) -> dict:
    import torch

    import zaya_rt
    from zaya_rt.demo.evaluate import evaluate, load_demo_model

    model, tokenizer, recipe = load_demo_model(model_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"zaya_rt {zaya_rt.__version__}: a {params / 1e6:.1f}M-parameter ZAYA1-shaped MoE model "
          f"({model.config.num_hidden_layers} layers, {model.config.num_experts} experts), trained by zaya_rt "
          f"on modular arithmetic chains, {torch.get_num_threads()} CPU threads")
    report = evaluate(model, tokenizer, recipe, seed=args.seed, problems=args.problems,
                      population=args.population, tails=args.tails, rounds=args.rounds,
                      temperature=args.temperature, steps=args.steps)
    report["config"]["model"] = os.path.abspath(model_dir) if model_dir else "shipped"
    return report


def _standard_error(accuracy: float, problems: int) -> float:
    """Binomial standard error of an accuracy over `problems` problems (samples of one problem are not
    independent, so problems, not samples, count)."""
    return (accuracy * (1 - accuracy) / problems) ** 0.5


def _run_rl(args: argparse.Namespace) -> int:
    from zaya_rt.demo.evaluate import format_table, plot
    from zaya_rt.demo.rl import RL_RECIPE, rl_demo, summarize_metrics, with_steps

    recipe = with_steps(RL_RECIPE, args.rl_steps)
    out = args.out or "zaya-demo-rl"
    print("before RL:")
    before = _evaluate(args, args.model)
    print(format_table(before))
    start = time.perf_counter()
    model_dir = rl_demo(out, recipe, model_dir=args.model, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"after RL ({recipe.steps} steps, {seconds:.0f}s):")
    after = _evaluate(args, model_dir)
    print(format_table(after))
    curve = summarize_metrics(os.path.join(out, "rl", "metrics.jsonl"))
    n = len(before["problems"])
    for name in ("single", "majority"):
        b, a = before[name]["accuracy"], after[name]["accuracy"]
        print(f"{name}: {b:.3f} -> {a:.3f} ({a - b:+.3f}; binomial standard errors {_standard_error(b, n):.3f} / "
              f"{_standard_error(a, n):.3f} over {n} problems)")
    print(f"RL reward: mean {curve['reward_first']:.3f} over the first steps -> {curve['reward_last']:.3f} over the "
          f"last; model in {model_dir}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"before": before, "after": after, "rl": curve, "rl_recipe": asdict(recipe),
                       "rl_seconds": seconds, "model": os.path.abspath(model_dir)}, f, indent=1)
    if args.plot:
        plot(after, args.plot)
    return 0

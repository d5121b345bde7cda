"""`zaya-rt rsa`: Markovian RSA on one problem or a JSONL file of `{"problem": ..., "answer": ...}` lines, with
a progress bar per round, a JSON report rewritten after every round (a rerun with the same --out resumes from
the last complete round) and an optional plot of accuracy and tokens per round."""

from __future__ import annotations

import argparse
import json
import os
import sys

from zaya_rt.jsonl import read_jsonl
from zaya_rt.plotting import headless_pyplot


def add_rsa_parser(sub) -> None:
    """Registers the `rsa` subcommand on an argparse subparsers object."""
    p = sub.add_parser("rsa", help="Markovian RSA test-time compute on math problems")
    p.add_argument("--model", default=None, help="checkpoint directory with tokenizer.json (default: tiny model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--problem", help="one problem text")
    src.add_argument("--problems", help='JSONL file of {"problem": ..., "answer": ...} lines')
    p.add_argument("--answer", default=None, help="gold answer of --problem")
    p.add_argument("--population", type=int, default=16, help="N: candidates per round")
    p.add_argument("--tails", type=int, default=4, help="C: tails aggregated per candidate")
    p.add_argument("--rounds", type=int, default=2, help="T: aggregation rounds")
    p.add_argument("--budget", type=int, default=8192, help="beta: generated tokens per candidate")
    p.add_argument("--tail-tokens", type=int, default=4096, help="tau: generated tokens kept per candidate")
    p.add_argument("--head-tokens", type=int, default=0, help="first generated tokens kept before the tail")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", choices=["exact", "math"], default="exact",
                   help="answer checker: exact match, or math-verify (pip install zaya_rt[math])")
    p.add_argument("--out", default=None, help="JSON report, rewritten after every round; rerun to resume")
    p.add_argument("--plot", default=None, help="PNG of accuracy and tokens per round (needs matplotlib)")
    p.add_argument("--num-pages", type=int, default=None, help="KV pages of the engine (default: the RSA bound)")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_rsa)


def _load_problems(args) -> list[dict]:
    if args.problem is not None:
        return [{"problem": args.problem, "answer": args.answer}]
    problems = []
    for number, item in read_jsonl(args.problems):
        if not isinstance(item.get("problem"), str):
            raise ValueError(f'{args.problems}: line {number}: needs {{"problem": str, "answer": ...}}')
        answer = item.get("answer")
        problems.append({"problem": item["problem"], "answer": None if answer is None else str(answer)})
    if not problems:
        raise ValueError(f"{args.problems}: no problems")
    return problems


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _round_scores(result, checker) -> list[dict]:
    rows = []
    for t, stats in enumerate(result.stats):
        row = {"round": t, "generated_tokens": stats.generated_tokens, "prompt_tokens": stats.prompt_tokens}
        if checker is not None:
            row.update(mean_accuracy=result.mean_accuracy(t, checker),
                       majority_vote=float(result.majority_vote(t, checker)),
                       pass_at_n=float(result.pass_at_n(t, checker)))
        rows.append(row)
    return rows


def _summary(entries: list[dict], rounds: int) -> list[dict]:
    out = []
    for t in range(rounds + 1):
        rows = [e["scores"][t] for e in entries if len(e.get("scores", [])) > t]
        if not rows:
            break
        row = {"round": t, "problems": len(rows), "generated_tokens": sum(r["generated_tokens"] for r in rows),
               "prompt_tokens": sum(r["prompt_tokens"] for r in rows)}
        scored = [r for r in rows if "mean_accuracy" in r]
        for key in ("mean_accuracy", "majority_vote", "pass_at_n"):
            if scored:
                row[key] = sum(r[key] for r in scored) / len(scored)
        out.append(row)
    return out


def plot_report(report: dict, path: str) -> None:
    """Accuracy (mean, majority vote, pass@N over the problems) and tokens per round, as a PNG."""
    plt = headless_pyplot()

    rows = report["summary"]
    rounds = [r["round"] for r in rows]
    fig, (acc, tok) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("mean_accuracy", "mean accuracy"), ("majority_vote", "majority vote"),
                       ("pass_at_n", "pass@N")):
        acc.plot(rounds, [r.get(key, float("nan")) for r in rows], marker="o", label=label)
    acc.set(xlabel="round", ylabel="accuracy", ylim=(-0.02, 1.02), title="Markovian RSA accuracy")
    acc.legend()
    tok.bar([r - 0.2 for r in rounds], [r["prompt_tokens"] for r in rows], width=0.4, label="prompt")
    tok.bar([r + 0.2 for r in rounds], [r["generated_tokens"] for r in rows], width=0.4, label="generated")
    tok.set(xlabel="round", ylabel="tokens (all problems)", title="tokens per round")
    tok.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _tokenizer(model_dir, load_tokenizer):
    """The checkpoint's transformers tokenizer (it carries the chat template) when transformers is installed,
    else its tokenizer.json; the byte tokenizer for the tiny model."""
    if model_dir is not None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            return load_tokenizer(model_dir)
        return AutoTokenizer.from_pretrained(model_dir)
    return load_tokenizer(None)


def run_rsa(args: argparse.Namespace) -> int:
    """Entry of `zaya-rt rsa`: bad arguments print one line and return 2."""
    try:
        return _run(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"zaya-rt rsa: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    import zaya_rt
    from zaya_rt.rsa import MathVerify, RSAConfig, RSAResult, markovian_rsa
    from zaya_rt.rsa.answers import ExactMatch
    from zaya_rt.rsa.templates import DefaultTemplate
    from zaya_rt.runtime import load_tokenizer, tiny_model

    config = RSAConfig(population=args.population, tails=args.tails, rounds=args.rounds, budget=args.budget,
                       tail_tokens=args.tail_tokens, head_tokens=args.head_tokens, temperature=args.temperature,
                       top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, seed=args.seed)
    problems = _load_problems(args)
    report = {"config": config.to_dict(), "model": args.model, "check": args.check,
              "problems": [dict(p) for p in problems], "summary": []}
    if args.out and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            saved = json.load(f)
        same = (saved.get("config") == report["config"] and saved.get("model") == args.model
                and [(p["problem"], p["answer"]) for p in saved.get("problems", [])]
                == [(p["problem"], p["answer"]) for p in problems])
        if not same:
            print(f"zaya-rt rsa: {args.out} holds a report of another model, config or problem set; "
                  "give another --out", file=sys.stderr)
            return 2
        report = saved
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = (tiny_model(seed=0, dtype=dtype) if args.model is None
             else zaya_rt.load(args.model, dtype=dtype)).to(args.device)
    tokenizer = _tokenizer(args.model, load_tokenizer)
    template = DefaultTemplate(tokenizer)
    eos = getattr(model.config, "eos_token_id", None)
    stop = None if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    num_pages = args.num_pages
    if num_pages is None:  # N x (|q| + C*(tau+head) + template overhead + beta), in pages
        longest = max(len(template.aggregate(p["problem"], [[]] * config.tails)) for p in problems)
        per_trace = longest + config.tails * (config.tail_tokens + config.head_tokens) + config.budget
        num_pages = config.population * -(-per_trace // args.page_size)
    engine = zaya_rt.Engine(model, num_pages=num_pages, page_size=args.page_size, max_batch=config.population)
    for index, entry in enumerate(report["problems"]):
        checker = None
        if entry["answer"] is not None:
            checker = MathVerify(entry["answer"]) if args.check == "math" else ExactMatch(entry["answer"])
        resume = RSAResult.from_dict(entry["result"]) if "result" in entry else None

        def save(result, entry=entry, checker=checker):
            entry["result"] = result.to_dict()
            entry["scores"] = _round_scores(result, checker)
            report["summary"] = _summary(report["problems"], config.rounds)
            if args.out:
                _write_json(args.out, report)

        if not args.quiet:
            print(f"problem {index + 1}/{len(problems)}", file=sys.stderr)
        result = markovian_rsa(engine, tokenizer, entry["problem"], config, template=template,
                               progress=not args.quiet, resume=resume, on_round=save, stop_token_ids=stop)
        save(result)
        final = entry["scores"][-1]
        line = f"problem {index + 1}: answers {result.answers()}"
        if checker is not None:
            line += (f"  mean acc {final['mean_accuracy']:.3f}  majority {final['majority_vote']:.0f}  "
                     f"pass@N {final['pass_at_n']:.0f}")
        print(line)
    for row in report["summary"]:
        print(json.dumps(row))
    if args.plot:
        if any(p["answer"] is not None for p in report["problems"]):
            plot_report(report, args.plot)
        else:
            print("zaya-rt rsa: no gold answers, so no accuracy plot", file=sys.stderr)
    return 0

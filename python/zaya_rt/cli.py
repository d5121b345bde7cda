"""The `zaya-rt` command.

  zaya-rt demo    a tiny reasoning model trained by zaya_rt, evaluated with Markovian RSA (no downloads;
                  `--train` rebuilds it from scratch)
  zaya-rt bench   kernel benchmarks against PyTorch peers, as a table (`--mode fwd_bwd`: forward + backward;
                  `zaya-rt bench e2e`: end-to-end decode; `zaya-rt bench train`: a whole training step)
  zaya-rt generate  stream text from a checkpoint (or the embedded tiny model) with the continuous-batching engine
  zaya-rt train   pretraining / SFT from a TOML config (rerunning the same command resumes; --fresh starts over)
  zaya-rt rl      RL with verifiable rewards on engine rollouts from a TOML config (resumes like train)
  zaya-rt rsa     Markovian RSA test-time compute on math problems (population, tails, rounds, report, plot)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _generate(args: argparse.Namespace) -> int:
    import zaya_rt
    from zaya_rt.runtime import load_tokenizer, tiny_model
    from zaya_rt.runtime.tokenizer import StreamDecoder

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    device = args.device
    if args.model is None:
        model = tiny_model(seed=0, dtype=dtype).to(device)
    else:
        model = zaya_rt.load(args.model, dtype=dtype, device=device)
    tokenizer = load_tokenizer(args.model)
    prompt = tokenizer.encode(args.prompt)
    params = zaya_rt.SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, seed=args.seed)
    engine = zaya_rt.Engine(model, max_batch=1)
    decoder = StreamDecoder(tokenizer)
    sys.stdout.write(args.prompt)
    start = time.perf_counter()
    first = None
    count = 0
    for _, token in engine.stream([prompt], params):
        first = first or time.perf_counter()
        count += 1
        sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    end = time.perf_counter()
    decode_rate = (count - 1) / (end - first) if count > 1 else 0.0
    print(f"\n[{len(prompt)} prompt tokens, {count} generated in {end - start:.2f}s: first token after "
          f"{first - start:.2f}s, decode {decode_rate:.1f} tok/s]", file=sys.stderr)
    return 0


def _bench_e2e(args: argparse.Namespace) -> int:
    from zaya_rt.benchmarks.e2e import CONFIG_8B_SHAPED, run_e2e

    if args.device == "cuda" and not torch.cuda.is_available():
        print("zaya-rt bench e2e: --device cuda needs a CUDA GPU", file=sys.stderr)
        return 2
    config = None
    if args.device == "cuda":
        layers = args.layers or 4
        config = dict(CONFIG_8B_SHAPED, num_hidden_layers=layers)
        print(f"ZAYA1-8B-shaped model with {layers} of its 40 layers (random weights)")
    batches = tuple(int(b) for b in args.batches.split(","))
    run_e2e(device=args.device, config=config, batches=batches, prompt_len=args.prompt_len,
            new_tokens=args.new_tokens, repeats=args.repeats)
    return 0


_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _bench_train(args: argparse.Namespace) -> int:
    from zaya_rt.benchmarks.e2e import CONFIG_124M
    from zaya_rt.benchmarks.train import run_train

    if args.device == "cuda" and not torch.cuda.is_available():
        print("zaya-rt bench train: --device cuda needs a CUDA GPU", file=sys.stderr)
        return 2
    dtypes = _parse_dtypes(args.dtypes, "zaya-rt bench train")
    if dtypes is None:
        return 2
    for flag, value in (("--sequences", args.sequences), ("--seq-len", args.seq_len), ("--repeats", args.repeats),
                        ("--layers", args.layers or 1)):
        if value < 1:
            print(f"zaya-rt bench train: {flag} must be at least 1, got {value}", file=sys.stderr)
            return 2
    config = dict(CONFIG_124M, num_hidden_layers=args.layers or CONFIG_124M["num_hidden_layers"])
    print("124M-shaped ZAYA model (random weights); ratio = transformers' best step time / zaya_rt's "
          "(> 1 means zaya_rt is faster)")
    peers = None
    if args.peers:
        peers = [tuple(pair.split("/")) for pair in args.peers.split(",")]
        if any(len(pair) != 2 for pair in peers):
            print(f"zaya-rt bench train: --peers takes experts/attn pairs, got {args.peers!r}", file=sys.stderr)
            return 2
    losses = {"both": ("fused", "unfused"), "recompute": ("fused", "recompute")}.get(args.loss, (args.loss,))
    run_train(device=args.device, config=config, sequences=args.sequences, seq_len=args.seq_len,
              dtypes=dtypes, repeats=args.repeats, losses=losses, profile=args.profile, peers=peers)
    return 0


def _run_trainer(command: str, load_config, trainer_cls, args: argparse.Namespace, steps: str) -> int:
    """Loads the config, resumes the run from its out_dir and trains; 2 after printing why when the config or a
    checkpoint is bad."""
    try:
        config = load_config(args.config)
        trainer = trainer_cls(config, fresh=args.fresh, progress=not args.no_progress)
        trainer.resume()
    except (OSError, ValueError, TypeError) as exc:
        print(f"zaya-rt {command}: {exc}", file=sys.stderr)
        return 2
    final = trainer.run()
    if getattr(trainer, "is_main", True):  # rank 0 of a torchrun launch
        print(f"trained {trainer.step} {steps}; final model in {final}, metrics in {trainer.out_dir}/metrics.jsonl")
    if hasattr(trainer, "close"):
        trainer.close()
    return 0


def _train(args: argparse.Namespace) -> int:
    from zaya_rt.train.config import load_config
    from zaya_rt.train.trainer import Trainer

    return _run_trainer("train", load_config, Trainer, args, "steps")


def _rl(args: argparse.Namespace) -> int:
    from zaya_rt.train.rl.config import load_rl_config
    from zaya_rt.train.rl.trainer import RLTrainer

    return _run_trainer("rl", load_rl_config, RLTrainer, args, "RL steps")


def _parse_dtypes(text: str, command: str) -> tuple | None:
    dtypes = []
    for name in text.split(","):
        if name not in _DTYPE_NAMES:
            print(f"{command}: --dtypes takes bfloat16 and/or float32, got {name!r}", file=sys.stderr)
            return None
        dtypes.append(_DTYPE_NAMES[name])
    return tuple(dtypes)


def _bench_fwd_bwd(args: argparse.Namespace) -> int:
    from zaya_rt.benchmarks import format_table
    from zaya_rt.benchmarks.fwd_bwd import FWD_BWD_BUILDERS, fwd_bwd_builder, run_fwd_bwd_cases

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("zaya-rt bench: --device cuda needs a CUDA GPU", file=sys.stderr)
        return 2
    dtypes = _parse_dtypes(args.dtypes, "zaya-rt bench --mode fwd_bwd")
    if dtypes is None:
        return 2
    families = [f.strip() for f in args.ops.split(",") if f.strip()]
    unknown = [f for f in families if f not in FWD_BWD_BUILDERS]
    if unknown:
        print(f"(no forward + backward cases for {', '.join(unknown)}: forward-only families)")
    cases = []
    for family in (f for f in families if f in FWD_BWD_BUILDERS):
        builder = fwd_bwd_builder(family)
        if builder is None:
            print(f"{family}: forward + backward cases not available in this build "
                  f"({'.'.join(FWD_BWD_BUILDERS[family])} is missing)")
            continue
        shapes = None
        if family == "cca" and args.cca_shapes:
            shapes = [tuple(int(v) for v in shape.split(",")) for shape in args.cca_shapes.split(";")]
        cases += builder(device, shapes=shapes, dtypes=dtypes)
    results = run_fwd_bwd_cases(cases, device, min_time_s=args.min_time)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"device={device} ({name})  forward + backward; peer/ours > 1 means zaya_rt is faster; medians")
    _print_bf16_path(device, families)
    print(format_table(results))
    return 0


def _print_bf16_path(device: str, ops) -> None:
    """Names the CPU bf16 GEMM path (and the rates it was chosen by) when the benchmarked ops run GEMMs on it."""
    if device == "cpu" and any(op in ops for op in ("moe", "grouped_gemm")):
        from zaya_rt.benchmarks.moe import bf16_path_report

        print(bf16_path_report())


def _bench(args: argparse.Namespace) -> int:
    if args.what == "ops" and args.mode == "fwd_bwd":
        return _bench_fwd_bwd(args)
    if args.what == "e2e":
        return _bench_e2e(args)
    if args.what == "train":
        return _bench_train(args)
    from zaya_rt.benchmarks import (
        attention_cases,
        cca_cases,
        dispatch_cases,
        format_table,
        grouped_gemm_cases,
        moe_cases,
        norm_cases,
        router_cases,
        run_cases,
    )

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("zaya-rt bench: --device cuda needs a CUDA GPU", file=sys.stderr)
        return 2
    tokens = tuple(int(t) for t in args.tokens.split(",")) if args.tokens else None
    cases = []
    if "norms" in args.ops:
        cases += norm_cases(device, tokens=tokens, hidden=args.hidden)
    if "moe" in args.ops:
        shapes = None
        if args.moe_shapes:
            shapes = [tuple(int(v) for v in shape.split(",")) for shape in args.moe_shapes.split(";")]
        cases += moe_cases(device, shapes=shapes)
    if "grouped_gemm" in args.ops:
        cases += grouped_gemm_cases(device)
    if "dispatch" in args.ops:
        cases += dispatch_cases(device)
    if "router" in args.ops:
        cases += router_cases(device)
    if "attention" in args.ops:
        attn_tokens = tuple(int(t) for t in args.attn_tokens.split(",")) if args.attn_tokens else None
        cases += attention_cases(device, tokens=attn_tokens)
    if "cca" in args.ops:
        cases += cca_cases(device)
    if "sampling" in args.ops or "pages" in args.ops:
        from zaya_rt.benchmarks.runtime import page_cases, sampling_cases

        cases += sampling_cases(device) if "sampling" in args.ops else []
        cases += page_cases(device) if "pages" in args.ops else []
    if "newton_schulz" in args.ops:
        from zaya_rt.benchmarks.newton_schulz import newton_schulz_cases

        cases += newton_schulz_cases(device)
    results = run_cases(cases, device, min_time_s=args.min_time)
    from zaya_rt.benchmarks.harness import peak_gbps_for

    peak = args.peak_gbps or peak_gbps_for(device)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"device={device} ({name})  peer/ours > 1 means zaya_rt is faster; medians"
          + (f"; roofline {peak:.0f} GB/s" if peak else ""))
    _print_bf16_path(device, args.ops)
    print(format_table(results, peak))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zaya-rt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    from zaya_rt.demo.cli import add_demo_parser

    add_demo_parser(sub)
    bench = sub.add_parser("bench", help="kernel benchmarks against PyTorch peers")
    bench.add_argument("what", nargs="?", choices=["ops", "e2e", "train"], default="ops",
                       help="ops: kernel benchmarks (default); e2e: end-to-end greedy decode vs transformers; "
                       "train: a whole training step (forward, loss, backward) vs transformers")
    bench.add_argument("--mode", choices=["fwd", "fwd_bwd"], default="fwd",
                       help="ops: time the forward (default) or forward + backward against autograd peers "
                       "(families norms, moe, router, attention, cca)")
    bench.add_argument("--backward", dest="mode", action="store_const", const="fwd_bwd", help="same as --mode fwd_bwd")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--batches", default="1,16", help="e2e: comma-separated batch sizes")
    bench.add_argument("--prompt-len", type=int, default=128, help="e2e: prompt tokens")
    bench.add_argument("--new-tokens", type=int, default=32, help="e2e: generated tokens per sequence")
    bench.add_argument("--repeats", type=int, default=3, help="e2e, train: timed runs per measurement (best is kept)")
    bench.add_argument("--layers", type=int, default=None, help="e2e --device cuda: layers of the ZAYA1-8B-shaped "
                       "model (default 4); train: layers of the 124M-shaped model (default 8)")
    bench.add_argument("--sequences", type=int, default=4, help="train: sequences (packed documents) per step")
    bench.add_argument("--seq-len", type=int, default=512, help="train: tokens per sequence")
    bench.add_argument("--dtypes", default="bfloat16,float32",
                       help="train and --mode fwd_bwd: comma-separated bfloat16, float32")
    bench.add_argument("--cca-shapes", default=None,
                       help="--mode fwd_bwd: semicolon-separated B,T,d shapes of the cca cases (default 4,512,64;1,2048,128)")
    bench.add_argument("--loss", choices=["fused", "unfused", "both", "recompute"], default="fused",
                       help="train: zaya_rt's loss, the chunked fused cross-entropy over the LM head (default), "
                       "F.cross_entropy on full logits, or both timed in the same run; recompute: the fused loss "
                       "with the MoE's kept gate-up activations (the model's default) and with them recomputed in "
                       "the backward (ZayaExperts.keep_activations = False) in the same run")
    bench.add_argument("--peers", default=None, help="train: comma-separated experts/attn implementation pairs of "
                       "transformers (default: eager/eager,eager/sdpa,grouped_mm/eager,grouped_mm/sdpa)")
    bench.add_argument("--profile", action="store_true",
                       help="train: also print torch.profiler's top ops of zaya_rt's step by self CPU time")
    bench.add_argument("--tokens", default=None, help="comma-separated token counts (default: decode and prefill)")
    bench.add_argument("--hidden", type=int, default=2048, help="hidden size of the norms cases")
    bench.add_argument("--ops", default="norms,moe,grouped_gemm,dispatch,router,attention,cca", help="comma-separated op families: norms, moe, grouped_gemm, dispatch, router, attention, cca, sampling, pages, newton_schulz (Muon's update, [16, 1024, 512] bf16 on CPU)")
    bench.add_argument("--attn-tokens", default=None, help="comma-separated prefill lengths of the attention cases "
                       "(default: 2048 on CPU, 2048,8192,16384 on GPU)")
    bench.add_argument("--moe-shapes", default=None,
                       help="semicolon-separated T,D,I,E shapes for the moe cases (default: decode and prefill)")
    bench.add_argument("--peak-gbps", type=float, default=None,
                       help="bandwidth roofline for the %%peak column (default: known GPUs by name)")
    bench.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    bench.set_defaults(func=_bench)
    gen = sub.add_parser("generate", help="stream text from a checkpoint (default: the embedded tiny model)")
    gen.add_argument("--model", default=None, help="checkpoint directory with tokenizer.json (default: tiny model)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    gen.add_argument("--device", default="cpu")
    gen.set_defaults(func=_generate)
    train = sub.add_parser("train", help="pretraining / SFT from a TOML config; rerunning resumes")
    train.add_argument("--config", required=True, help="the run's TOML file ([model], [data], [train], [balancer])")
    train.add_argument("--fresh", action="store_true", help="delete out_dir's checkpoints and metrics, start over")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)
    rl = sub.add_parser("rl", help="RL with verifiable rewards on engine rollouts from a TOML config; rerunning resumes")
    rl.add_argument("--config", required=True, help="the run's TOML file ([model], [data], [rl], [balancer])")
    rl.add_argument("--fresh", action="store_true", help="delete out_dir's checkpoints and metrics, start over")
    rl.add_argument("--no-progress", action="store_true", help="no progress bar")
    rl.set_defaults(func=_rl)
    from zaya_rt.rsa.cli import add_rsa_parser

    add_rsa_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Mutation check: breaks a CPU kernel on purpose, rebuilds, and runs the tests that should notice.

Each named mutation replaces one exact snippet of a kernel source. The work happens in a copy of the checkout
(default build/mutation/src; the worktree's sources and its python/zaya_rt/_C*.so are never touched), built
with tools/dev_build.sh into build/mutation/build, so after the first build each mutation recompiles only the
file it changes (once per CPU ISA). The copy is restored after every mutation, whatever happens.

    nice python tools/mutation_check.py                   # baseline, then every mutation
    nice python tools/mutation_check.py gemm_drop_last_k  # some of them
    nice python tools/mutation_check.py gemm_drop_last_k --skip-baseline --tests "tests/test_moe.py -k every_isa"
    python tools/mutation_check.py --list

Exit status 0 when the baseline passes and every mutation fails at least one test ("caught")."""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutation:
    path: str  # kernel source, relative to the repository root
    old: str  # exact snippet; must occur once
    new: str
    tests: tuple[str, ...]  # pytest arguments that should fail
    what: str


MUTATIONS = {
    "gemm_drop_last_k": Mutation(
        "csrc/cpu/moe.cpp",
        "Source<T>{b + g * p.b_group_stride, p.b_row_stride, p.b_col_stride}, end - start, p.N, p.K});",
        "Source<T>{b + g * p.b_group_stride, p.b_row_stride, p.b_col_stride}, end - start, p.N,"
        " p.K > 1 ? p.K - 1 : p.K});",
        ("tests/test_moe.py",),
        "grouped GEMM forward ignores the last column of K (every group)",
    ),
    "rmsnorm_skip_row": Mutation(
        "csrc/cpu/norms.cpp",
        "  for (int64_t i = 0; i < p.rows; ++i) {\n    const TX* xr = x + i * p.x_row_stride;\n    TW* orow",
        "  for (int64_t i = 0; i < p.rows; ++i) {\n    if (i == p.rows / 2 && p.rows > 1) continue;\n"
        "    const TX* xr = x + i * p.x_row_stride;\n    TW* orow",
        ("tests/test_norms.py",),
        "rms_norm forward leaves the middle row (of two or more) unwritten",
    ),
    "attention_window_off_by_one": Mutation(
        "csrc/cpu/attention_tile.h",
        "int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;",
        "int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window) : 0;",
        ("tests/test_attention.py",),
        "sliding window admits one key too many (prefill and decode)",
    ),
    "attention_softmax_scale": Mutation(
        "csrc/cpu/attention_varlen.cpp",
        "const float mx = scale_max(sr + kr.lo, kr.hi - kr.lo, p.scale);",
        "const float mx = scale_max(sr + kr.lo, kr.hi - kr.lo, p.scale * 1.01f);",
        ("tests/test_attention.py",),
        "prefill forward scales scores by 1.01 / sqrt(d)",
    ),
    "router_gate_includes_bias": Mutation(
        "csrc/cpu/router_rows.h",
        "p.gate[t] = best == C - 1 ? 0.f : best_p;",
        "p.gate[t] = best == C - 1 ? 0.f : best_score;",
        ("tests/test_router.py",),
        "router gate is p[choice] + balancing_bias[choice] (the selection score)",
    ),
    "moe_down_drop_last_k": Mutation(
        "csrc/cpu/moe.cpp",
        "jobs[e].K = I;",
        "jobs[e].K = I > 1 ? I - 1 : I;",
        ("tests/test_moe.py",),
        "fused expert block's down projection ignores the last intermediate column",
    ),
    "moe_decode_drop_k_tail": Mutation(
        "csrc/cpu/moe_decode.cpp",
        "const uint32_t tail = (1u << (K % step)) - 1u;",
        "const uint32_t tail = ((1u << (K % step)) - 1u) >> 1;",
        ("tests/test_moe_decode.py",),
        "decode path of the expert block drops the last element of a partial K vector (both products)",
    ),
}


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def sync(src_root: Path) -> None:
    """Copies the checkout into src_root, rewriting only files whose content differs (so ninja stays incremental)."""
    for rel in _tracked_files():
        src, dst = ROOT / rel, src_root / rel
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        os.utime(dst)  # newer than any object built from an earlier content


def build(src_root: Path, build_dir: Path, log) -> None:
    env = dict(os.environ, ZAYA_RT_BUILD_DIR=str(build_dir))
    env.setdefault("ZAYA_RT_BUILD_JOBS", "2")
    subprocess.run(["bash", str(src_root / "tools/dev_build.sh")], cwd=src_root, env=env, check=True, stdout=log,
                   stderr=subprocess.STDOUT)


def run_tests(src_root: Path, tests, log) -> tuple[int, str]:
    """Runs pytest (stopping at the first failure) on the copy; returns its exit status and the first failed test."""
    env = dict(os.environ, PYTHONPATH=str(src_root / "python"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", "--hypothesis-seed=0",
           *tests]
    run = subprocess.run(cmd, cwd=src_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(run.stdout)
    log.flush()
    failed = [line.split(" - ")[0] for line in run.stdout.splitlines() if line.startswith("FAILED ")]
    return run.returncode, failed[0][len("FAILED "):] if failed else ""


def verdict(rc: int) -> str:
    return {0: "survived", 1: "caught"}.get(rc, f"caught (pytest exit {rc})" if rc < 0 or rc > 5 else f"error {rc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "mutation")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--tests", type=shlex.split, help="pytest arguments, one string, instead of each mutation's "
                    "test files (e.g. to see whether one test alone notices)")
    args = ap.parse_args()
    if args.list:
        for name, m in MUTATIONS.items():
            print(f"{name:30s} {m.path}: {m.what}")
        return 0
    names = args.names or list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        ap.error(f"unknown mutation(s) {unknown}; see --list")
    src_root, build_dir = args.work / "src", args.work / "build"
    args.work.mkdir(parents=True, exist_ok=True)
    sync(src_root)
    results = {}
    with open(args.work / "log.txt", "a") as log:
        if not args.skip_baseline:
            t0 = time.time()
            build(src_root, build_dir, log)
            tests = args.tests or sorted({t for n in names for t in MUTATIONS[n].tests})
            rc, _ = run_tests(src_root, tests, log)
            print(f"baseline: pytest exit {rc} ({time.time() - t0:.0f} s)", flush=True)
            if rc != 0:
                print(f"baseline fails: see {args.work / 'log.txt'}")
                return 1
        for name in names:
            m = MUTATIONS[name]
            target = src_root / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                results[name] = "snippet not found once (source changed?)"
                print(f"{name}: {results[name]}", flush=True)
                continue
            t0 = time.time()
            print(f"== {name}", file=log, flush=True)
            try:
                target.write_text(original.replace(m.old, m.new))
                build(src_root, build_dir, log)
                rc, first = run_tests(src_root, args.tests or m.tests, log)
                results[name] = verdict(rc) + (f" by {first}" if first else "")
            except subprocess.CalledProcessError:
                results[name] = "build failed"
            finally:
                target.write_text(original)
            print(f"{name}: {results[name]} ({time.time() - t0:.0f} s)", flush=True)
        build(src_root, build_dir, log)  # leave the copy's build matching the unmutated sources
    return 0 if all(r.startswith("caught") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

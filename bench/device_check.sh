#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU (no network needed): builds and installs the CUDA
# backend, runs the GPU tests (and, with 2+ GPUs, the trainer on 2 NCCL ranks), then times the GPU kernels and
# prints the tables last.
#
#   bash bench/device_check.sh [--dry-run]
#
# Besides the kernels it measures what users run (zaya_rt/benchmarks/device_workloads.py): a training step of
# ZAYA1-8B-shaped layers (bf16, packed 8K windows) against transformers' on the same GPU, and RSA's decode (batch
# 16 and 64 after 8K-32K contexts: tokens/s and % of the HBM roofline); with 2+ GPUs, the trainer on 2 NCCL ranks.
# --dry-run runs only those workloads' Python, on the CPU with tiny shapes (the 2-rank trainer on gloo, 3 steps),
# and builds nothing: tests/test_device_workloads.py calls it so that the script cannot rot.
#
# Needs: Python with torch (CUDA build), cmake, ninja, pybind11, scikit-build-core, pytest; nvcc (CUDACXX, or
# nvcc on PATH, or /usr/local/cuda/bin/nvcc). Environment: CUDA_ARCH (default 90a: H100/H200 only, to keep the
# build short), OUT (if set, the log goes to $OUT/device_check.log and the build log to $OUT/build.log),
# SKIP_BUILD=1 to test an already installed zaya_rt, BUDGET_S (default 450): the whole run's time budget in
# seconds. Every step after the build runs under `timeout` with the smaller of its own cap and the budget left,
# in this order of value: GPU tests, kernel timings, the workloads, `zaya-rt bench`, e2e; a step that finds less
# than 20 s left is skipped and says so. The build took about 4-6 minutes on an H200 host (never run since the
# workloads were added).
#
# The sm_90a CUTLASS grouped GEMM needs the nvidia-cutlass wheel (headers only) at build time, and the device
# machine has no network: carry it in the repo-ignored folder .whl/ (`pip download nvidia-cutlass==4.2.0
# --no-deps -d .whl` here, then `carry: [".whl"]`); this script installs it from there (no index, no deps)
# when the build's Python lacks it, and builds with ZAYA_RT_CUTLASS=ON so a missing CUTLASS fails loudly.
# The MoE timings run the grouped GEMM on both kernel families (ZAYA_RT_CUDA_GROUPED_GEMM=cutlass / wmma);
# the prefill attention timings also run each forward family (ZAYA_RT_CUDA_ATTENTION=sm90 / wmma).
set -euo pipefail

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: bash bench/device_check.sh [--dry-run]"; exit 2 ;;
esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/device_check.log") 2>&1
  BUILD_LOG="$OUT/build.log"
else
  BUILD_LOG=$(mktemp "${TMPDIR:-/tmp}/zaya_rt_build.XXXXXX.log")
fi
START=$SECONDS
BUDGET_S=${BUDGET_S:-450}
(( DRY_RUN )) && BUDGET_S=1800
step() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
# capped CAP CMD...: CMD under `timeout` of min(CAP, budget left); skipped (status 0, said so) under 20 s left.
capped() {
  local cap=$1 left=$((BUDGET_S - (SECONDS - START)))
  shift
  (( DRY_RUN )) && cap=600  # the CPU stand-in's time says nothing about a GPU's: only a hang is stopped
  (( left < cap )) && cap=$left
  if (( cap < 20 )); then
    echo "(skipped: the ${BUDGET_S} s budget is spent)"
    return 0
  fi
  timeout "$cap" "$@"
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
python - <<'PY'
import torch
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, GPU available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
PY
# The trainer on 2 NCCL ranks (FSDP2, then FSDP2 + expert parallelism) against 1 CPU process; with DRY_RUN=1 the
# same runs on 2 gloo CPU ranks for 3 steps.
nccl_trainer() {
  DRY_RUN=$DRY_RUN capped 300 python - <<'PY'
import json, os, subprocess, sys, tempfile
sys.path.insert(0, "tests")
from train_helpers import raw_config, runs_corpus, to_toml

dry = os.environ.get("DRY_RUN") == "1"
steps, warmup, decay = (3, 1, 2) if dry else (12, 2, 4)
root = tempfile.mkdtemp(prefix="zaya_rt_nccl_")
runs_corpus(f"{root}/runs.jsonl", docs=60, seed=1)
env = dict(os.environ, OMP_NUM_THREADS="1")


def run(name, ep, nproc):
    raw = raw_config(f"{root}/runs.jsonl", f"{root}/{name}", steps=steps, optimizer="muon", warmup_steps=warmup,
                     decay_steps=decay, muon_ns_dtype="float32")
    raw["parallel"] = {"expert_parallel": ep}
    with open(f"{root}/{name}.toml", "w") as f:
        f.write(to_toml(raw))
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc else []
    cmd = [sys.executable, *launch, "-m", "zaya_rt", "train", "--config", f"{root}/{name}.toml", "--no-progress"]
    subprocess.run(cmd, env=env if nproc and not dry else dict(env, CUDA_VISIBLE_DEVICES=""), check=True)
    with open(f"{root}/{name}/metrics.jsonl") as f:
        return [json.loads(line)["loss"] for line in f]


cpu, fsdp, ep = run("cpu", 1, 0), run("fsdp", 1, 2), run("ep", 2, 2)
rel = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b))  # noqa: E731
kind = "gloo (dry run)" if dry else "NCCL"
print("per-step losses, 1 CPU process:", [round(v, 5) for v in cpu])
print(f"{kind} FSDP2 vs {kind} FSDP2+EP2: max rel {rel(ep, fsdp):.2e} (same kernels; CPU gloo reaches ~1e-7)")
print(f"{kind} FSDP2 vs 1 CPU process:  max rel {rel(fsdp, cpu):.2e} (GPU vs CPU kernels)")
assert len(fsdp) == len(ep) == steps and rel(ep, fsdp) <= 1e-4 and rel(fsdp, cpu) <= 1e-2
PY
}

# The training-step and RSA decode workloads (--dry-run: on the CPU, tiny shapes).
workloads() {
  local flag=()
  (( DRY_RUN )) && flag=(--dry-run)
  step "training step: 2 ZAYA1-8B-shaped layers, bf16, 4 x 2048 tokens packed (8K window); vs transformers"
  capped 150 python -m zaya_rt.benchmarks.device_workloads train "${flag[@]}" || bench_rc=$?
  step "RSA decode: batch 16 / 64 after 8K / 32K contexts (Engine, CUDA graphs; % of HBM roofline)"
  capped 150 python -m zaya_rt.benchmarks.device_workloads rsa --budget-s 80 "${flag[@]}" || bench_rc=$?
}

if (( DRY_RUN )); then
  step "dry run: the device workloads' Python on the CPU, tiny shapes (numbers mean nothing)"
  train_rc=0 bench_rc=0
  nccl_trainer || train_rc=$?
  workloads
  step "dry run done: trainer $([[ $train_rc == 0 ]] && echo passed || echo "FAILED (rc $train_rc)"), workloads $([[ $bench_rc == 0 ]] && echo ran || echo "FAILED (rc $bench_rc)")"
  exit $(( train_rc != 0 || bench_rc != 0 ))
fi

NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[[ -x "$NVCC" ]] || { echo "no nvcc (set CUDACXX)"; exit 1; }
"$NVCC" --version | tail -n 1

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('cutlass_library') is None)"; then
    wheel=$(ls "$ROOT"/.whl/nvidia_cutlass-*.whl 2>/dev/null | head -n 1 || true)
    if [[ -n "$wheel" ]]; then
      python -m pip install -q --no-index --no-deps --no-compile "$wheel" && echo "installed $(basename "$wheel")"
    else
      echo "no nvidia-cutlass for this Python and no .whl/nvidia_cutlass-*.whl: the sm_90a CUTLASS build will fail"
    fi
  fi
  step "build + install: ZAYA_RT_CUDA=ON ZAYA_RT_CUTLASS=ON, sm_${CUDA_ARCH:-90a} (verbose log: $BUILD_LOG)"
  export ZAYA_RT_CUDA=ON ZAYA_RT_CUTLASS=${ZAYA_RT_CUTLASS:-ON} CUDACXX="$NVCC"
  export CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90a} ${CMAKE_ARGS:-}"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  if ! python -m pip install --no-build-isolation --no-deps -v . >"$BUILD_LOG" 2>&1; then
    tail -n 60 "$BUILD_LOG"
    echo "BUILD FAILED"
    exit 1
  fi
  grep -E "zaya_rt:|Successfully installed" "$BUILD_LOG" || true
  grep -oE "nvcc .*--generate-code=[^ ]+" "$BUILD_LOG" | grep -oE -- "--generate-code=[^ ]+" | sort -u || true
fi

step "import"
(cd / && python -c "
from zaya_rt import _C
print('zaya_rt._C gpu_backend =', _C.gpu_backend, ', cutlass_sm90 =', getattr(_C, 'cutlass_sm90', None))
assert _C.gpu_backend == 'cuda', 'this zaya_rt._C has no CUDA backend'
")

step "GPU tests: pytest -m cuda tests"
tests_rc=0
capped 180 python -m pytest -m cuda -q -p no:cacheprovider tests || tests_rc=$?

step "trainer on 2 ranks with NCCL (torchrun; FSDP2, then FSDP2 + expert parallelism; fp32, 12 steps)"
train_rc=0
if (( $(nvidia-smi -L 2>/dev/null | wc -l) >= 2 )); then
  nccl_trainer || train_rc=$?
else
  echo "(fewer than 2 GPUs: skipped; the CPU gloo version is tests/test_train_distributed.py)"
fi

step "GPU kernel timings (CUDA graphs, bytes each op must move / time)"
bench_rc=0
capped 90 python - <<'PY' || bench_rc=$?
import torch
import zaya_rt  # noqa: F401  registers torch.ops.zaya_rt
from zaya_rt.benchmarks.harness import cuda_graph_time_us

PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}
name = torch.cuda.get_device_name(0)
peak = next((v for k, v in PEAK_GBS.items() if k in name), None)
ops = torch.ops.zaya_rt
D = 2048
rows = []


def timed(fn):
    return cuda_graph_time_us(fn, iters=20)


for dtype in (torch.bfloat16, torch.float32):
    es = torch.finfo(dtype).bits // 8
    for T in (16, 4096, 16384):
        x = torch.randn(T, D, device="cuda", dtype=dtype)
        h = torch.randn(T, D, device="cuda")
        w = torch.randn(D, device="cuda", dtype=dtype)
        p = [torch.randn(D, device="cuda", dtype=dtype) for _ in range(4)]
        g = torch.randn(T, D, device="cuda", dtype=dtype)
        g_r = torch.randn(T, D, device="cuda")
        _, rstd = ops.rms_norm(x, w, 1e-5)
        r, _, rstd_r = ops.residual_rms_norm(x, h, *p, w, 1e-5)
        cases = [
            ("rms_norm fwd", lambda: ops.rms_norm(x, w, 1e-5), T * D * 2 * es),
            ("rms_norm bwd", lambda: ops.rms_norm_backward(g, x, w, rstd), T * D * 3 * es),
            ("residual_rms_norm fwd", lambda: ops.residual_rms_norm(x, h, *p, w, 1e-5), T * D * (2 * es + 8)),
            ("residual_rms_norm bwd", lambda: ops.residual_rms_norm_backward(g_r, g, x, h, *p, w, r, rstd_r),
             T * D * (3 * es + 16)),
        ]
        for op, fn, nbytes in cases:
            us = timed(fn)
            gbs = nbytes / us / 1e3
            rows.append((op, f"{T}x{D}", str(dtype).removeprefix("torch."), us, gbs, gbs / peak if peak else None))

print(f"{name}; roofline {peak or '?'} GB/s; h is fp32 (the residual stream), the rest in the listed dtype")
print(f"{'op':<22} {'shape':<11} {'dtype':<9} {'us':>8} {'GB/s':>8} {'of peak':>8}")
for op, shape, dt, us, gbs, frac in rows:
    print(f"{op:<22} {shape:<11} {dt:<9} {us:>8.1f} {gbs:>8.0f} {'' if frac is None else f'{frac:>7.0%}':>8}")
PY

step "MoE GEMM timings (CUDA graphs, ZAYA1-8B expert shapes D = I = 2048, E = 16, bf16; TFLOP/s of the useful work)"
capped 90 python - <<'PY' || bench_rc=$?
import os

import torch
import torch.nn.functional as F
import zaya_rt  # noqa: F401  registers torch.ops.zaya_rt
from zaya_rt.benchmarks.harness import cuda_graph_time_us
from zaya_rt.ops.moe import grouped_gemm_params

ops = torch.ops.zaya_rt
D = I = 2048
E = 16
dtype = torch.bfloat16
gen = torch.Generator(device="cuda").manual_seed(0)


def timed(fn):
    return cuda_graph_time_us(fn, iters=10)


def try_time(fn):
    try:
        return timed(fn)
    except Exception as e:  # a peer this torch lacks (torch._grouped_mm needs a recent build and sm_90)
        print(f"  (peer unavailable: {type(e).__name__}: {str(e).splitlines()[0][:80]})")
        return None


w1 = torch.randn(E, 2 * I, D, device="cuda", dtype=dtype, generator=gen) / D**0.5
w2 = torch.randn(E, D, I, device="cuda", dtype=dtype, generator=gen) / I**0.5
def family_path(a, b):
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device="cuda")
    p = grouped_gemm_params(a, b, None, out)
    p.workspace_bytes = 1 << 30  # only the workspace's size is looked at
    return zaya_rt._C.grouped_gemm_path(p)


FAMILIES = ("cutlass", "wmma")  # ZAYA_RT_CUDA_GROUPED_GEMM for the rows marked [family]
print(f"{'case':<44} {'ours us':>9} {'TFLOP/s':>8} {'GB/s':>7} {'cuBLAS':>8} {'grouped_mm':>10}  (peer TFLOP/s)")
for T in (16, 4096, 16384):
    x = torch.randn(T, D, device="cuda", dtype=dtype, generator=gen)
    index = torch.randint(0, E, (T,), device="cuda", generator=gen)
    gate = torch.rand(T, device="cuda", generator=gen)
    offsets = torch.bincount(index, minlength=E).cumsum(0).to(torch.int32)
    hit = int(torch.unique(index).numel())
    dy = torch.randn(T, 2 * I, device="cuda", dtype=dtype, generator=gen)
    dense_w = w1[0].clone()
    act = torch.randn(T, I, device="cuda", dtype=dtype, generator=gen)
    dense_w2 = w2[0].clone()
    cases = []
    for fam in FAMILIES:
        cases += [
            (f"grouped_gemm fwd [T,D]x[E,2I,D] [{fam}]", fam, 2 * T * 2 * I * D, hit * 2 * I * D * 2,
             lambda: ops.grouped_gemm(x, w1, offsets), lambda: F.linear(x, dense_w),
             lambda: torch._grouped_mm(x, w1.transpose(1, 2), offs=offsets)),
            (f"grouped_gemm fwd [T,I]x[E,D,I] [{fam}]", fam, 2 * T * D * I, hit * D * I * 2,
             lambda: ops.grouped_gemm(act, w2, offsets), lambda: F.linear(act, dense_w2),
             lambda: torch._grouped_mm(act, w2.transpose(1, 2), offs=offsets)),
            (f"moe_experts fwd (top-1) [{fam}]", fam, 2 * T * 3 * I * D, hit * 3 * I * D * 2,
             lambda: ops.moe_experts(x, index, gate, w1, w2),
             lambda: F.linear((lambda h: F.silu(h[:, :I]) * h[:, I:])(F.linear(x, dense_w)), w2[0]), None),
        ]
    cases.append(("grouped_gemm weight grad", None, 2 * T * 2 * I * D, hit * 2 * I * D * 2,
                  lambda: ops.grouped_gemm_weight_grad(dy, x, offsets), lambda: dy.T @ x,
                  lambda: torch._grouped_mm(dy.T, x, offs=offsets)))
    for name, fam, flops, weight_bytes, ours, dense, grouped in cases:
        os.environ.pop("ZAYA_RT_CUDA_GROUPED_GEMM", None)
        if fam is not None:
            os.environ["ZAYA_RT_CUDA_GROUPED_GEMM"] = fam
            if "grouped_gemm fwd" in name and T == 16384 and "2I" in name:
                print(f"  ({fam}: the kernel family taken is {family_path(x, w1)})")
        us = timed(ours)
        os.environ.pop("ZAYA_RT_CUDA_GROUPED_GEMM", None)
        dense_us = try_time(dense)
        grouped_us = try_time(grouped) if grouped is not None else None
        tf = lambda t: "n/a" if t is None else f"{flops / t / 1e6:.1f}"
        print(f"{name + f' T={T}':<44} {us:>9.1f} {flops / us / 1e6:>8.1f} {weight_bytes / us / 1e3:>7.0f} "
              f"{tf(dense_us):>8} {tf(grouped_us):>10}")
print("GB/s counts the expert weights each case must read (what bounds decode); the SPEC asks >= 0.8x cuBLAS and"
      " >= 1.2x torch._grouped_mm TFLOP/s for the grouped GEMM, >= 70% of HBM bandwidth for MoE decode at 16 tokens")
PY

step "router timings (CUDA graphs, ZAYA1-8B router D = 2048, R = 256, E = 16; peer: unfused PyTorch composition)"
capped 90 python - <<'PY' || bench_rc=$?
import torch
import zaya_rt  # noqa: F401  registers torch.ops.zaya_rt
from zaya_rt.benchmarks.harness import cuda_graph_time_us
from zaya_rt.benchmarks.router import router_cases

print(f"{'case':<28} {'dtype':<9} {'ours us':>9} {'peer us':>9} {'peer/ours':>9} {'TFLOP/s':>8}")
with torch.inference_mode():
    for case in router_cases("cuda", tokens=(1, 16, 4096, 16384), dtypes=(torch.bfloat16, torch.float32)):
        ours = cuda_graph_time_us(case.ours, iters=20)
        peer = cuda_graph_time_us(case.peer, iters=20)
        print(f"{case.shape:<28} {case.dtype:<9} {ours:>9.1f} {peer:>9.1f} {peer / ours:>9.2f} "
              f"{case.flops / ours / 1e6:>8.1f}")
PY

step "attention + CCA prep timings (CUDA graphs; prefill TFLOP/s vs SDPA, decode GB/s of the K/V it must read)"
capped 90 python - <<'PY' || bench_rc=$?
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import zaya_rt  # noqa: F401  registers torch.ops.zaya_rt
from zaya_rt.benchmarks.harness import cuda_graph_time_us
from zaya_rt.ops.attention import attention_varlen_fwd_params

PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}
name = torch.cuda.get_device_name(0)
peak = next((v for k, v in PEAK_GBS.items() if k in name), None)
ops = torch.ops.zaya_rt
dt = torch.bfloat16
gen = torch.Generator(device="cuda").manual_seed(0)
Hq, Hk, d = 8, 2, 128


def try_time(fn, iters=10):
    try:
        return cuda_graph_time_us(fn, iters=iters)
    except Exception as e:  # a peer backend this torch/GPU lacks
        print(f"  (unavailable: {type(e).__name__}: {str(e).splitlines()[0][:90]})")
        return None


ATTN_FAMILIES = ("sm90", "wmma")  # ZAYA_RT_CUDA_ATTENTION for the [family] columns (TFLOP/s)
print(f"{name}; prefill causal GQA Hq={Hq} Hk={Hk} d={d} bf16, one packed sequence")
print(f"{'T':>6} {'ours us':>9} {'TFLOP/s':>8} {'path':>10} {'[sm90]':>7} {'[wmma]':>7} {'SDPA flash':>10} "
      f"{'SDPA cuDNN':>10}  (TFLOP/s)")
for T in (2048, 8192, 16384):
    q = torch.randn(T, Hq, d, device="cuda", dtype=dt, generator=gen)
    k = torch.randn(T, Hk, d, device="cuda", dtype=dt, generator=gen)
    v = torch.randn(T, Hk, d, device="cuda", dtype=dt, generator=gen)
    cu = torch.tensor([0, T], device="cuda", dtype=torch.int32)
    flops = 4 * T * T * Hq * d / 2
    us = try_time(lambda: ops.attention_varlen(q, k, v, cu, cu, True, 0, d ** -0.5))
    lse = torch.empty(Hq, T, device="cuda")
    path = zaya_rt._C.attention_varlen_path(attention_varlen_fwd_params(q, k, v, cu, cu, q, lse, True, 0, 1.0))
    fams = []
    for fam in ATTN_FAMILIES:
        os.environ["ZAYA_RT_CUDA_ATTENTION"] = fam
        fams.append(try_time(lambda: ops.attention_varlen(q, k, v, cu, cu, True, 0, d ** -0.5)))
    os.environ.pop("ZAYA_RT_CUDA_ATTENTION", None)
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))
    peers = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True)
        peers.append(try_time(run))
    tf = lambda t: "n/a" if t is None else f"{flops / t / 1e6:.1f}"  # noqa: E731
    print(f"{T:>6} {us if us is None else round(us, 1)!s:>9} {tf(us):>8} {path:>10} {tf(fams[0]):>7} "
          f"{tf(fams[1]):>7} {tf(peers[0]):>10} {tf(peers[1]):>10}")

print(f"decode: paged bf16 cache (page 16), Hq={Hq} Hk={Hk} d={d}, one query token; roofline {peak or '?'} GB/s")
print(f"{'batch':>5} {'context':>8} {'us':>9} {'GB/s':>8} {'of peak':>8}")
page = 16
for B in (1, 16, 64):
    for L in (4096, 16384, 32768):
        pages_per = L // page
        P = B * pages_per
        kc = torch.randn(P, page, Hk, d, device="cuda", dtype=dt, generator=gen)
        vc = torch.randn(P, page, Hk, d, device="cuda", dtype=dt, generator=gen)
        table = torch.randperm(P, device="cuda", generator=gen).to(torch.int32).view(B, pages_per)
        lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
        q = torch.randn(B, 1, Hq, d, device="cuda", dtype=dt, generator=gen)
        us = try_time(lambda: ops.attention_decode(q, kc, vc, table, lens, d ** -0.5, 0), iters=20)
        nbytes = 2 * B * L * Hk * d * 2
        if us is not None:
            gbs = nbytes / us / 1e3
            print(f"{B:>5} {L:>8} {us:>9.1f} {gbs:>8.0f} {'' if peak is None else f'{gbs / peak:>7.0%}':>8}")
        del kc, vc
print("SPEC: decode >= 70% of HBM bandwidth; prefill >= SDPA's flash backend")

# CCA prep forward at ZAYA1-8B-like shapes (Hq=8, Hk=2, d=128, k0=k1=2): GB/s of its inputs + outputs.
print(f"{'cca_prep fwd T':>15} {'us':>9} {'GB/s':>8}")
Hq_c, Hk_c = 8, 2
C, V = (Hq_c + Hk_c) * d, Hk_c * d // 2
for T in (16, 4096, 16384):
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dt, generator=gen)  # noqa: E731
    args = (r(T, Hq_c * d), r(T, Hk_c * d), r(T, V), r(T, V), r(C, 1, 2), r(C), r(C, d, 2) / d, r(C), r(Hk_c),
            torch.arange(T, device="cuda"), torch.tensor([0, T], device="cuda", dtype=torch.int32), None, None)
    us = try_time(lambda: ops.cca_prep(*args, Hq_c, Hk_c, d // 2, 1e4))
    nbytes = T * (2 * (Hq_c + Hk_c) * d + 2 * V + (Hq_c + 2 * Hk_c) * d) * 2
    if us is not None:
        print(f"{T:>15} {us:>9.1f} {nbytes / us / 1e3:>8.0f}")
PY

workloads

step "zaya-rt bench --device cuda (ours vs PyTorch eager)"
if command -v zaya-rt >/dev/null 2>&1; then
  capped 90 zaya-rt bench --device cuda --ops norms,moe,router,sampling,pages --min-time 0.1 || bench_rc=$?
elif python -c "import zaya_rt.cli" 2>/dev/null; then
  capped 90 python -m zaya_rt.cli bench --device cuda --ops norms,moe,router,sampling,pages --min-time 0.1 || bench_rc=$?
else
  echo "(no zaya-rt bench command in this checkout: skipped)"
fi

step "zaya-rt bench e2e --device cuda (ZAYA1-8B-shaped random weights, 4 of 40 layers; Engine vs transformers generate)"
if python -c "import zaya_rt.benchmarks.e2e" 2>/dev/null; then
  capped 240 python -m zaya_rt.cli bench e2e --device cuda --layers 4 --batches 1,16 --new-tokens 64 --repeats 3 \
    || bench_rc=$?
else
  echo "(no e2e benchmark in this checkout: skipped)"
fi

step "done: tests $([[ $tests_rc == 0 ]] && echo passed || echo "FAILED (rc $tests_rc)"), NCCL trainer $([[ $train_rc == 0 ]] && echo passed || echo "FAILED (rc $train_rc)"), benchmarks $([[ $bench_rc == 0 ]] && echo ran || echo "FAILED (rc $bench_rc)")"
exit $(( tests_rc != 0 || train_rc != 0 || bench_rc != 0 ))

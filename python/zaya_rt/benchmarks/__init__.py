"""Benchmark cases shared by `zaya-rt bench` and bench/ (pytest-benchmark): ours against a peer measured in
the same run, reported as time, bandwidth and the ratio peer/ours (> 1 means zaya_rt is faster)."""

from zaya_rt.benchmarks.attention import attention_cases, decode_cases, prefill_cases
from zaya_rt.benchmarks.cca import cca_cases, cca_fwd_bwd_cases
from zaya_rt.benchmarks.harness import Case, Result, format_table, run_cases
from zaya_rt.benchmarks.moe import dispatch_cases, grouped_gemm_cases, moe_cases
from zaya_rt.benchmarks.newton_schulz import newton_schulz_cases
from zaya_rt.benchmarks.norms import norm_cases
from zaya_rt.benchmarks.router import router_cases

__all__ = ["Case", "Result", "attention_cases", "cca_cases", "cca_fwd_bwd_cases", "decode_cases", "dispatch_cases", "format_table", "grouped_gemm_cases", "moe_cases", "newton_schulz_cases", "norm_cases", "prefill_cases", "router_cases", "run_cases"]

"""Timing harness: median of repeated calls (CUDA events on GPU), a peer timed in the same run."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Case:
    """One benchmark: `ours` and `peer` are zero-argument callables doing the same work on prepared inputs."""

    op: str
    shape: str
    dtype: str
    ours: Callable[[], object]
    peer: Callable[[], object]
    peer_name: str
    bytes_moved: int = 0
    flops: int = 0


@dataclass
class Result:
    case: Case
    ours_us: float
    peer_us: float

    @property
    def ratio(self) -> float:
        """Peer time over ours: above 1 means zaya_rt is faster."""
        return self.peer_us / self.ours_us

    @property
    def tflops(self) -> float:
        return self.case.flops / (self.ours_us * 1e-6) / 1e12 if self.case.flops else 0.0

    @property
    def gbps(self) -> float:
        return self.case.bytes_moved / (self.ours_us * 1e-6) / 1e9 if self.case.bytes_moved else 0.0


def _sampler(fn: Callable[[], object], device: str, max_iters: int) -> Callable[[], float]:
    """Warms fn up and returns a function that times one batch of calls (microseconds per call)."""
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - start, 1e-7)
    per_batch = max(1, min(max_iters, int(0.02 / once)))

    def sample() -> float:
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(per_batch):
                fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) * 1e3 / per_batch
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        return (time.perf_counter() - t0) * 1e6 / per_batch

    return sample


def time_us(fn: Callable[[], object], device: str, *, min_time_s: float = 0.2, max_iters: int = 2000) -> float:
    """Median microseconds per call of fn after a warm-up, over batches of calls."""
    sample = _sampler(fn, device, max_iters)
    samples = []
    deadline = time.perf_counter() + min_time_s
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 50):
        samples.append(sample())
    return statistics.median(samples)


def time_pair_us(ours: Callable[[], object], peer: Callable[[], object], device: str, *, min_time_s: float = 0.2,
                 max_iters: int = 2000) -> tuple[float, float]:
    """Median microseconds per call of ours and of peer, their batches of calls interleaved so that both see
    the same machine (a shared, noisy CPU drifts within a second)."""
    sample_ours, sample_peer = _sampler(ours, device, max_iters), _sampler(peer, device, max_iters)
    a, b = [], []
    deadline = time.perf_counter() + 2 * min_time_s
    while len(a) < 5 or (time.perf_counter() < deadline and len(a) < 50):
        a.append(sample_ours())
        b.append(sample_peer())
    return statistics.median(a), statistics.median(b)


def capture_cuda_graph(fn: Callable[[], object], iters: int = 1) -> tuple[torch.cuda.CUDAGraph, object]:
    """Runs fn once on a side stream (the warm-up torch.cuda.graphs recommends), then captures `iters` calls of
    it into one CUDA graph. Returns the graph and what the last captured call returned (its tensors are the
    graph's outputs, rewritten by each replay). fn must be capturable (no host syncs, no allocation it cannot
    replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    out = None
    with torch.cuda.graph(graph):
        for _ in range(iters):
            out = fn()
    return graph, out


def cuda_graph_time_us(fn: Callable[[], object], iters: int = 10, reps: int = 5) -> float:
    """Best of `reps` replays of one CUDA graph holding `iters` calls of fn, in microseconds per call: kernel
    time without launch overhead. fn must be capturable (no host syncs, no allocation it cannot replay)."""
    graph, _ = capture_cuda_graph(fn, iters)
    best = float("inf")
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, begin.elapsed_time(end) * 1e3 / iters)
    return best


def run_cases(cases: list[Case], device: str, *, min_time_s: float = 0.2, grad: bool = False) -> list[Result]:
    """Times ours and the peer of each case, their batches of calls interleaved; in inference mode, or with
    autograd on when grad is True (forward + backward cases)."""
    results = []
    with torch.enable_grad() if grad else torch.inference_mode():
        for case in cases:
            ours, peer = time_pair_us(case.ours, case.peer, device, min_time_s=min_time_s)
            results.append(Result(case, ours, peer))
    return results


# HBM bandwidth (GB/s) of GPUs we report against, matched on the device name.
PEAK_GBPS = {"H200": 4800.0, "H100": 3350.0, "MI300X": 5300.0}


def peak_gbps_for(device: str) -> float | None:
    """The bandwidth roofline of the current GPU when known (None on CPU or an unknown GPU)."""
    if device != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBPS.items() if k in name), None)


def format_table(results: list[Result], peak_gbps: float | None = None) -> str:
    """One row per case; `%peak` is GB/s over the bandwidth roofline when peak_gbps is given (the bytes an op
    must read and write, e.g. the routed experts' weights for MoE decode)."""
    roof = f" {'%peak':>6}" if peak_gbps else ""
    header = (f"{'op':<18} {'shape':<22} {'dtype':<9} {'ours us':>10} {'peer us':>10} {'peer/ours':>9} "
              f"{'GB/s':>8}{roof} {'TFLOP/s':>8}  peer")
    lines = [header, "-" * len(header)]
    for r in results:
        c = r.case
        pct = f" {100 * r.gbps / peak_gbps:>6.1f}" if peak_gbps else ""
        lines.append(
            f"{c.op:<18} {c.shape:<22} {c.dtype:<9} {r.ours_us:>10.1f} {r.peer_us:>10.1f} {r.ratio:>9.2f} "
            f"{r.gbps:>8.1f}{pct} {r.tflops:>8.3f}  {c.peer_name}"
        )
    return "\n".join(lines)

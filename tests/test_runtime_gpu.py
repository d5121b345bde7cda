"""GPU page operations and fused sampler (CUDA or HIP build of zaya_rt._C, cuda/runtime_kernels.cuh): results
against the CPU kernels on the same inputs (page operations bit-identical; sampled tokens equal: random inputs
put no cumulative mass ratio within float64 rounding of top_p or u), plus what the GPU path promises beyond the
math: no host sync (CUDA-graph capture and replay), the current stream, slot -1 skipped, vocabulary 262144.

Runs only where torch sees a GPU and _C carries a GPU backend (`pytest -m cuda`).
"""

import pytest
import torch

from conftest import NEEDS_GPU
from zaya_rt.ops import copy_pages, gather_tail, kv_write, sample_tokens
from zaya_rt.ops.sampling import sampling_uniform
from zaya_rt.ref.sampling import sample_token

pytestmark = NEEDS_GPU

CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.cpu().contiguous().view(torch.uint8), b.cpu().contiguous().view(torch.uint8))


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("P,S,H,d,N", [(64, 16, 8, 128, 300), (5, 4, 1, 3, 7), (9, 8, 2, 64, 1), (4, 4, 2, 8, 0)])
def test_kv_write_matches_cpu(dtype, P, S, H, d, N):
    gen = torch.Generator().manual_seed(N + d)
    k_cache, v_cache = torch.randn(P, S, H, d, generator=gen).to(dtype), torch.randn(P, S, H, d, generator=gen).to(dtype)
    k_new, v_new = torch.randn(N, H, d, generator=gen).to(dtype), torch.randn(N, H, d, generator=gen).to(dtype)
    slots = torch.randperm(P * S, generator=gen)[:N].int()
    slots[::3] = -1  # padding rows are skipped
    kc, vc = k_cache.cuda(), v_cache.cuda()
    kv_write(k_new.cuda(), v_new.cuda(), kc, vc, slots.cuda())
    kv_write(k_new, v_new, k_cache, v_cache, slots)
    assert _bits_equal(kc, k_cache) and _bits_equal(vc, v_cache)


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("L,P,page,n", [(4, 64, (16, 8, 128), 20), (2, 5, (3, 1, 3), 2), (3, 4, (2, 2, 4), 0)])
def test_copy_pages_matches_cpu(dtype, L, P, page, n):
    gen = torch.Generator().manual_seed(L * P + n)
    cache = torch.randn(L, P, *page, generator=gen).to(dtype)
    perm = torch.randperm(P, generator=gen)
    dst, src = perm[:n].int(), perm[n:2 * n].int()
    gpu = cache.cuda()
    copy_pages(gpu, src.cuda(), dst.cuda())
    copy_pages(cache, src, dst)
    assert _bits_equal(gpu, cache)


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("lens,S,tau", [([37, 1, 200, 0], 16, 24), ([5], 4, 9), ([3, 4], 2, 0)])
def test_gather_tail_matches_cpu(dtype, lens, S, tau):
    gen = torch.Generator().manual_seed(S + tau)
    B, H, d = len(lens), 4, 64
    M = max((x + S - 1) // S for x in lens) or 1
    P = B * M + 3
    cache = torch.randn(P, S, H, d, generator=gen).to(dtype)
    table = torch.randperm(P, generator=gen)[: B * M].reshape(B, M).int()
    seq = torch.tensor(lens, dtype=torch.int32)
    got = gather_tail(cache.cuda(), table.cuda(), seq.cuda(), tau)
    assert _bits_equal(got, gather_tail(cache, table, seq, tau))


def _sampling_inputs(B, V, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(B, V, generator=gen)).to(dtype)
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.3, 0.9, 2.0, 1.0, 0.5] * (B // 8 + 1))[:B]
    top_k = torch.tensor([0, 0, 50, 0, 20, V + 5, 0, 1] * (B // 8 + 1), dtype=torch.int32)[:B]
    top_p = torch.tensor([1.0, 1.0, 1.0, 0.8, 0.9, 1.0, 1.0, 0.3] * (B // 8 + 1))[:B]
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 1.0, 0.0] * (B // 8 + 1))[:B]
    seeds = torch.randint(-2**40, 2**40, (B,), generator=gen)
    steps = torch.randint(0, 10**6, (B,), generator=gen)
    return logits, temperature, top_k, top_p, min_p, seeds, steps


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("B,V", [(16, 1000), (8, 262144), (3, 1), (9, 300)])
def test_sample_tokens_matches_cpu_and_reference(dtype, B, V):
    args = _sampling_inputs(B, V, dtype, B * V)
    got = sample_tokens(*(a.cuda() for a in args))
    assert got.device.type == "cuda" and got.dtype == torch.int64
    cpu = sample_tokens(*args)
    assert got.tolist() == cpu.tolist()
    logits, t, k, p, m, s, st = args
    for b in range(min(B, 8)):
        u = sampling_uniform(int(s[b]), int(st[b]))
        assert got[b].item() == sample_token(logits[b], float(t[b]), int(k[b]), float(p[b]), float(m[b]), u)


def test_sample_tokens_ties_and_nan_rows():
    logits = torch.randint(0, 3, (6, 5000)).float()
    logits[4, 7] = float("nan")
    logits[5] = float("-inf")
    t = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    k = torch.tensor([3, 2000, 0, 0, 0, 0], dtype=torch.int32)
    p = torch.tensor([1.0, 0.4, 0.2, 1.0, 1.0, 1.0])
    m = torch.zeros(6)
    seeds, steps = torch.arange(6), torch.arange(6) * 7
    got = sample_tokens(logits.cuda(), t.cuda(), k.cuda(), p.cuda(), m.cuda(), seeds.cuda(), steps.cuda()).tolist()
    cpu = sample_tokens(logits[:4], t[:4], k[:4], p[:4], m[:4], seeds[:4], steps[:4]).tolist()
    assert got[:4] == cpu and got[4:] == [-1, -1]  # the GPU cannot raise per row: NaN / no finite max -> -1


def test_graph_capture_and_current_stream():
    """Everything is stream-ordered without a host sync: capturable in a CUDA graph, replays match eager."""
    args = [a.cuda() for a in _sampling_inputs(32, 4096, torch.bfloat16, 1)]
    P, S, H, d, N = 32, 16, 4, 64, 40
    k_cache = torch.zeros(P, S, H, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    k_new, v_new = torch.randn(N, H, d, device="cuda", dtype=torch.bfloat16), torch.randn(N, H, d, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(P * S, device="cuda")[:N].int()
    table = torch.arange(P, device="cuda", dtype=torch.int32).reshape(4, 8)
    lens = torch.tensor([5, 100, 0, 128], device="cuda", dtype=torch.int32)
    pages = torch.randn(2, P, S, H, d, device="cuda").to(torch.bfloat16)
    src, dst = torch.tensor([1], device="cuda", dtype=torch.int32), torch.tensor([2], device="cuda", dtype=torch.int32)

    def step():
        kv_write(k_new, v_new, k_cache, v_cache, slots)
        copy_pages(pages, src, dst)
        return sample_tokens(*args), gather_tail(k_cache, table, lens, 16), pages[:, 2].clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)

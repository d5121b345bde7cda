"""The GPU page operations and fused sampler (cuda/runtime_kernels.cuh) without a GPU: tools/gpu_emu compiles the
kernel header for the host (every GPU thread a std::thread, shared-memory atomics as std::atomic_ref) at 32 and
64 lanes per warp, and this file runs the kernels against plain index ops, the CPU `_C` kernels and the float64
reference sampler (zaya_rt.ref.sampling, u = sampling_uniform(seed, step)).

Page operations are byte copies: results must be bit-identical. Sampled tokens must equal the CPU kernel's and
the reference's: the emulated device exp is the host's, and random inputs do not put a cumulative mass ratio
within float64 rounding of top_p or u (the one place the summation order could show). This checks index math,
radix selection and tie handling, not memory ordering or timing."""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zaya_rt import _C
from zaya_rt.ops import runtime as rt
from zaya_rt.ops.sampling import sample_tokens, sampling_uniform
from zaya_rt.ref.sampling import sample_token

ROOT = Path(__file__).resolve().parents[1]
CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 5}
CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
POISON_TOKEN = -12345


@pytest.fixture(scope="module", params=(32, 64), ids=("warp32", "warp64"))
def emu(request, tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the GPU kernel emulator")
    spec = importlib.util.spec_from_file_location("zaya_gpu_emu_check", ROOT / "tools/gpu_emu/check_attention_cca.py")
    mod = sys.modules.get("zaya_gpu_emu_check")
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules["zaya_gpu_emu_check"] = mod
        spec.loader.exec_module(mod)
    lib = mod.load(request.param, tmp_path_factory.mktemp(f"gpu_emu_rt_w{request.param}"))
    for name in ("emu_kv_write", "emu_copy_pages", "emu_gather_tail", "emu_sample_tokens"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.emu_sampling_uniform.restype = ctypes.c_double
    lib.emu_sampling_uniform.argtypes = (ctypes.c_int64, ctypes.c_int64)
    return lib


def P(t: torch.Tensor | None) -> ctypes.c_void_p:  # noqa: N802
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def I(x) -> ctypes.c_int64:  # noqa: N802, E743
    return ctypes.c_int64(int(x))


def _ok(err) -> None:
    assert err is None, err.decode()


def _random(shape, dtype, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


# ---- page operations ------------------------------------------------------------------------------------

def _emu_kv_write(lib, k_new, v_new, k_cache, v_cache, slots) -> None:
    P_, S, H, d = k_cache.shape
    W = H * d
    k2, v2 = k_new.reshape(k_new.shape[0], W), v_new.reshape(v_new.shape[0], W)
    _ok(lib.emu_kv_write(P(k2), I(k2.stride(0)), P(v2), I(v2.stride(0)), P(k_cache), P(v_cache), I(S * W), I(W),
                         P(slots), CODES[k_cache.dtype], I(k_new.shape[0]), I(W), I(P_), I(S)))


def _kv_write_expected(k_new, v_new, k_cache, v_cache, slots):
    k, v = k_cache.clone(), v_cache.clone()
    P_, S = k.shape[:2]
    for n, s in enumerate(slots.tolist()):
        if 0 <= s < P_ * S:
            k.view(P_ * S, -1)[s] = k_new[n].reshape(-1)
            v.view(P_ * S, -1)[s] = v_new[n].reshape(-1)
    return k, v


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("P_,S,H,d,N", [(3, 4, 2, 8, 5), (2, 16, 1, 3, 9), (5, 2, 4, 32, 1), (4, 8, 2, 64, 0)])
def test_kv_write_matches_index_ops_and_cpu(emu, dtype, P_, S, H, d, N):
    gen = torch.Generator().manual_seed(P_ * 100 + S * 10 + H + d + N)
    k_cache, v_cache = _random((P_, S, H, d), dtype, gen), _random((P_, S, H, d), dtype, gen)
    k_new, v_new = _random((N, H, d), dtype, gen), _random((N, H, d), dtype, gen)
    slots = torch.randperm(P_ * S, generator=gen)[:N].int()
    if N > 1:
        slots[1] = -1  # padding row
    want_k, want_v = _kv_write_expected(k_new, v_new, k_cache, v_cache, slots)
    got_k, got_v = k_cache.clone(), v_cache.clone()
    _emu_kv_write(emu, k_new, v_new, got_k, got_v, slots)
    assert _same_bits(got_k, want_k) and _same_bits(got_v, want_v)
    cpu_k, cpu_v = k_cache.clone(), v_cache.clone()
    rt.kv_write(k_new, v_new, cpu_k, cpu_v, slots)
    assert _same_bits(got_k, cpu_k) and _same_bits(got_v, cpu_v)


def test_kv_write_strided_rows_and_out_of_range_slots(emu):
    gen = torch.Generator().manual_seed(7)
    P_, S, H, d, N = 3, 4, 2, 8, 6
    k_cache, v_cache = _random((P_, S, H, d), torch.bfloat16, gen), _random((P_, S, H, d), torch.bfloat16, gen)
    k_wide = _random((N, H * d + 5), torch.bfloat16, gen)  # row stride W + 5: 2-byte copies
    v_new = _random((N, H, d), torch.bfloat16, gen)
    k_new = k_wide[:, : H * d]
    slots = torch.tensor([0, -1, 11, P_ * S, 5, -1], dtype=torch.int32)  # P*S: not checked on the GPU, skipped
    got_k, got_v = k_cache.clone(), v_cache.clone()
    _ok(emu.emu_kv_write(P(k_new), I(k_new.stride(0)), P(v_new), I(H * d), P(got_k), P(got_v), I(S * H * d),
                         I(H * d), P(slots), CODES[torch.bfloat16], I(N), I(H * d), I(P_), I(S)))
    want_k, want_v = _kv_write_expected(k_new.reshape(N, H, d), v_new, k_cache, v_cache, slots)
    assert _same_bits(got_k, want_k) and _same_bits(got_v, want_v)


def _emu_copy_pages(lib, cache, src, dst) -> None:
    L, P_ = cache.shape[:2]
    page = cache[0, 0].numel()
    _ok(lib.emu_copy_pages(P(cache), I(P_ * page), I(page), I(page), P(src), P(dst), CODES[cache.dtype], I(L),
                           I(P_), I(src.shape[0])))


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("L,P_,page_shape,n", [(2, 5, (4, 2, 8), 2), (1, 3, (3, 1, 3), 1), (3, 7, (16, 2, 96), 3),
                                               (2, 3, (2, 2, 4), 0)])
def test_copy_pages_matches_index_ops_and_cpu(emu, dtype, L, P_, page_shape, n):
    gen = torch.Generator().manual_seed(L * 10 + P_ + n)
    cache = _random((L, P_, *page_shape), dtype, gen)  # (16, 2, 96) fp32/fp64: pages over several 8 KiB chunks
    perm = torch.randperm(P_, generator=gen)
    dst, src = perm[:n].int(), perm[n:2 * n].int()  # disjoint: no chained copies (order-dependent anywhere)
    want = cache.clone()
    want[:, dst.long()] = cache[:, src.long()]
    got = cache.clone()
    _emu_copy_pages(emu, got, src, dst)
    assert _same_bits(got, want)
    cpu = cache.clone()
    rt.copy_pages(cpu, src, dst)
    assert _same_bits(got, cpu)


def test_copy_pages_skips_out_of_range_pairs(emu):
    cache = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    got = cache.clone()
    _emu_copy_pages(emu, got, torch.tensor([0, 9, 1], dtype=torch.int32), torch.tensor([2, 3, -1], dtype=torch.int32))
    want = cache.clone()
    want[:, 2] = cache[:, 0]
    assert _same_bits(got, want)


def test_copy_pages_skips_pairs_on_a_page_both_read_and_written(emu):
    """The CPU rejects [0, 1] -> [1, 2] (order-dependent); the GPU kernel, which reads no ids on the host, skips
    every pair that touches such a page (no race) and still copies the others."""
    cache = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)
    got = cache.clone()
    _emu_copy_pages(emu, got, torch.tensor([0, 1, 4], dtype=torch.int32), torch.tensor([1, 2, 5], dtype=torch.int32))
    want = cache.clone()
    want[:, 5] = cache[:, 4]
    assert _same_bits(got, want)


def _gather_expected(cache, table, lens, tau):
    B = table.shape[0]
    P_, S = cache.shape[:2]
    out = torch.zeros((B, tau, *cache.shape[2:]), dtype=cache.dtype)
    for b in range(B):
        for j in range(tau):
            pos = int(lens[b]) - tau + j
            if pos >= 0:
                out[b, j] = cache[int(table[b, pos // S]), pos % S]
    return out


def _emu_gather(lib, cache, table, lens, tau, table_stride=None):
    B, M = table.shape
    P_, S = cache.shape[:2]
    W = cache[0, 0].numel()
    out = torch.full((B, tau, *cache.shape[2:]), float("nan"), dtype=cache.dtype)  # poisoned
    _ok(lib.emu_gather_tail(P(cache), I(S * W), I(W), P(table), I(table_stride or (table.stride(0) if M else 0)),
                            P(lens), P(out), CODES[cache.dtype], I(B), I(M), I(P_), I(S), I(W), I(tau)))
    return out


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("lens,S,tau", [([5, 1, 9], 4, 3), ([0, 2], 2, 4), ([7], 8, 7), ([3, 16], 4, 1),
                                        ([4, 6], 2, 0), ([], 4, 2)])
def test_gather_tail_matches_index_ops_and_cpu(emu, dtype, lens, S, tau):
    gen = torch.Generator().manual_seed(S * 10 + tau + len(lens))
    B, H, d = len(lens), 2, 5
    M = max([(x + S - 1) // S for x in lens] + [1])
    P_ = B * M + 2
    cache = _random((P_, S, H, d), dtype, gen)
    table = torch.randperm(P_, generator=gen)[: B * M].reshape(B, M).int()
    seq = torch.tensor(lens, dtype=torch.int32)
    got = _emu_gather(emu, cache, table, seq, tau)
    want = _gather_expected(cache, table, seq, tau)
    assert _same_bits(got, want)  # zeros before position 0 included: no NaN left
    assert _same_bits(got, rt.gather_tail(cache, table, seq, tau))


def test_gather_tail_zero_rows_for_page_ids_outside_the_cache(emu):
    cache = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 1, 4) + 1
    table = torch.tensor([[0, 7], [-1, 1]], dtype=torch.int32)
    got = _emu_gather(emu, cache, table, torch.tensor([4, 4], dtype=torch.int32), 3)
    assert _same_bits(got[0, 0], cache[0, 1]) and not got[0, 1:].any() and not got[1, 0].any()
    assert _same_bits(got[1, 1:], cache[1])


# ---- sampler --------------------------------------------------------------------------------------------

def test_uniform_is_bit_identical_to_the_host(emu):
    gen = torch.Generator().manual_seed(3)
    seeds = torch.randint(-2**62, 2**62, (200,), generator=gen).tolist() + [0, -1, 2**63 - 1, -2**63]
    steps = torch.randint(-2**40, 2**40, (204,), generator=gen).tolist()
    for s, k in zip(seeds, steps):
        assert emu.emu_sampling_uniform(s, k) == _C.sampling_uniform(s, k)


def _emu_sample(lib, logits, temperature, top_k, top_p, min_p, seed, step):
    B, V = logits.shape
    out = torch.full((B,), POISON_TOKEN, dtype=torch.int64)
    _ok(lib.emu_sample_tokens(P(logits), I(logits.stride(0) if B > 1 else V), CODES[logits.dtype], P(temperature),
                              P(top_k), P(top_p), P(min_p), P(seed), P(step), P(out), I(B), I(V)))
    return out


def _params(rows):
    """rows: [(temperature, top_k, top_p, min_p, seed, step)]."""
    cols = list(zip(*rows)) if rows else [()] * 6
    return (torch.tensor(cols[0], dtype=torch.float32), torch.tensor(cols[1], dtype=torch.int32),
            torch.tensor(cols[2], dtype=torch.float32), torch.tensor(cols[3], dtype=torch.float32),
            torch.tensor(cols[4], dtype=torch.int64), torch.tensor(cols[5], dtype=torch.int64))


def _reference(logits, args):
    """The float64 reference per row, with the parameters as the kernels see them (float32 top_p, min_p)."""
    t, k, p, m, s, st_ = (a.tolist() for a in args)
    return [sample_token(logits[b], t[b], k[b], p[b], m[b], sampling_uniform(s[b], st_[b]))
            for b in range(logits.shape[0])]


def _check_sampler(lib, logits, rows):
    args = _params(rows)
    got = _emu_sample(lib, logits, *args)
    cpu = sample_tokens(logits, *args)
    want = _reference(logits, args)
    assert got.tolist() == want, (got.tolist(), want)
    assert got.tolist() == cpu.tolist()
    return got


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("V", (1, 7, 300, 1000))
def test_sampler_mixed_rows(emu, dtype, V):
    gen = torch.Generator().manual_seed(V)
    rows = [(0.0, 0, 1.0, 0.0, 1, 2),            # greedy
            (1.0, 0, 1.0, 0.0, 5, 0),            # plain sampling
            (0.7, 5, 1.0, 0.0, 6, 1),            # top-k
            (1.3, 0, 0.8, 0.0, 7, 2),            # top-p
            (0.9, 20, 0.9, 0.05, 8, 3),          # all filters
            (2.0, V + 5, 1.0, 0.0, 9, 4),        # top_k > V
            (1.0, 0, 1.0, 1.0, 10, 5),           # min_p 1: the maximum only
            (0.5, 1, 0.3, 0.0, 11, 6)]           # top-k 1
    logits = (3 * torch.randn(len(rows), V, generator=gen)).to(dtype)
    _check_sampler(emu, logits, rows)


def test_sampler_ties(emu):
    """Quantised logits: many equal p. Top-k and top-p cuts through a run of ties keep the lowest token ids."""
    gen = torch.Generator().manual_seed(11)
    V = 517
    logits = torch.randint(0, 4, (6, V), generator=gen).float()
    rows = [(1.0, 3, 1.0, 0.0, 1, 1), (1.0, 200, 1.0, 0.0, 2, 1), (1.0, 0, 0.3, 0.0, 3, 1),
            (1.0, 150, 0.5, 0.0, 4, 1), (0.0, 0, 1.0, 0.0, 5, 1), (1.0, 0, 1.0, 1.0, 6, 1)]
    _check_sampler(emu, logits, rows)
    flat = torch.zeros(3, 300)  # every p = 1: the tie order alone decides
    _check_sampler(emu, flat, [(1.0, 7, 1.0, 0.0, 9, 9), (1.0, 0, 0.5, 0.0, 9, 9), (1.0, 10, 0.35, 0.0, 4, 2)])


def test_sampler_single_row_and_empty_batch(emu):
    logits = torch.tensor([[0.5, 2.0, -1.0, 2.0]])
    _check_sampler(emu, logits, [(1.0, 2, 0.9, 0.1, 123, 456)])
    out = _emu_sample(emu, torch.zeros(0, 5), *_params([]))
    assert out.shape == (0,)


def test_sampler_bad_rows_give_minus_one(emu):
    """Where the CPU raises (NaN, no finite maximum), the GPU kernel, which cannot report per row without a host
    sync, writes -1; the other rows are unaffected."""
    logits = torch.tensor([[0.0, float("nan"), 1.0], [float("-inf")] * 3, [0.0, 3.0, 1.0], [1.0, float("nan"), 9.0]])
    rows = [(1.0, 0, 1.0, 0.0, 1, 1), (1.0, 0, 1.0, 0.0, 1, 1), (1.0, 0, 1.0, 0.0, 1, 1), (0.0, 0, 1.0, 0.0, 1, 1)]
    got = _emu_sample(emu, logits, *_params(rows))
    assert got.tolist() == [-1, -1, _reference(logits[2:3], _params(rows[2:3]))[0], -1]


def test_sampler_top_p_zero_on_the_device_keeps_the_top_group(emu):
    """A top_p that is 0 on the device (1e-46 passes SamplingParams but rounds to 0 in fp32; the CPU op raises)
    keeps the most probable token(s) instead of reading outside the radix histogram."""
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [1.0, 1.0, 0.0, -3.0]])
    rows = [(1.0, 0, 1e-46, 0.0, 3, 1), (1.0, 0, float("nan"), 0.0, 4, 2)]
    got = _emu_sample(emu, logits, *_params(rows))
    assert got[0].item() == 1
    assert got[1].item() in (0, 1)


def test_sampler_strided_rows(emu):
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(3, 700, generator=gen).to(torch.bfloat16)
    logits = wide[:, :650]
    rows = [(0.8, 40, 0.95, 0.01, b, 3 * b) for b in range(3)]
    args = _params(rows)
    got = _emu_sample(emu, logits, *args)
    assert got.tolist() == _reference(logits, args)


@settings(max_examples=15, deadline=None)
@given(V=st.integers(1, 600), B=st.integers(1, 3), seed=st.integers(0, 2**31), dtype=st.sampled_from(
    (torch.float32, torch.float16, torch.bfloat16)), scale=st.sampled_from((0.1, 1.0, 8.0)), data=st.data())
def test_sampler_hypothesis(emu, V, B, seed, dtype, scale, data):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(B, V, generator=gen)).to(dtype)
    rows = []
    for _ in range(B):
        rows.append((data.draw(st.sampled_from((0.0, 0.3, 1.0, 1.7))), data.draw(st.integers(0, V + 2)),
                     data.draw(st.sampled_from((0.1, 0.5, 0.9, 0.99, 1.0))), data.draw(st.sampled_from((0.0, 0.02, 0.3))),
                     data.draw(st.integers(-2**40, 2**40)), data.draw(st.integers(0, 10**6))))
    _check_sampler(emu, logits, rows)


@pytest.mark.skipif(_C.gpu_backend != "none", reason="this _C has a GPU backend")
def test_gpu_device_without_gpu_backend_raises():
    """A GPU device code reaching a CPU-only _C is a ValueError before any pointer is read."""
    from zaya_rt.ops import runtime as rt
    from zaya_rt.ops import sampling

    cache = torch.zeros(2, 4, 2, 4)
    rows, slots, ids = torch.zeros(1, 8), torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    table, lens = torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    logits, f, i = torch.zeros(1, 5), torch.zeros(1), torch.zeros(1, dtype=torch.int64)
    calls = (
        lambda: _C.kv_write(rt.kv_write_params(rows, rows, cache, cache, slots), 1, 0, 0),
        lambda: _C.copy_pages(rt.copy_pages_params(cache[None], ids, ids + 1), 1, 0, 0),
        lambda: _C.gather_tail(rt.gather_tail_params(cache, table, lens, torch.zeros(1, 1, 2, 4)), 1, 0, 0),
        lambda: _C.sample_tokens(sampling.sample_tokens_params(logits, (f, slots, f + 1, f, i, i), i), 1, 0, 0),
    )
    for call in calls:
        with pytest.raises(ValueError, match="no GPU backend"):
            call()

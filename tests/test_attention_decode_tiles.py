"""CPU attention_decode's register-tile path (AVX-512, head dims 32/64/128/256: K/V rows widened in registers,
bf16 scores through vdpbf16ps, one split writing its rows directly, several merged) and the fp32-widening path
it falls back to (other head dims, other ISAs), against the float64 reference, on the engine's decode shapes
and edge shapes: one key, windows, ragged and inactive rows, GQA groups 1 and 4, forced splits, a NaN-poisoned
output and workspace."""
import pytest
import torch

from conftest import assert_close_to_peer
from test_attention import _paged_cache
from zaya_rt import _C, ref
from zaya_rt.ops import attention as attention_ops
from zaya_rt.ops._lib import set_workspace

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _run_decode(q, kc, vc, table, lens, window, splits):
    """The `_C` kernel with forced splits, into a NaN-filled output and a 0xFF-filled workspace."""
    out = torch.full_like(q, float("nan"))
    p = attention_ops.attention_decode_params(q, kc, vc, table, lens, out, window or 0, q.shape[-1] ** -0.5, splits)
    ws = torch.full((max(_C.attention_decode_workspace(p, 0), 64),), 255, dtype=torch.uint8)
    _C.attention_decode(set_workspace(p, ws), 0, 0, 0)
    return out


def _check(lengths, n, hq, hk, d, dtype, window, splits, seed, page=16):
    gen = torch.Generator().manual_seed(seed)
    kc, vc, table, lens = _paged_cache(lengths, page, hk, d, dtype, gen)
    q = torch.randn(len(lengths), n, hq, d, generator=gen).to(dtype)
    out = _run_decode(q, kc, vc, table, lens, window, splits)
    want = ref.attention_decode_ref(q.double(), kc.double(), vc.double(), table, lens, window=window)
    peer = ref.attention_decode_ref(q, kc, vc, table, lens, window=window)
    assert_close_to_peer(out, want, peer, f"decode d={d} n={n} hq={hq} hk={hk} splits={splits} window={window}")
    for b, L in enumerate(lengths):
        if L == 0:
            assert torch.all(out[b] == 0), "an inactive row is zero"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128, 256, 40])  # 40: the fp32-widening path
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_tiles_match_reference(dtype, d, group, splits):
    # one key, a window's worth, the engine's ~145, a context past a few chunks, an inactive row
    lengths = [1, 9, 145, 300, 0]
    _check(lengths, 1, 2 * group, 2, d, dtype, None, splits, seed=d + group + splits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [32, 128])
def test_decode_tiles_with_several_queries_and_a_window(dtype, d):
    # n = 3 queries x a group of 4 = 12 rows: several register tiles and a partial one (d = 128 takes 2 rows),
    # rows whose windows end inside a chunk, and rows that see no key of a chunk
    for window, splits in [(5, 1), (40, 2), (None, 4)]:
        _check([3, 37, 150], 3, 8, 2, d, dtype, window, splits, seed=d + splits, page=4)


def test_decode_engine_shape():
    """The 124M config's batch-16 step: 8 q heads, 2 kv heads, head dim 64, bf16, ragged ~145-token contexts."""
    _check([145 - b % 7 for b in range(16)], 1, 8, 2, 64, torch.bfloat16, None, 0, seed=16)

"""Page operations (kv_write, copy_pages, gather_tail) against plain indexing, the PyTorch path they use off
the CPU, opcheck/compile, bad input; and the cache's reference counts, copy-on-write and prefix table."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zaya_rt
from zaya_rt import ops
from zaya_rt.ops import runtime as rt
from zaya_rt.runtime import PagedKVCache, tiny_config

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@settings(max_examples=30, deadline=None)
@given(P=st.integers(1, 6), S=st.integers(1, 5), H=st.integers(1, 3), d=st.integers(1, 8),
       dtype=st.sampled_from(DTYPES), data=st.data())
def test_kv_write_and_gather_tail(P, S, H, d, dtype, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    N = data.draw(st.integers(0, P * S))
    slots = torch.randperm(P * S, generator=g)[:N]
    slots = torch.where(torch.rand(N, generator=g) < 0.2, -1, slots).int()
    k_cache = torch.full((P, S, H, d), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    k_new = torch.randn(N, H, 2 * d, generator=g).to(dtype)[..., ::2]  # non-contiguous rows
    v_new = torch.randn(N, H, d, generator=g).to(dtype)
    ops.kv_write(k_new, v_new, k_cache, v_cache, slots)
    want_k = torch.full((P * S, H, d), float("nan"), dtype=dtype)
    want_v = want_k.clone()
    keep = slots >= 0
    want_k[slots[keep].long()] = k_new[keep]
    want_v[slots[keep].long()] = v_new[keep]
    assert torch.equal(k_cache.view(-1, H, d).nan_to_num(7), want_k.nan_to_num(7))
    assert torch.equal(v_cache.view(-1, H, d).nan_to_num(7), want_v.nan_to_num(7))

    B = data.draw(st.integers(0, 3))
    M = data.draw(st.integers(1, P))
    table = torch.stack([torch.randperm(P, generator=g)[:M] for _ in range(B)]).int() if B else torch.zeros(0, M, dtype=torch.int32)
    lens = torch.randint(0, M * S + 1, (B,), generator=g).int()
    tau = data.draw(st.integers(0, M * S + 2))
    cache = torch.randn(P, S, H, d, generator=g).to(dtype)
    got = ops.gather_tail(cache, table, lens, tau)
    assert got.shape == (B, tau, H, d)
    flat = cache.view(P * S, H, d)
    for b in range(B):
        for j in range(tau):
            pos = int(lens[b]) - tau + j
            want = torch.zeros(H, d, dtype=dtype) if pos < 0 else flat[int(table[b, pos // S]) * S + pos % S]
            assert torch.equal(got[b, j], want)
    assert torch.equal(rt.gather_tail_torch(cache, table, lens, tau), got)


def test_copy_pages_every_layer():
    cache = torch.randn(3, 5, 2, 2, 4)
    before = cache.clone()
    ops.copy_pages(cache, torch.tensor([0, 4], dtype=torch.int32), torch.tensor([2, 1], dtype=torch.int32))
    want = before.clone()
    want[:, 2], want[:, 1] = before[:, 0], before[:, 4]
    assert torch.equal(cache, want)


@pytest.mark.parametrize("src,dst", [([0, 1], [1, 2]), ([1, 2], [0, 1]), ([3], [3])])
def test_copy_pages_rejects_a_page_both_read_and_written(src, dst, monkeypatch):
    """Chained copies would depend on their order (the CPU copied pair by pair, the PyTorch path all at once):
    the op, the C++ dispatch alone and the PyTorch fallback all reject them and leave the cache untouched."""
    cache = torch.randn(2, 5, 3)
    before = cache.clone()
    s, d = torch.tensor(src, dtype=torch.int32), torch.tensor(dst, dtype=torch.int32)
    with pytest.raises(ValueError, match="both a source and a destination"):
        ops.copy_pages(cache, s, d)
    with pytest.raises(ValueError, match="both a source and a destination"):
        zaya_rt._C.copy_pages(rt.copy_pages_params(cache, s, d), 0, 0, 0)
    monkeypatch.setattr(rt, "_torch_fallback", lambda t: True)
    monkeypatch.setattr(rt, "_check_copy_pages", lambda *a, **k: None)  # as for a GPU tensor: ids not read first
    with pytest.raises(ValueError, match="both a source and a destination"):
        rt._copy_pages(cache, s, d)
    assert torch.equal(cache, before)


def test_opcheck_and_compile():
    k_cache, v_cache = torch.zeros(4, 3, 2, 5), torch.zeros(4, 3, 2, 5)
    k, v = torch.randn(2, 2, 5), torch.randn(2, 2, 5)
    slots = torch.tensor([1, 10], dtype=torch.int32)
    torch.library.opcheck(torch.ops.zaya_rt.kv_write.default, (k, v, k_cache, v_cache, slots))
    cache = torch.randn(2, 4, 3, 2, 5)
    torch.library.opcheck(torch.ops.zaya_rt.copy_pages.default,
                          (cache, torch.tensor([0], dtype=torch.int32), torch.tensor([3], dtype=torch.int32)))
    table, lens = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32), torch.tensor([4, 6], dtype=torch.int32)
    torch.library.opcheck(torch.ops.zaya_rt.gather_tail.default, (k_cache, table, lens, 5))

    def step(k, v, k_cache, v_cache, slots, table, lens):
        ops.kv_write(k, v, k_cache, v_cache, slots)
        return ops.gather_tail(k_cache, table, lens, 4)

    compiled = torch.compile(step, fullgraph=True)
    kc2, vc2 = k_cache.clone(), v_cache.clone()
    assert torch.equal(compiled(k, v, k_cache, v_cache, slots, table, lens), step(k, v, kc2, vc2, slots, table, lens))


def _kv(**over):
    base = dict(k_new=torch.randn(2, 2, 4), v_new=torch.randn(2, 2, 4), k_cache=torch.zeros(3, 4, 2, 4),
                v_cache=torch.zeros(3, 4, 2, 4), slot_mapping=torch.tensor([0, 5], dtype=torch.int32))
    base.update(over)
    return base


KV_BAD = [
    ("k_new list", dict(k_new=[[1.0]]), TypeError),
    ("k_new int", dict(k_new=torch.ones(2, 2, 4, dtype=torch.int64)), TypeError),
    ("k_new 2-D", dict(k_new=torch.randn(2, 8)), ValueError),
    ("row shape", dict(k_new=torch.randn(2, 2, 3)), ValueError),
    ("dtype mismatch", dict(v_new=torch.randn(2, 2, 4, dtype=torch.bfloat16)), TypeError),
    ("row count", dict(v_new=torch.randn(3, 2, 4)), ValueError),
    ("cache 3-D", dict(k_cache=torch.zeros(3, 4, 8), v_cache=torch.zeros(3, 4, 8)), ValueError),
    ("cache shapes differ", dict(v_cache=torch.zeros(4, 4, 2, 4)), ValueError),
    ("cache non-contiguous", dict(k_cache=torch.zeros(3, 4, 4, 2).transpose(2, 3)), ValueError),
    ("cache empty", dict(k_cache=torch.zeros(0, 4, 2, 4), v_cache=torch.zeros(0, 4, 2, 4)), ValueError),
    ("slots int64", dict(slot_mapping=torch.tensor([0, 1])), TypeError),
    ("slots 2-D", dict(slot_mapping=torch.tensor([[0, 1]], dtype=torch.int32)), ValueError),
    ("slots count", dict(slot_mapping=torch.tensor([0], dtype=torch.int32)), ValueError),
    ("slot too large", dict(slot_mapping=torch.tensor([0, 12], dtype=torch.int32)), ValueError),
    ("slot below -1", dict(slot_mapping=torch.tensor([0, -2], dtype=torch.int32)), ValueError),
    ("meta slots", dict(slot_mapping=torch.tensor([0, 1], dtype=torch.int32, device="meta")), ValueError),
]


@pytest.mark.parametrize("name,over,error", KV_BAD, ids=[b[0] for b in KV_BAD])
def test_kv_write_bad_input(name, over, error):
    with pytest.raises(error):
        ops.kv_write(**_kv(**over))


OTHER_BAD = [
    ("copy src out of range", lambda: ops.copy_pages(torch.zeros(2, 3, 4), torch.tensor([3], dtype=torch.int32),
                                                     torch.tensor([0], dtype=torch.int32)), ValueError),
    ("copy dst twice", lambda: ops.copy_pages(torch.zeros(2, 3, 4), torch.tensor([0, 1], dtype=torch.int32),
                                              torch.tensor([2, 2], dtype=torch.int32)), ValueError),
    ("copy lengths", lambda: ops.copy_pages(torch.zeros(2, 3, 4), torch.tensor([0, 1], dtype=torch.int32),
                                            torch.tensor([2], dtype=torch.int32)), ValueError),
    ("copy 2-D cache", lambda: ops.copy_pages(torch.zeros(3, 4), torch.tensor([0], dtype=torch.int32),
                                              torch.tensor([1], dtype=torch.int32)), ValueError),
    ("gather negative tau", lambda: ops.gather_tail(torch.zeros(2, 2, 1, 1), torch.zeros(1, 1, dtype=torch.int32),
                                                    torch.zeros(1, dtype=torch.int32), -1), ValueError),
    ("gather lens count", lambda: ops.gather_tail(torch.zeros(2, 2, 1, 1), torch.zeros(1, 1, dtype=torch.int32),
                                                  torch.zeros(2, dtype=torch.int32), 1), ValueError),
    ("gather len beyond table", lambda: ops.gather_tail(torch.zeros(2, 2, 1, 1), torch.zeros(1, 1, dtype=torch.int32),
                                                        torch.tensor([3], dtype=torch.int32), 1), ValueError),
    ("gather page id out of range", lambda: ops.gather_tail(torch.zeros(2, 2, 1, 1),
                                                            torch.tensor([[5]], dtype=torch.int32),
                                                            torch.tensor([2], dtype=torch.int32), 1), RuntimeError),
]


@pytest.mark.parametrize("name,call,error", OTHER_BAD, ids=[b[0] for b in OTHER_BAD])
def test_page_ops_bad_input(name, call, error):
    with pytest.raises(error):
        call()


def test_refcounts_copy_on_write_and_prefix_table():
    cache = PagedKVCache(tiny_config(), num_pages=4, page_size=2, num_slots=2, dtype=torch.float32)
    a = cache.allocate()
    cache.k_pages[:, a] = 1.0
    entry = cache.register(0, (5, 6), a)
    assert cache.register(0, (5, 6), cache.allocate()) is None  # one page per key
    assert cache.lookup(0, (5, 6)) is entry and not entry.ready
    cache.mark_ready(entry, torch.zeros(1), torch.zeros(1))
    cache.share(a)
    assert cache.refcount[a] == 2
    b = cache.writable(a)  # shared: copied
    assert b != a and cache.refcount[a] == 1 and torch.equal(cache.k_pages[:, b], cache.k_pages[:, a])
    cache.release(a)
    assert cache.lookup(0, (5, 6)) is entry and a in cache._evictable  # cached, evictable
    free_before = cache.num_free_pages
    cache.share(a)
    assert cache.num_free_pages == free_before - 1
    cache.release(a)
    while cache.allocate() is not None:  # eviction drops the key
        pass
    assert cache.lookup(0, (5, 6)) is None
    fresh = PagedKVCache(tiny_config(), num_pages=2, page_size=2, num_slots=1, dtype=torch.float32)
    page = fresh.allocate()
    fresh.release(page)
    with pytest.raises(RuntimeError):
        fresh.release(page)

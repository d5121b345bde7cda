"""Paged KV cache page operations (SPEC sections 4 "kv-tail" and 5).

  kv_write(k_new[N, Hk, d], v_new[N, Hk, d], k_cache![P, S, Hk, d], v_cache![P, S, Hk, d], slot_mapping[N] int32)
      writes row n into slot slot_mapping[n] = page * S + offset (-1 skips the row); mutates the caches.
  copy_pages(cache![L, P, S, Hk, d], src[n] int32, dst[n] int32)
      cache[:, dst[i]] = cache[:, src[i]] (copy-on-write of shared pages); mutates cache. No page may be both
      a source and a destination (ValueError), nor a destination twice.
  gather_tail(cache[P, S, Hk, d], block_table[B, M] int32, seq_lens[B] int32, tau) -> [B, tau, Hk, d]
      the rows of positions seq_lens[b] - tau .. seq_lens[b] - 1 of each sequence (zeros before position 0).

The kernels live in csrc/cpu/runtime.cpp (CPU) and cuda/runtime_kernels.cuh (CUDA and HIP builds of _C). On a
GPU nothing is read back to the host, so slots, page ids and seq_lens are not range-checked there (nor dst pages
for duplicates): kv_write skips slot -1 (as on the CPU) and also any slot beyond the cache, copy_pages skips a
pair naming a page outside the cache (and any pair touching a page that is both a source and a destination,
which the CPU rejects), gather_tail writes zero rows for positions whose page id lies outside the
cache or the block table, all without an error. A GPU tensor with a _C built
without a GPU backend falls back to PyTorch index ops (kv_write then needs every slot >= 0).
"""

from __future__ import annotations

import torch

from zaya_rt import _C
from zaya_rt.ops._lib import DTYPE_CODES, check_same_device, check_tensor, device_args, lib, register_kernels

_CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INDEX = (torch.int32,)

lib.define("kv_write(Tensor k_new, Tensor v_new, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()")
lib.define("copy_pages(Tensor(a!) cache, Tensor src, Tensor dst) -> ()")
lib.define("gather_tail(Tensor cache, Tensor block_table, Tensor seq_lens, int tau) -> Tensor")


def _check_cache(op: str, name: str, cache, ndim: int) -> None:
    check_tensor(op, name, cache, dtypes=_CACHE_DTYPES, ndim=ndim)
    if not cache.is_contiguous():
        raise ValueError(f"zaya_rt.{op}: {name} must be contiguous, got strides {cache.stride()}")
    if cache.numel() == 0:
        raise ValueError(f"zaya_rt.{op}: {name} is empty, shape {tuple(cache.shape)}")


def _check_kv_write(k_new, v_new, k_cache, v_cache, slot_mapping, values: bool = True) -> None:
    op = "kv_write"
    _check_cache(op, "k_cache", k_cache, 4)
    _check_cache(op, "v_cache", v_cache, 4)
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"zaya_rt.{op}: v_cache {tuple(v_cache.shape)} {v_cache.dtype} differs from k_cache "
                         f"{tuple(k_cache.shape)} {k_cache.dtype}")
    row = tuple(k_cache.shape[2:])
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        check_tensor(op, name, t, dtypes=_CACHE_DTYPES, ndim=3)
        if tuple(t.shape[1:]) != row:
            raise ValueError(f"zaya_rt.{op}: {name} rows have shape {tuple(t.shape[1:])}, the cache holds {row}")
        if t.dtype != k_cache.dtype:
            raise TypeError(f"zaya_rt.{op}: {name} has dtype {t.dtype}, the cache has {k_cache.dtype}")
    if v_new.shape[0] != k_new.shape[0]:
        raise ValueError(f"zaya_rt.{op}: k_new has {k_new.shape[0]} rows, v_new {v_new.shape[0]}")
    check_tensor(op, "slot_mapping", slot_mapping, dtypes=_INDEX, ndim=1)
    if slot_mapping.shape[0] != k_new.shape[0]:
        raise ValueError(f"zaya_rt.{op}: slot_mapping has {slot_mapping.shape[0]} entries for {k_new.shape[0]} rows")
    check_same_device(op, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    # slot values are range-checked by _C on the CPU (a loop there costs nothing next to two tensor reductions)


def _torch_fallback(t: torch.Tensor) -> bool:
    """A GPU tensor while this _C has no GPU kernels."""
    return t.device.type != "cpu" and _C.gpu_backend == "none"


def _rows(t: torch.Tensor) -> torch.Tensor:
    t2 = t.reshape(t.shape[0], -1)
    return t2 if t2.shape[1] <= 1 or t2.stride(1) == 1 else t2.contiguous()


# ---- the kernels' arguments (csrc/bindings_runtime.cpp), field by field ------------------------------------------


def kv_write_params(k2: torch.Tensor, v2: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> _C.KvWriteParams:
    """k2/v2 [N, W] rows (unit inner stride) into k_cache/v_cache [P, S, Hk, d] contiguous (W = Hk * d), at
    slot_mapping [N] int32 contiguous."""
    p = _C.KvWriteParams()
    p.k_new, p.k_new_row_stride = k2.data_ptr(), k2.stride(0)
    p.v_new, p.v_new_row_stride = v2.data_ptr(), v2.stride(0)
    p.k_cache, p.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
    p.page_stride, p.token_stride = k_cache.stride()[:2]
    p.slot_mapping, p.dtype = slot_mapping.data_ptr(), DTYPE_CODES[k_cache.dtype]
    p.N, p.W, (p.P, p.S) = k2.shape[0], k_cache.stride(1), k_cache.shape[:2]
    return p


def copy_pages_params(cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> _C.CopyPagesParams:
    """cache [L, P, ...] contiguous; src/dst [n] int32 contiguous page ids."""
    p = _C.CopyPagesParams()
    L, P = cache.shape[:2]
    page = cache[0, 0].numel()
    p.cache, p.layer_stride, p.page_stride, p.page_elems = cache.data_ptr(), P * page, page, page
    p.src, p.dst, p.dtype = src.data_ptr(), dst.data_ptr(), DTYPE_CODES[cache.dtype]
    p.L, p.P, p.n = L, P, src.shape[0]
    return p


def gather_tail_params(cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                       out: torch.Tensor) -> _C.GatherTailParams:
    """cache [P, S, Hk, d] contiguous, block_table [B, M] int32 (unit inner stride), seq_lens [B] int32
    contiguous, out [B, tau, Hk, d] contiguous."""
    p = _C.GatherTailParams()
    B, M = block_table.shape
    p.cache, (p.page_stride, p.token_stride) = cache.data_ptr(), cache.stride()[:2]
    p.block_table, p.block_table_stride = block_table.data_ptr(), block_table.stride(0) if M else 0
    p.seq_lens, p.out, p.dtype = seq_lens.data_ptr(), out.data_ptr(), DTYPE_CODES[cache.dtype]
    p.B, p.M, (p.P, p.S), p.W, p.tau = B, M, cache.shape[:2], cache.stride(1), out.shape[1]
    return p


def _kv_write(k_new, v_new, k_cache, v_cache, slot_mapping) -> None:
    _check_kv_write(k_new, v_new, k_cache, v_cache, slot_mapping)
    N = k_new.shape[0]
    if N == 0:
        return
    P, S = k_cache.shape[:2]
    if _torch_fallback(k_cache):
        slots = slot_mapping.long()
        for cache, new in ((k_cache, k_new), (v_cache, v_new)):
            cache.view(P * S, -1).index_copy_(0, slots, new.reshape(N, -1))
        return
    k2, v2 = _rows(k_new), _rows(v_new)
    _C.kv_write(kv_write_params(k2, v2, k_cache, v_cache, slot_mapping), *device_args(k_cache))


def _kv_write_fake(k_new, v_new, k_cache, v_cache, slot_mapping) -> None:
    _check_kv_write(k_new, v_new, k_cache, v_cache, slot_mapping, values=False)


def _check_copy_pages(cache, src, dst, values: bool = True) -> None:
    op = "copy_pages"
    check_tensor(op, "cache", cache, dtypes=_CACHE_DTYPES)
    if cache.dim() < 3:
        raise ValueError(f"zaya_rt.{op}: cache must be [layers, pages, ...], got shape {tuple(cache.shape)}")
    if not cache.is_contiguous() or cache.numel() == 0:
        raise ValueError(f"zaya_rt.{op}: cache must be a non-empty contiguous tensor")
    for name, t in (("src", src), ("dst", dst)):
        check_tensor(op, name, t, dtypes=_INDEX, ndim=1)
    if src.shape != dst.shape:
        raise ValueError(f"zaya_rt.{op}: src has {src.shape[0]} pages, dst {dst.shape[0]}")
    check_same_device(op, cache=cache, src=src, dst=dst)
    if values and src.device.type == "cpu" and src.numel():
        P = cache.shape[1]
        for name, t in (("src", src), ("dst", dst)):
            if int(t.min()) < 0 or int(t.max()) >= P:
                raise ValueError(f"zaya_rt.{op}: {name} page ids must lie in [0, {P}), got "
                                 f"[{int(t.min())}, {int(t.max())}]")
        if torch.unique(dst).numel() != dst.numel():
            raise ValueError(f"zaya_rt.{op}: dst names a page twice")
        _check_no_overlap(src, dst)


def _check_no_overlap(src, dst) -> None:
    both = set(src.tolist()) & set(dst.tolist())
    if both:
        raise ValueError(f"zaya_rt.copy_pages: pages {sorted(both)} are both a source and a destination; "
                         "overlapping copies are not supported")


def _copy_pages(cache, src, dst) -> None:
    _check_copy_pages(cache, src, dst)
    n = src.shape[0]
    if n == 0:
        return
    if _torch_fallback(cache):
        _check_no_overlap(src, dst)  # off the CPU only here: the slow path may read the ids back
        cache[:, dst.long()] = cache[:, src.long()]
        return
    _C.copy_pages(copy_pages_params(cache, src, dst), *device_args(cache))


def _copy_pages_fake(cache, src, dst) -> None:
    _check_copy_pages(cache, src, dst, values=False)


def _check_gather_tail(cache, block_table, seq_lens, tau) -> None:
    op = "gather_tail"
    _check_cache(op, "cache", cache, 4)
    check_tensor(op, "block_table", block_table, dtypes=_INDEX, ndim=2)
    check_tensor(op, "seq_lens", seq_lens, dtypes=_INDEX, ndim=1)
    if seq_lens.shape[0] != block_table.shape[0]:
        raise ValueError(f"zaya_rt.{op}: seq_lens has {seq_lens.shape[0]} entries, block_table "
                         f"{block_table.shape[0]} rows")
    if not isinstance(tau, int) or isinstance(tau, bool) or tau < 0:
        raise ValueError(f"zaya_rt.{op}: tau must be a non-negative int, got {tau!r}")
    check_same_device(op, cache=cache, block_table=block_table, seq_lens=seq_lens)


def _gather_tail(cache, block_table, seq_lens, tau):
    _check_gather_tail(cache, block_table, seq_lens, tau)
    B, M = block_table.shape
    P, S = cache.shape[:2]
    out = cache.new_empty((B, tau, *cache.shape[2:]))
    if B * tau == 0:
        return out
    if _torch_fallback(cache):
        return gather_tail_torch(cache, block_table, seq_lens, tau)
    bt = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
    _C.gather_tail(gather_tail_params(cache, bt, seq_lens.contiguous(), out), *device_args(cache))
    return out


def gather_tail_torch(cache, block_table, seq_lens, tau: int) -> torch.Tensor:
    """gather_tail as PyTorch index ops (the GPU fallback without GPU kernels in _C; a benchmark peer)."""
    B, M = block_table.shape
    P, S = cache.shape[:2]
    pos = seq_lens.long()[:, None] - tau + torch.arange(tau, device=cache.device)
    valid = pos >= 0
    col = (pos.clamp_min(0) // S).clamp_max(max(M - 1, 0))
    page = block_table.long().gather(1, col).clamp(0, P - 1)
    rows = cache.view(P * S, *cache.shape[2:])[page * S + pos.clamp_min(0) % S]
    return torch.where(valid[..., None, None], rows, torch.zeros((), dtype=cache.dtype, device=cache.device))


def _gather_tail_fake(cache, block_table, seq_lens, tau):
    _check_gather_tail(cache, block_table, seq_lens, tau)
    return cache.new_empty((block_table.shape[0], tau, *cache.shape[2:]))


register_kernels("kv_write", _kv_write, _kv_write_fake)
register_kernels("copy_pages", _copy_pages, _copy_pages_fake)
register_kernels("gather_tail", _gather_tail, _gather_tail_fake)


def _require_tensors(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"zaya_rt.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def kv_write(k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Writes k_new/v_new [N, Hk, d] into the page caches [P, S, Hk, d] at slot_mapping [N] int32 (-1 skips)."""
    _require_tensors("kv_write", k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    torch.ops.zaya_rt.kv_write(k_new, v_new, k_cache, v_cache, slot_mapping)


def copy_pages(cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    """cache [L, P, ...]: copies pages src [n] int32 onto dst [n] int32 in every layer."""
    _require_tensors("copy_pages", cache=cache, src=src, dst=dst)
    torch.ops.zaya_rt.copy_pages(cache, src, dst)


def gather_tail(cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor, tau: int) -> torch.Tensor:
    """The last tau cached rows of each sequence: [B, tau, Hk, d] (zeros before position 0)."""
    _require_tensors("gather_tail", cache=cache, block_table=block_table, seq_lens=seq_lens)
    return torch.ops.zaya_rt.gather_tail(cache, block_table, seq_lens, tau)

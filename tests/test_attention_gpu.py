"""GPU attention kernels (CUDA or HIP build of zaya_rt._C) vs the float64 reference, over the edge cases of
tests/test_attention.py: ragged packed sequences (empty, single token, chunked Lq < Lk), windows, GQA 1/2/4/8,
head dims 64/128 (and 40/256 for the generic path), bf16/fp16/fp32, strided inputs; backward; paged decode with
shuffled, shared and NaN-poisoned pages, forced split counts; and a CUDA-graph capture of decode.

Tolerance rule as on the CPU: error vs float64 at most twice that of the same-precision PyTorch composition plus
conftest.tolerance(dtype) times the output's scale. Runs only where torch sees a GPU and _C has a GPU backend.
"""

import pytest
import torch

import zaya_rt
from conftest import NEEDS_GPU, tolerance
from zaya_rt import _C, ref
from zaya_rt.benchmarks.harness import capture_cuda_graph
from zaya_rt.ops import attention as attention_ops
from zaya_rt.ops._lib import device_args, set_workspace

pytestmark = NEEDS_GPU

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEV = "cuda"


def _cu(lengths):
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(torch.int32)


def _assert_close(got, want, peer, dtype, what):
    if want.numel() == 0:
        assert got.numel() == 0
        return
    got, want, peer = got.detach().cpu().double(), want.detach().cpu().double(), peer.detach().cpu().double()
    scale = max(want.abs().max().item(), 1e-6)
    err = (got - want).abs().max().item()
    peer_err = (peer - want).abs().max().item()
    bound = 2 * peer_err + tolerance(dtype) * scale
    assert err <= bound, f"{what}: error {err:.3g} > bound {bound:.3g} (peer error {peer_err:.3g}, dtype {dtype})"


VARLEN_CASES = [
    # lq, lk, hq, hk, d, window
    ([5, 0, 1, 130], [5, 0, 1, 130], 8, 8, 64, None),
    ([17, 300], [17, 300], 8, 4, 128, None),
    ([3, 64], [40, 200], 8, 2, 128, None),      # chunked prefill (bottom-right causal)
    ([65, 65], [65, 65], 8, 1, 64, 16),          # window
    ([33], [100], 4, 2, 40, 7),                  # generic head dim, window + chunk
    ([129], [129], 2, 1, 256, None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", VARLEN_CASES)
@pytest.mark.parametrize("strided", [False, True])
def test_varlen_forward_backward(dtype, case, strided):
    lq, lk, hq, hk, d, window = case
    gen = torch.Generator().manual_seed(hash((tuple(lq), hq, d)) % 1000)
    tq, tk = sum(lq), sum(lk)
    if strided:
        q = torch.randn(hq, tq, d, generator=gen).to(dtype).to(DEV).transpose(0, 1)
    else:
        q = torch.randn(tq, hq, d, generator=gen).to(dtype).to(DEV)
    k = torch.randn(tk, hk, d, generator=gen).to(dtype).to(DEV)
    v = torch.randn(tk, hk, d, generator=gen).to(dtype).to(DEV)
    cq, ck = _cu(lq).to(DEV), _cu(lk).to(DEV)
    qc, kc, vc = (t.detach().requires_grad_() for t in (q, k, v))
    out = zaya_rt.ops.attention_varlen(qc, kc, vc, cq, ck, window=window)
    args64 = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    want = ref.attention_varlen_ref(*args64, cq.cpu(), ck.cpu(), window=window)
    peer = ref.attention_varlen_ref(q.cpu(), k.cpu(), v.cpu(), cq.cpu(), ck.cpu(), window=window)
    _assert_close(out, want, peer, dtype, "out")
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    got = torch.autograd.grad(out, (qc, kc, vc), dout.to(DEV))
    want_g = torch.autograd.grad(want, args64, dout.double())
    peers = [t.detach().cpu().requires_grad_() for t in (q, k, v)]
    peer_out = ref.attention_varlen_ref(*peers, cq.cpu(), ck.cpu(), window=window)
    peer_g = torch.autograd.grad(peer_out, peers, dout)
    for name, g, w, p in zip(("dq", "dk", "dv"), got, want_g, peer_g):
        _assert_close(g, w, p, dtype, name)


def test_varlen_matches_cpu_kernel_and_queries_without_keys():
    gen = torch.Generator().manual_seed(1)
    lq, lk = [4, 6], [0, 3]  # first sequence sees no key; second has Lq > Lk (early rows see nothing)
    q = torch.randn(sum(lq), 4, 64, generator=gen)
    k = torch.randn(sum(lk), 2, 64, generator=gen)
    v = torch.randn(sum(lk), 2, 64, generator=gen)
    cpu = zaya_rt.ops.attention_varlen(q, k, v, _cu(lq), _cu(lk))
    gpu = zaya_rt.ops.attention_varlen(q.to(DEV), k.to(DEV), v.to(DEV), _cu(lq).to(DEV), _cu(lk).to(DEV))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    assert torch.all(gpu[:4] == 0)


def _paged_cache(lengths, page, hk, d, dtype, gen, shared_prefix_pages=0):
    B = len(lengths)
    width = max(-(-n // page) for n in lengths) + 1
    P = B * width + 3
    k_cache = torch.full((P, page, hk, d), float("nan"), dtype=dtype)
    v_cache = torch.full((P, page, hk, d), float("nan"), dtype=dtype)
    table = torch.randperm(P, generator=gen).to(torch.int32)[: B * width].view(B, width).clone()
    table[1:, :shared_prefix_pages] = table[0, :shared_prefix_pages]
    for b, n in enumerate(lengths):
        for t in range(n):
            if b > 0 and t // page < shared_prefix_pages:
                continue
            p, s = int(table[b, t // page]), t % page
            k_cache[p, s] = torch.randn(hk, d, generator=gen).to(dtype)
            v_cache[p, s] = torch.randn(hk, d, generator=gen).to(dtype)
    return k_cache, v_cache, table, torch.tensor(lengths, dtype=torch.int32)


DECODE_CASES = [
    # lengths, n, page, hq, hk, d, window, shared pages
    ([1, 0, 37], 1, 16, 8, 8, 128, None, 0),
    ([4100, 900], 1, 16, 16, 2, 128, None, 0),   # several splits
    ([300, 301, 299], 4, 32, 8, 1, 64, None, 2),  # shared prefix, n = 4
    ([2000], 2, 64, 8, 2, 128, 100, 0),          # window
    ([77, 5], 1, 8, 4, 4, 256, None, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_matches_reference(dtype, case):
    lengths, n, page, hq, hk, d, window, shared = case
    gen = torch.Generator().manual_seed(sum(lengths) + n)
    kc, vc, table, lens = _paged_cache(lengths, page, hk, d, dtype, gen, shared)
    q = torch.randn(len(lengths), n, hq, d, generator=gen).to(dtype)
    out = zaya_rt.ops.attention_decode(q.to(DEV), kc.to(DEV), vc.to(DEV), table.to(DEV), lens.to(DEV), window=window)
    want = ref.attention_decode_ref(q.double(), kc.double(), vc.double(), table, lens, window=window)
    peer = ref.attention_decode_ref(q, kc, vc, table, lens, window=window)
    _assert_close(out, want, peer, dtype, "decode")


@pytest.mark.parametrize("splits", [1, 2, 7, 64])
def test_decode_forced_splits(splits):
    gen = torch.Generator().manual_seed(splits)
    kc, vc, table, lens = _paged_cache([1000, 3, 0], 16, 2, 128, torch.bfloat16, gen)
    q = torch.randn(3, 2, 8, 128, generator=gen).to(torch.bfloat16)
    qd, kd, vd, td, ld = (t.to(DEV) for t in (q, kc, vc, table, lens))
    out = torch.full_like(qd, float("nan"))
    p = attention_ops.attention_decode_params(qd, kd, vd, td, ld, out, 0, q.shape[-1] ** -0.5, splits)
    ws = torch.full((max(_C.attention_decode_workspace(p, 1), 64),), 255, dtype=torch.uint8, device=DEV)
    _C.attention_decode(set_workspace(p, ws), *device_args(qd))
    want = ref.attention_decode_ref(q.double(), kc.double(), vc.double(), table, lens)
    peer = ref.attention_decode_ref(q, kc, vc, table, lens)
    _assert_close(out, want, peer, torch.bfloat16, f"decode splits={splits}")


def test_decode_cuda_graph_capture():
    gen = torch.Generator().manual_seed(5)
    kc, vc, table, lens = _paged_cache([700, 33], 16, 2, 128, torch.bfloat16, gen)
    q = torch.randn(2, 1, 8, 128, generator=gen).to(torch.bfloat16)
    qd, kd, vd, td, ld = (t.to(DEV) for t in (q, kc, vc, table, lens))
    graph, out = capture_cuda_graph(lambda: zaya_rt.ops.attention_decode(qd, kd, vd, td, ld))
    q2 = torch.randn(q.shape, generator=gen).to(torch.bfloat16)
    qd.copy_(q2.to(DEV))
    graph.replay()
    torch.cuda.synchronize()
    want = ref.attention_decode_ref(q2.double(), kc.double(), vc.double(), table, lens)
    peer = ref.attention_decode_ref(q2, kc, vc, table, lens)
    _assert_close(out, want, peer, torch.bfloat16, "graph replay")


# ---- forward kernel families: sm_90a wgmma, sm_80 WMMA, SIMT (ZAYA_RT_CUDA_ATTENTION) ------------------------

_CAP = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else (0, 0)
SM90_HERE = _CAP == (9, 0) and getattr(_C, "sm90_attention", False)
WMMA_HERE = _C.gpu_backend == "cuda" and _CAP >= (8, 0)

FAMILY_CASES = [
    # lq, lk, hq, hk, d, causal, window: ragged with 1-token and > 64-row / > 64-key sequences, GQA 1/2/4/8
    ([1, 70, 0, 5], [1, 70, 0, 40], 2, 2, 64, True, None),
    ([130, 1], [130, 1], 4, 2, 128, True, None),
    ([9, 200], [20, 200], 8, 2, 128, True, 33),
    ([3, 17], [150, 17], 8, 1, 64, False, None),
    ([65, 300], [100, 300], 8, 8, 128, False, 20),
    ([6, 9], [3, 30], 4, 1, 64, True, 3),  # Lq > Lk: early rows see nothing
]


def _want_family(family: str, dtype: torch.dtype, d: int) -> str:
    tensor_cores = dtype != torch.float32 and d in (64, 128)
    if family in ("auto", "sm90") and tensor_cores and SM90_HERE:
        return "sm90_wgmma"
    if family != "simt" and tensor_cores and WMMA_HERE:
        return "wmma"
    return "simt"


def _fwd_path(q, k, v, batch):
    """The forward's kernel family for these operands (the path reads q/k/v, their strides, dtype and sizes)."""
    cu = torch.zeros(batch + 1, dtype=torch.int32, device=q.device)
    lse = torch.empty(q.shape[1], q.shape[0], device=q.device)
    p = attention_ops.attention_varlen_fwd_params(q, k, v, cu, cu, torch.empty_like(q), lse, True, 0, 1.0)
    return _C.attention_varlen_path(p)


@pytest.mark.parametrize("family", ["auto", "sm90", "wmma", "simt"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", FAMILY_CASES)
def test_varlen_forward_families(family, dtype, case, monkeypatch):
    """out and lse of each forward family vs float64, with the family _C reports; on an H100/H200 the sm90 and
    auto rows run the wgmma kernel."""
    monkeypatch.setenv("ZAYA_RT_CUDA_ATTENTION", family)
    lq, lk, hq, hk, d, causal, window = case
    gen = torch.Generator().manual_seed(sum(lq) * 31 + hq * 7 + d)
    q = torch.randn(sum(lq), hq, d, generator=gen).to(dtype)
    k = torch.randn(sum(lk), hk, d, generator=gen).to(dtype)
    v = torch.randn(sum(lk), hk, d, generator=gen).to(dtype)
    qd, kd, vd, cq, ck = q.to(DEV), k.to(DEV), v.to(DEV), _cu(lq).to(DEV), _cu(lk).to(DEV)
    assert _fwd_path(qd, kd, vd, len(lq)) == _want_family(family, dtype, d)
    out, lse = zaya_rt.ops.attention_varlen(qd, kd, vd, cq, ck, causal=causal, window=window, return_lse=True)
    q64, k64, v64 = q.double(), k.double(), v.double()
    want = ref.attention_varlen_ref(q64, k64, v64, _cu(lq), _cu(lk), causal=causal, window=window)
    peer = ref.attention_varlen_ref(q, k, v, _cu(lq), _cu(lk), causal=causal, window=window)
    _assert_close(out, want, peer, dtype, f"out [{family}]")
    want_lse = ref.attention_varlen_lse_ref(q64, k64, _cu(lq), _cu(lk), causal=causal, window=window)
    lse = lse.cpu().double()
    fin = torch.isfinite(want_lse)
    assert torch.equal(fin, torch.isfinite(lse)), "rows without keys must have lse -inf, the others finite"
    torch.testing.assert_close(lse[fin], want_lse[fin], rtol=0, atol=1e-4)


def test_varlen_forward_family_fallbacks(monkeypatch):
    """Calls the tensor-core kernels do not take (fp32, head dim 40, rows not 16-byte aligned) report and run the
    family below them, whatever ZAYA_RT_CUDA_ATTENTION asks for."""
    monkeypatch.setenv("ZAYA_RT_CUDA_ATTENTION", "sm90")
    q = torch.randn(10, 4, 72, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(10, 2, 72, device=DEV, dtype=torch.bfloat16)
    assert _fwd_path(q.float(), k.float(), k.float(), 1) == "simt"
    assert _fwd_path(q[..., :40], k[..., :40], k[..., :40], 1) == "simt"
    assert _fwd_path(q[..., 1:65], k[..., :64], k[..., :64], 1) == "simt"  # q rows start 2 bytes off 16
    assert _fwd_path(q[..., :64], k[..., :64], k[..., :64], 1) == _want_family("sm90", torch.bfloat16, 64)
    assert _fwd_path(q[:0], k, k, 1) == "none"


def test_varlen_forward_bad_family_env(monkeypatch):
    monkeypatch.setenv("ZAYA_RT_CUDA_ATTENTION", "fastest")
    q = torch.randn(8, 2, 64, device=DEV, dtype=torch.bfloat16)
    cu = _cu([8]).to(DEV)
    with pytest.raises(RuntimeError, match="ZAYA_RT_CUDA_ATTENTION"):
        zaya_rt.ops.attention_varlen(q, q, q, cu, cu)
    with pytest.raises(ValueError, match="ZAYA_RT_CUDA_ATTENTION"):
        _fwd_path(q, q, q, 1)


@pytest.mark.parametrize("family", ["sm90", "wmma"])
def test_varlen_forward_cuda_graph_capture(family, monkeypatch):
    """The forward (packed prefill, no host sync) replays from a CUDA graph with new inputs."""
    monkeypatch.setenv("ZAYA_RT_CUDA_ATTENTION", family)
    gen = torch.Generator().manual_seed(11)
    lq = [100, 1, 37]
    q, k, v = (torch.randn(sum(lq), h, 128, generator=gen).to(torch.bfloat16) for h in (8, 2, 2))
    qd, kd, vd, cu = q.to(DEV), k.to(DEV), v.to(DEV), _cu(lq).to(DEV)
    graph, out = capture_cuda_graph(lambda: zaya_rt.ops.attention_varlen(qd, kd, vd, cu, cu))
    q2 = torch.randn(q.shape, generator=gen).to(torch.bfloat16)
    qd.copy_(q2.to(DEV))
    graph.replay()
    torch.cuda.synchronize()
    want = ref.attention_varlen_ref(q2.double(), k.double(), v.double(), _cu(lq), _cu(lq))
    peer = ref.attention_varlen_ref(q2, k, v, _cu(lq), _cu(lq))
    _assert_close(out, want, peer, torch.bfloat16, f"graph replay [{family}]")

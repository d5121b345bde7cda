"""The HIP (CDNA3) matrix-core prefill forward (hip/attention_mfma.h) without a GPU: tools/gpu_emu compiles the
GPU attention kernels for the host at 64 lanes per wave, with the MFMA builtins emulated wave-collectively from
AMD's documented lane layout (tools/gpu_emu/amdgcn_mfma.h), and this file compares `attention_varlen`'s forward
to the float64 reference on ragged packed batches (lengths 0, 1 and longer than a 64-row / 64-key tile), GQA
1/2/4/8, head dims 32/64/128/256, causal, windowed and full masks, bf16 and fp16. It also checks that the MFMA
kernel is what ran (emulated MFMA count > 0) and that fp32, d = 96 and unaligned rows fall back to the SIMT kernel.

Tolerance: max error relative to max |reference| at most 2x that of the same computation in plain PyTorch at the
input dtype (zaya_rt.ref with bf16 / fp16 tensors: bf16 / fp16 scores and products), floored at the conftest
tolerance. No AMD GPU ran any of this: it checks index math, lane layout and numerics, not timing or races."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tolerance

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the GPU kernel emulator")
    spec = importlib.util.spec_from_file_location("zaya_gpu_emu_check", ROOT / "tools/gpu_emu/check_attention_cca.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("zaya_gpu_emu_check", mod)
    spec.loader.exec_module(mod)
    lib = mod.load(64, tmp_path_factory.mktemp("gpu_emu_w64"))
    return mod, lib


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    if want.numel() == 0:
        return 0.0
    return (got.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-30)


def _run(emu, dtype, lq, lk, hq, hk, d, causal, window, *, q_pad=8, seed=0):
    mod, lib = emu
    gen = torch.Generator().manual_seed(seed)
    Tq, Tk = sum(lq), sum(lk)
    q = torch.randn(Tq, hq, d + q_pad, generator=gen).to(dtype)[..., :d]  # strided rows
    k = torch.randn(Tk, hk, d, generator=gen).to(dtype)
    v = torch.randn(Tk, hk, d, generator=gen).to(dtype)
    cq, ck = mod.cu(lq), mod.cu(lk)
    calls = lib.emu_mfma_calls()
    out, lse = mod.varlen_fwd(lib, q, k, v, cq, ck, causal, window)
    mfma_calls = lib.emu_mfma_calls() - calls
    ref = mod.ref
    want = ref.attention_varlen_ref(q.double(), k.double(), v.double(), cq, ck, causal=causal, window=window)
    same_precision = ref.attention_varlen_ref(q, k, v, cq, ck, causal=causal, window=window)
    want_lse = ref.attention_varlen_lse_ref(q.double(), k.double(), cq, ck, causal=causal, window=window)
    return out, lse, want, want_lse, same_precision, mfma_calls


def _check(out, lse, want, want_lse, same_precision, dtype):
    assert not out.isnan().any()
    e, e_torch = _err(out, want), _err(same_precision, want)
    assert e <= max(2 * e_torch, tolerance(dtype)), (e, e_torch)
    seen = torch.isfinite(want_lse)
    assert torch.equal(seen, torch.isfinite(lse))  # rows without keys: lse -inf (and out 0, checked above)
    if seen.any():
        assert (lse[seen].double() - want_lse[seen]).abs().max().item() < 2e-4


# (dtype, lq, lk, Hq, Hk, d, causal, window)
CASES = [
    (torch.bfloat16, [1, 70, 5], [1, 70, 5], 2, 2, 64, True, None),       # G 1, length 1, > 64 rows
    (torch.float16, [130], [130], 2, 1, 128, True, None),                 # G 2, 3 key tiles
    (torch.bfloat16, [9, 33], [40, 33], 8, 2, 32, True, 7),               # G 4, Lk > Lq, window
    (torch.float16, [17, 1], [17, 3], 8, 1, 256, False, 5),               # G 8, d 256 (32-key tiles), window only
    (torch.bfloat16, [6, 0, 3], [2, 4, 30], 4, 2, 128, True, 3),          # Lq > Lk: rows without keys; empty seq
    (torch.float16, [100], [150], 1, 1, 64, False, None),                 # full mask, ragged last tiles
    (torch.bfloat16, [40], [40], 16, 2, 256, True, 20),                   # G 8 x 40 tokens: 5 blocks of 64 rows
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{str(c[0])[6:]}-lq{c[1]}-G{c[3] // c[4]}-d{c[5]}-"
                         f"{'causal' if c[6] else 'full'}-w{c[7]}")
def test_mfma_forward_matches_reference(emu, case):
    dtype, lq, lk, hq, hk, d, causal, window = case
    out, lse, want, want_lse, same, calls = _run(emu, dtype, lq, lk, hq, hk, d, causal, window)
    assert calls > 0, "the MFMA kernel did not run"
    _check(out, lse, want, want_lse, same, dtype)


@st.composite
def mfma_case(draw):
    batch = draw(st.integers(1, 3))
    lq = draw(st.lists(st.integers(0, 90), min_size=batch, max_size=batch))
    lk = [n + draw(st.integers(0, 40)) for n in lq]  # a query sits at Lk - Lq + i: Lk >= Lq keeps every row live
    hk = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 4, 8]))
    causal = draw(st.booleans())
    window = draw(st.sampled_from([None, 1, 17, 70]))
    return draw(st.sampled_from([torch.bfloat16, torch.float16])), lq, lk, hk * g, hk, \
        draw(st.sampled_from([32, 64, 128, 256])), causal, window


@settings(max_examples=6, deadline=None)
@given(case=mfma_case(), seed=st.integers(0, 9999))
def test_mfma_forward_random_shapes(emu, case, seed):
    dtype, lq, lk, hq, hk, d, causal, window = case
    out, lse, want, want_lse, same, calls = _run(emu, dtype, lq, lk, hq, hk, d, causal, window, seed=seed)
    assert calls > 0 or sum(lq) == 0
    _check(out, lse, want, want_lse, same, dtype)


@pytest.mark.parametrize("dtype,d,q_pad", [(torch.float32, 64, 8), (torch.bfloat16, 96, 8), (torch.float16, 64, 1)],
                         ids=["fp32", "bf16-d96", "fp16-unaligned-q"])
def test_outside_mfma_constraints_runs_simt(emu, dtype, d, q_pad):
    out, lse, want, want_lse, same, calls = _run(emu, dtype, [20, 3], [20, 9], 4, 2, d, True, None, q_pad=q_pad)
    assert calls == 0
    _check(out, lse, want, want_lse, same, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_mfma_uses_amds_lane_layout(emu, dtype):
    """The emulated builtin against AMD's own table (tools/gpu_emu/mfma_layout_cdna3.json, from AMD's matrix
    instruction calculator): operands scattered to lanes by the table, D gathered by it, must give A B + C."""
    mod, lib = emu
    table = json.loads((ROOT / "tools/gpu_emu/mfma_layout_cdna3.json").read_text())
    layout = table["v_mfma_f32_16x16x16_bf16" if dtype == torch.bfloat16 else "v_mfma_f32_16x16x16_f16"]
    gen = torch.Generator().manual_seed(1)
    A, B = (torch.randn(16, 16, generator=gen).to(dtype) for _ in range(2))
    C = torch.randn(16, 16, generator=gen)
    def scatter(m, t):  # [64][4] lane items of matrix m under table t
        return torch.tensor([[m[i, j].item() for i, j in lane] for lane in t], dtype=m.dtype)

    a, b = scatter(A.view(torch.int16), layout["A"]), scatter(B.view(torch.int16), layout["B"])
    c = scatter(C, layout["D"])
    d = torch.full((64, 4), float("nan"))
    assert lib.emu_mfma_16x16x16(mod.CODES[dtype], mod.P(a), mod.P(b), mod.P(c), mod.P(d)) is None
    D = torch.full((16, 16), float("nan"))
    for lane, items in enumerate(layout["D"]):
        for e, (i, j) in enumerate(items):
            D[i, j] = d[lane, e]
    want = A.double() @ B.double() + C.double()
    assert (D.double() - want).abs().max().item() < 1e-5 * want.abs().max().item()

"""Runs the attention and CCA prep GPU kernel bodies under host emulation (tools/gpu_emu) against the float64
references, on small ragged / windowed / GQA / paged cases. No GPU needed; slow (a std::thread per GPU thread).

  PYTHONPATH=python python tools/gpu_emu/check_attention_cca.py [--warp 32|64] [--no-sm90 | --only-sm90]

--only-sm90 runs just the sm_90a wgmma forward cases (its PTX emulated by tools/gpu_emu/cuda/sm90_ptx.cuh);
tests/test_gpu_emu_sm90.py runs that in the test suite.
"""

from __future__ import annotations

import ctypes
import pathlib
import sys
import tempfile

import torch

HERE = pathlib.Path(__file__).resolve().parent


def _import_ref():
    """zaya_rt.ref without importing zaya_rt itself (which needs the built _C)."""
    import importlib.util
    import types

    if "zaya_rt.ref" in sys.modules:
        return sys.modules["zaya_rt.ref"]
    pkg_dir = HERE.parents[1] / "python" / "zaya_rt"
    if "zaya_rt" not in sys.modules:
        stub = types.ModuleType("zaya_rt")
        stub.__path__ = [str(pkg_dir)]
        sys.modules["zaya_rt"] = stub
    spec = importlib.util.spec_from_file_location("zaya_rt.ref", pkg_dir / "ref" / "__init__.py",
                                                  submodule_search_locations=[str(pkg_dir / "ref")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["zaya_rt.ref"] = mod
    spec.loader.exec_module(mod)
    return mod


ref = _import_ref()

CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.int32: 3, torch.int64: 4}
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def load(warp: int, out_dir: pathlib.Path | None = None) -> ctypes.CDLL:
    """Builds the emulator at `warp` lanes (into a fresh temporary folder unless out_dir) and loads it."""
    import subprocess

    out = pathlib.Path(out_dir or tempfile.mkdtemp(prefix="zaya_gpu_emu_"))
    subprocess.run([sys.executable, str(HERE / "build.py"), str(out), "--warp", str(warp)], check=True,
                   stdout=subprocess.DEVNULL)
    lib = ctypes.CDLL(str(out / f"libzaya_gpu_emu_w{warp}.so"))
    for name in ("emu_varlen_fwd", "emu_varlen_fwd_sm90", "emu_varlen_bwd", "emu_decode", "emu_cca_prep_fwd"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.emu_decode_workspace.restype = ctypes.c_int64
    lib.emu_varlen_bwd_workspace.restype = ctypes.c_int64
    lib.emu_mfma_calls.restype = ctypes.c_int64
    lib.emu_mfma_16x16x16.restype = ctypes.c_char_p
    return lib


def P(t):  # noqa: N802
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def I(x):  # noqa: N802, E743
    return ctypes.c_int64(int(x))


def F(x):  # noqa: N802
    return ctypes.c_float(float(x))


def err(got, want):
    if want.numel() == 0:
        return 0.0
    scale = max(want.abs().max().item(), 1e-30)
    return (got.double() - want.double()).abs().max().item() / scale


def check(name, e, dtype, failures, tol_mult=1.0):
    ok = e <= TOL[dtype] * tol_mult
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {e:.3g}")
    if not ok:
        failures.append(name)


def cu(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32)


def varlen_fwd(lib, q, k, v, cq, ck, causal, window):
    """The emulated varlen forward: q [Tq, Hq, d] (any strides), k/v [Tk, Hk, d] -> (out [Tq, Hq, d] in q's
    dtype, lse [Hq, Tq] fp32), both poisoned with NaN before the call."""
    (Tq, hq, d), (Tk, hk) = q.shape, k.shape[:2]
    out = torch.full((Tq, hq, d), float("nan"), dtype=q.dtype)
    lse = torch.full((hq, Tq), float("nan"))
    r = lib.emu_varlen_fwd(P(q), I(q.stride(0)), I(q.stride(1)), P(k), I(k.stride(0)), I(k.stride(1)), P(v),
                           I(v.stride(0)), I(v.stride(1)), P(cq), P(ck), P(out), I(hq * d), I(d), P(lse), I(Tq),
                           CODES[q.dtype], I(len(cq) - 1), I(Tq), I(Tk), I(hq), I(hk), I(d), int(causal),
                           I(window or 0), F(d ** -0.5))
    assert r is None, r
    return out, lse


def check_forward(tag, out, lse, q, k, v, cq, ck, causal, window, failures):
    """A forward's out (q's dtype) and lse (fp32 [hq][Tq]) against float64: the -inf pattern of lse exactly."""
    want = ref.attention_varlen_ref(q.double(), k.double(), v.double(), cq, ck, causal=causal, window=window)
    check(tag + " out", err(out, want), q.dtype, failures)
    want_lse = ref.attention_varlen_lse_ref(q.double(), k.double(), cq, ck, causal=causal, window=window)
    fin = torch.isfinite(want_lse)
    if not torch.equal(fin, torch.isfinite(lse)):
        failures.append(tag + " lse -inf pattern")
        print("FAIL lse -inf pattern")
    elif fin.any():
        check(tag + " lse", (lse[fin].double() - want_lse[fin]).abs().max().item(), torch.float32, failures, 10)


def varlen_case(lib, failures, gen, dtype, lq, lk, hq, hk, d, causal, window):
    Tq, Tk = sum(lq), sum(lk)
    # q strided (a wider buffer), k/v contiguous
    qbuf = torch.randn(Tq, hq, d + 8, generator=gen).to(dtype)
    q = qbuf[..., :d]
    k = torch.randn(Tk, hk, d, generator=gen).to(dtype)
    v = torch.randn(Tk, hk, d, generator=gen).to(dtype)
    cq, ck = cu(lq), cu(lk)
    out, lse = varlen_fwd(lib, q, k, v, cq, ck, causal, window)
    scale = d ** -0.5
    w = window or 0
    tag = f"varlen {dtype} lq={lq} lk={lk} G={hq // hk} d={d} causal={causal} window={window}"
    check_forward(tag, out, lse, q, k, v, cq, ck, causal, window, failures)

    # backward
    dout = torch.randn(Tq, hq, d, generator=gen).to(dtype)
    dq = torch.full((Tq, hq, d), float("nan"), dtype=dtype)
    dk = torch.full((Tk, hk, d), float("nan"), dtype=dtype)
    dv = torch.full((Tk, hk, d), float("nan"), dtype=dtype)
    ws = torch.empty(max(lib.emu_varlen_bwd_workspace(I(Tq), I(hq)), 64), dtype=torch.uint8)
    r = lib.emu_varlen_bwd(P(q), I(q.stride(0)), I(q.stride(1)), P(k), I(k.stride(0)), I(k.stride(1)), P(v),
                           I(v.stride(0)), I(v.stride(1)), P(out), I(hq * d), I(d), P(dout), I(hq * d), I(d),
                           P(lse), I(Tq), P(cq), P(ck), P(dq), I(hq * d), I(d), P(dk), I(hk * d), I(d), P(dv),
                           I(hk * d), I(d), CODES[dtype], I(len(lq)), I(Tq), I(Tk), I(hq), I(hk), I(d), int(causal),
                           I(w), F(scale), P(ws), I(ws.numel()))
    assert r is None, r
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    o64 = ref.attention_varlen_ref(q64, k64, v64, cq, ck, causal=causal, window=window)
    g = torch.autograd.grad(o64, (q64, k64, v64), dout.double())
    for nm, got, want in (("dq", dq, g[0]), ("dk", dk, g[1]), ("dv", dv, g[2])):
        check(tag + " " + nm, err(got, want), dtype, failures, 4 if dtype != torch.float32 else 10)


def sm90_case(lib, failures, gen, dtype, lq, lk, hq, hk, d, causal, window):
    """The sm_90a wgmma forward (emulated PTX, tools/gpu_emu/cuda/sm90_ptx.cuh): out and lse vs float64."""
    Tq, Tk = sum(lq), sum(lk)
    qbuf = torch.randn(Tq, hq, d + 8, generator=gen).to(dtype)  # strided q rows (16-byte aligned)
    q = qbuf[..., :d]
    k = torch.randn(Tk, hk, d, generator=gen).to(dtype)
    v = torch.randn(Tk, hk, d, generator=gen).to(dtype)
    cq, ck = cu(lq), cu(lk)
    out = torch.full((Tq, hq, d), float("nan"), dtype=dtype)
    lse = torch.full((hq, Tq), float("nan"))
    r = lib.emu_varlen_fwd_sm90(P(q), I(q.stride(0)), I(q.stride(1)), P(k), I(k.stride(0)), I(k.stride(1)), P(v),
                                I(v.stride(0)), I(v.stride(1)), P(cq), P(ck), P(out), I(hq * d), I(d), P(lse),
                                I(Tq), CODES[dtype], I(len(lq)), I(Tq), I(Tk), I(hq), I(hk), I(d), int(causal),
                                I(window or 0), F(d ** -0.5))
    assert r is None, r
    tag = f"sm90 {dtype} lq={lq} lk={lk} G={hq // hk} d={d} causal={causal} window={window}"
    check_forward(tag, out, lse, q, k, v, cq, ck, causal, window, failures)


SM90_CASES = [
    # dtype, lq, lk, hq, hk, d, causal, window: ragged (1, > 64-row and 64-key tiles, empty, Lq < Lk), GQA 1-8
    (torch.bfloat16, [1, 70, 0, 5], [1, 70, 0, 40], 2, 2, 64, True, None),
    (torch.float16, [130], [130], 2, 1, 128, True, None),
    (torch.bfloat16, [9, 66], [20, 66], 8, 2, 128, True, 33),
    (torch.float16, [3, 17], [150, 17], 8, 1, 64, False, None),
    (torch.bfloat16, [40], [100], 8, 8, 128, False, 20),
    (torch.float16, [6, 9], [3, 30], 4, 1, 64, True, 3),  # Lq > Lk: early rows see nothing
]


def decode_case(lib, failures, gen, dtype, lengths, n, page, hq, hk, d, window, splits, shared=0):
    B = len(lengths)
    width = max(-(-L // page) for L in lengths) + 1
    Pn = B * width + 2
    kc = torch.full((Pn, page, hk, d), float("nan"), dtype=dtype)
    vc = torch.full((Pn, page, hk, d), float("nan"), dtype=dtype)
    table = torch.randperm(Pn, generator=gen).to(torch.int32)[: B * width].view(B, width).clone()
    table[1:, :shared] = table[0, :shared]
    for b, L in enumerate(lengths):
        for t in range(L):
            if b > 0 and t // page < shared:
                continue
            pg, s = int(table[b, t // page]), t % page
            kc[pg, s] = torch.randn(hk, d, generator=gen).to(dtype)
            vc[pg, s] = torch.randn(hk, d, generator=gen).to(dtype)
    lens = torch.tensor(lengths, dtype=torch.int32)
    q = torch.randn(B, n, hq, d, generator=gen).to(dtype)
    out = torch.full((B, n, hq, d), float("nan"), dtype=dtype)
    args = [P(q), I(q.stride(0)), I(q.stride(1)), I(q.stride(2)), P(kc), I(kc.stride(0)), I(kc.stride(1)),
            I(kc.stride(2)), P(vc), I(vc.stride(0)), I(vc.stride(1)), I(vc.stride(2)), P(table), I(table.stride(0)),
            P(lens), P(out), I(n * hq * d), I(hq * d), I(d), CODES[dtype], I(B), I(n), I(hq), I(hk), I(d), I(page),
            I(Pn), I(width), I(window or 0), F(d ** -0.5), I(splits)]
    nbytes = lib.emu_decode_workspace(*args, P(None), I(0))
    ws = torch.full((max(nbytes, 64) // 4,), float("nan"))
    r = lib.emu_decode(*args, P(ws), I(ws.numel() * 4))
    assert r is None, r
    want = ref.attention_decode_ref(q.double(), kc.double(), vc.double(), table, lens, window=window)
    tag = f"decode {dtype} lens={lengths} n={n} page={page} G={hq // hk} d={d} window={window} splits={splits}"
    check(tag, err(out, want), dtype, failures)


def cca_case(lib, failures, gen, dtype, lens, hq, hk, d, k0, k1, rd, with_state, w_f32, pos64):
    T, B = sum(lens), len(lens)
    C, V, K = (hq + hk) * d, hk * d // 2, (k0 - 1) + (k1 - 1)
    wdt = torch.float32 if w_f32 else dtype
    qp = torch.randn(T, hq * d, generator=gen).to(dtype)
    kp = torch.randn(T, hk * d, generator=gen).to(dtype)
    v_cur = torch.randn(T, V, generator=gen).to(dtype)
    v_del = torch.randn(T, V, generator=gen).to(dtype)
    w0 = (torch.randn(C, 1, k0, generator=gen) * 0.5).to(wdt)
    b0 = (torch.randn(C, generator=gen) * 0.1).to(wdt)
    w1 = (torch.randn(C, d, k1, generator=gen) * d ** -0.5).to(wdt)
    b1 = (torch.randn(C, generator=gen) * 0.1).to(wdt)
    temp = (torch.rand(hk, generator=gen) + 0.5).to(wdt)
    pos = torch.cat([torch.arange(L) + 7 * b for b, L in enumerate(lens)]).to(torch.int64 if pos64 else torch.int32)
    cs = torch.randn(B, C, K, generator=gen).to(dtype) if with_state else None
    vs = torch.randn(B, V, generator=gen).to(dtype) if with_state else None
    cuq = cu(lens)
    inv = ref.rope_inv_freq(rd, 1e4, torch.float32)
    q = torch.full((T, hq, d), float("nan"), dtype=dtype)
    k = torch.full((T, hk, d), float("nan"), dtype=dtype)
    v = torch.full((T, hk * d), float("nan"), dtype=dtype)
    cs_out = torch.full((B, C, K), float("nan"), dtype=dtype)
    vs_out = torch.full((B, V), float("nan"), dtype=dtype)
    ptrs = (ctypes.c_void_p * 19)(*[P(t).value for t in (qp, kp, v_cur, v_del, w0, b0, w1, b1, temp, cs, vs, pos,
                                                          cuq, inv, q, k, v, cs_out, vs_out)])
    strides = (ctypes.c_int64 * 15)(hq * d, hk * d, V, V, C * K if cs is not None else 0, K,
                                    V if vs is not None else 0, hq * d, d, hk * d, d, hk * d, C * K, K, V)
    dts = (ctypes.c_int * 4)(CODES[dtype], CODES[wdt], CODES[dtype], CODES[pos.dtype])
    sizes = (ctypes.c_int64 * 8)(T, B, hq, hk, d, k0, k1, rd)
    eps = torch.finfo(dtype).eps
    r = lib.emu_cca_prep_fwd(ptrs, strides, dts, sizes, F(eps))
    assert r is None, r
    want = ref.cca_prep(qp.double(), kp.double(), v_cur.double(), v_del.double(), w0.double(), b0.double(),
                        w1.double(), b1.double(), temp.double(), pos, cuq,
                        None if cs is None else cs.double(), None if vs is None else vs.double(), num_q_heads=hq,
                        num_kv_heads=hk, rope_dims=rd, rope_theta=1e4, norm_eps=eps)
    tag = f"cca {dtype} lens={lens} G={hq // hk} d={d} k=({k0},{k1}) rd={rd} state={with_state}"
    for nm, got, w in zip(("q", "k", "v", "conv_state", "v_state"), (q, k, v, cs_out, vs_out), want):
        check(tag + " " + nm, err(got.reshape(w.shape), w), dtype, failures, 4)


def main() -> None:
    warp = int(sys.argv[sys.argv.index("--warp") + 1]) if "--warp" in sys.argv else 32
    lib = load(warp)
    gen = torch.Generator().manual_seed(0)
    failures: list[str] = []
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    if "--only-sm90" in sys.argv:
        for case in SM90_CASES:
            sm90_case(lib, failures, gen, *case)
        print(f"sm90: {len(failures)} failures")
        sys.exit(1 if failures else 0)
    varlen_case(lib, failures, gen, f32, [5, 0, 19], [5, 3, 19], 2, 1, 64, True, None)
    varlen_case(lib, failures, gen, f32, [3, 17], [9, 40], 4, 2, 40, True, 6)
    varlen_case(lib, failures, gen, f32, [21], [21], 8, 1, 128, False, 5)
    varlen_case(lib, failures, gen, f32, [6, 9], [3, 30], 4, 1, 64, True, 3)   # Lq > Lk: early rows see nothing
    varlen_case(lib, failures, gen, f32, [10, 40], [25, 40], 2, 2, 64, False, None)
    varlen_case(lib, failures, gen, bf16, [7, 33], [7, 70], 4, 1, 128, True, None)
    varlen_case(lib, failures, gen, f16, [12], [12], 2, 2, 256, True, 4)
    # tensor-core path (warp 32) / MFMA path (warp 64; more cases in tests/test_attention_mfma_emulation.py):
    # bf16/fp16, d 64/128, more than one 64-row block and 64-key tile
    varlen_case(lib, failures, gen, bf16, [70, 1], [150, 1], 8, 2, 64, True, 90)
    varlen_case(lib, failures, gen, f16, [130], [130], 2, 1, 128, True, None)
    varlen_case(lib, failures, gen, f16, [20, 0, 9], [20, 4, 9], 4, 4, 64, False, None)
    if warp == 32 and "--no-sm90" not in sys.argv:
        for case in SM90_CASES:
            sm90_case(lib, failures, gen, *case)
    decode_case(lib, failures, gen, f32, [37, 0, 5], 1, 8, 4, 2, 64, None, 0)
    decode_case(lib, failures, gen, f32, [600, 90], 2, 16, 8, 2, 128, None, 3)
    decode_case(lib, failures, gen, bf16, [300, 301], 3, 16, 4, 1, 128, 50, 0, shared=2)
    decode_case(lib, failures, gen, f16, [70], 1, 4, 16, 2, 64, 9, 5)
    decode_case(lib, failures, gen, f32, [45, 17], 1, 8, 2, 2, 256, None, 2)
    cca_case(lib, failures, gen, f32, [5, 0, 9], 4, 2, 16, 2, 2, 8, True, False, False)
    cca_case(lib, failures, gen, f32, [1, 20], 2, 1, 64, 3, 2, 32, False, False, True)
    cca_case(lib, failures, gen, bf16, [11, 6], 4, 2, 32, 2, 2, 16, True, True, False)
    cca_case(lib, failures, gen, f32, [4], 1, 1, 8, 1, 1, 8, True, False, False)
    print(f"warp {warp}: {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

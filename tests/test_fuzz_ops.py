"""Shape fuzzing of every op family: hypothesis draws shapes that include every zero-size dimension, and each
call must either raise a clear exception (ValueError/TypeError/RuntimeError whose message names zaya_rt) or
return the float64 reference's answer (python/zaya_rt/ref/, or plain PyTorch index ops for the page ops).

Each family runs in its own Python subprocess (this file run as a script), so a kernel that kills the process
with a signal (SIGFPE, SIGSEGV) fails its test instead of taking pytest down. Examples per family are bounded
(ZAYA_RT_FUZZ_EXAMPLES, default 25) to keep the whole file near a minute on two cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import subprocess_env

FAMILIES = ["grouped_gemm", "moe_experts", "router", "norms", "attention_varlen", "attention_decode", "cca",
            "page_ops"]


@pytest.mark.parametrize("family", FAMILIES)
def test_fuzz_family(family):
    env = subprocess_env()
    proc = subprocess.run([sys.executable, __file__, family], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode < 0:
        pytest.fail(f"{family}: killed by {signal.Signals(-proc.returncode).name}\n{proc.stdout[-4000:]}"
                    f"{proc.stderr[-4000:]}")
    assert proc.returncode == 0, f"{family}:\n{proc.stdout[-6000:]}{proc.stderr[-6000:]}"


# ---- shared rule ---------------------------------------------------------------------------------------------

CLEAR = (ValueError, TypeError, RuntimeError)


def answer_or_clear_error(call):
    """Runs call(); returns its result, or None when it raised a clear zaya_rt error (anything else fails)."""
    try:
        return call()
    except CLEAR as e:
        msg = str(e)
        assert "zaya_rt" in msg and len(msg) > len("zaya_rt."), f"unclear {type(e).__name__}: {msg!r}"
        return None


def close(got, want, rel=1e-4, floor=1e-5, what="output"):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    if want.numel() == 0:
        return
    err = (got.double() - want.double()).abs().max().item()
    bound = rel * want.double().abs().max().item() + floor
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def reference_grads(want, inputs, dy):
    """Gradients of <want, dy> for the float64 reference; zeros where an input does not reach the output (a
    reference on empty shapes may return a constant)."""
    if not want.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    grads = torch.autograd.grad(want, inputs, dy.double(), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


def no_window_past_int32(window):
    """Windows of 2**31 - 1 keys or more mask nothing (positions are int32): the reference gets None for them."""
    return None if window is not None and window >= 2**31 - 1 else window


def fuzz(strategy):
    """@given with the bounded settings every family uses."""
    examples = int(os.environ.get("ZAYA_RT_FUZZ_EXAMPLES", "25"))
    return lambda fn: settings(max_examples=examples, deadline=None, database=None,
                               suppress_health_check=list(HealthCheck))(given(strategy)(fn))


def offsets_for(M, G, draw):
    cuts = sorted(draw(st.lists(st.integers(0, M), min_size=G, max_size=G)))
    return torch.tensor(cuts, dtype=torch.int32)


# ---- families ------------------------------------------------------------------------------------------------


@st.composite
def gemm_case(draw):
    M, N, K, G = draw(st.integers(0, 6)), draw(st.integers(0, 5)), draw(st.integers(0, 5)), draw(st.integers(1, 3))
    return M, N, K, G, offsets_for(M, G, draw), draw(st.sampled_from([torch.float32, torch.bfloat16]))


@fuzz(gemm_case())
def fuzz_grouped_gemm(case):
    from zaya_rt import ops, ref

    M, N, K, G, offsets, dtype = case
    a = torch.randn(M, K).to(dtype).requires_grad_()
    b = torch.randn(G, N, K).to(dtype).requires_grad_()
    out = answer_or_clear_error(lambda: ops.grouped_gemm(a, b, offsets))
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    want = ref.grouped_gemm(a64, b64, offsets)
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    if out is None:
        return
    close(out, want, rel=rel, what="grouped_gemm")
    dy = torch.randn(M, N).to(dtype)
    grads = answer_or_clear_error(lambda: torch.autograd.grad(out, (a, b), dy))
    if grads is None:
        return
    for g, w, name in zip(grads, reference_grads(want, (a64, b64), dy), ("grad_a", "grad_b")):
        close(g, w, rel=rel, what=name)


@st.composite
def experts_case(draw):
    T, D, I, E, k = (draw(st.integers(0, 4)), draw(st.integers(0, 4)), draw(st.integers(0, 3)),
                     draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    return T, D, I, E, k, draw(st.integers(0, 2**16))


@fuzz(experts_case())
def fuzz_moe_experts(case):
    from zaya_rt import ops, ref

    T, D, I, E, k, seed = case
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, D, generator=gen).requires_grad_()
    index = torch.randint(0, E + 1, (T, k), generator=gen)  # E = skip
    gate = torch.rand(T, k, generator=gen).requires_grad_()
    w1 = (0.5 * torch.randn(E, 2 * I, D, generator=gen)).requires_grad_()
    w2 = (0.5 * torch.randn(E, D, I, generator=gen)).requires_grad_()
    leaves = (hidden, gate, w1, w2)
    out = answer_or_clear_error(lambda: ops.moe_experts(hidden, index, gate, w1, w2))
    if out is None:
        return
    l64 = [t.detach().double().requires_grad_() for t in leaves]
    want = ref.moe_experts(l64[0], index, l64[1], l64[2], l64[3])
    close(out, want, what="moe_experts")
    dy = torch.randn(T, D, generator=gen)
    grads = answer_or_clear_error(lambda: torch.autograd.grad(out, leaves, dy, allow_unused=True))
    if grads is None:
        return
    for g, w, t, name in zip(grads, reference_grads(want, l64, dy), leaves, ("hidden", "gate", "gate_up_proj",
                                                                              "down_proj")):
        close(torch.zeros_like(t) if g is None else g, w, what=f"grad {name}")


@st.composite
def router_case(draw):
    T, D, R, E = draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(st.integers(0, 4)), draw(st.integers(0, 3))
    return T, D, R, E, draw(st.booleans()), draw(st.integers(0, 2**16))


@fuzz(router_case())
def fuzz_router(case):
    from zaya_rt import ops, ref

    T, D, R, E, eda, seed = case
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    C = E + 1
    args = [rn(T, D), rn(T, R) if eda else None, rn(R, D), rn(R), (1 + 0.1 * rn(R)) if eda else None, 1 + 0.1 * rn(R),
            rn(R, R), rn(R), rn(R, R), rn(R), rn(C, R), 0.1 * rn(C), 1e-5]
    got = answer_or_clear_error(lambda: ops.zaya_router(*args))
    if got is None:
        return
    logits, gate, choice, z = got
    r_logits, _, _, r_z = ref.zaya_router(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    close(logits, r_logits, what="logits")
    close(z, r_z, what="z")
    assert ((choice >= 0) & (choice < C)).all()
    # the gate is the probability of the kernel's choice (0 for skip); the choice is the reference's wherever
    # its biased lead is clear
    probs = r_logits.softmax(-1)
    close(gate, probs.gather(-1, choice[:, None]).squeeze(-1).masked_fill(choice == E, 0), what="gate")
    scores = probs + args[11].double()
    if T and C > 1:
        top2 = scores.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4
        assert (choice[clear] == scores.argmax(-1)[clear]).all(), "choice"


@st.composite
def norms_case(draw):
    return (draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.sampled_from([torch.float32, torch.bfloat16])),
            draw(st.integers(0, 2**16)))


@fuzz(norms_case())
def fuzz_norms(case):
    from zaya_rt import ops, ref

    rows, dim, dtype, seed = case
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    x, w = rn(rows, dim).requires_grad_(), (1 + 0.1 * rn(dim)).requires_grad_()
    out = answer_or_clear_error(lambda: ops.rms_norm(x, w, 1e-5))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = ref.rms_norm(x64, w64, 1e-5)
    if out is not None:
        close(out, want, rel=rel, what="rms_norm")
        dy = rn(rows, dim)
        grads = answer_or_clear_error(lambda: torch.autograd.grad(out, (x, w), dy))
        if grads is not None:
            for g, wg, name in zip(grads, reference_grads(want, (x64, w64), dy), ("x", "weight")):
                close(g, wg, rel=4 * rel, floor=1e-4, what=f"rms_norm grad {name}")
    y, h = rn(rows, dim), rn(rows, dim)
    params = [(1 + 0.1 * rn(dim)) for _ in range(5)]
    got = answer_or_clear_error(lambda: ops.residual_rms_norm(y, h, *params, 1e-5))
    if got is not None:
        r_want, out_want = ref.residual_rms_norm(y.double(), h.double(), *[p.double() for p in params], 1e-5)
        close(got[0], r_want, rel=1e-5, what="residual r")
        close(got[1], out_want, rel=rel, what="residual out")


@st.composite
def varlen_case(draw):
    lens = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    lens_k = [n + draw(st.integers(0, 2)) for n in lens]
    heads = draw(st.sampled_from([(1, 1), (2, 1), (0, 1), (1, 0)]))
    return (lens, lens_k, heads, draw(st.sampled_from([0, 8, 32])), draw(st.booleans()),
            draw(st.sampled_from([None, 1, 3, 2**63])), draw(st.integers(0, 2**16)))


@fuzz(varlen_case())
def fuzz_attention_varlen(case):
    from zaya_rt import ops, ref

    lens, lens_k, (hq, hk), d, causal, window, seed = case
    gen = torch.Generator().manual_seed(seed)
    cu = lambda ls: torch.tensor([0, *torch.tensor(ls, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32)  # noqa: E731
    q = torch.randn(sum(lens), hq, d, generator=gen).requires_grad_()
    k = torch.randn(sum(lens_k), hk, d, generator=gen).requires_grad_()
    v = torch.randn(sum(lens_k), hk, d, generator=gen).requires_grad_()
    out = answer_or_clear_error(lambda: ops.attention_varlen(q, k, v, cu(lens), cu(lens_k), causal=causal,
                                                             window=no_window_past_int32(window)))
    if out is None:
        return
    l64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = ref.attention_varlen_ref(*l64, cu(lens), cu(lens_k), causal=causal, window=no_window_past_int32(window),
                                    scale=d**-0.5)
    close(out, want, what="attention_varlen")
    dy = torch.randn(out.shape, generator=gen)
    grads = answer_or_clear_error(lambda: torch.autograd.grad(out, (q, k, v), dy))
    if grads is None:
        return
    for g, w, name in zip(grads, reference_grads(want, l64, dy), "qkv"):
        close(g, w, what=f"grad {name}")


@st.composite
def decode_case(draw):
    B, n, page, width = (draw(st.integers(0, 3)), draw(st.integers(0, 2)), draw(st.sampled_from([1, 2, 3, 4])),
                         draw(st.integers(0, 3)))
    lens = [draw(st.sampled_from([0, *range(max(n, 1), width * page + 1)])) for _ in range(B)]
    return B, n, page, width, lens, draw(st.sampled_from([None, 2, 2**63])), draw(st.integers(0, 2**16))


@fuzz(decode_case())
def fuzz_attention_decode(case):
    from zaya_rt import ops, ref

    B, n, page, width, lens, window, seed = case
    gen = torch.Generator().manual_seed(seed)
    P, hq, hk, d = 5, 2, 1, 32
    q = torch.randn(B, n, hq, d, generator=gen)
    kc, vc = torch.randn(P, page, hk, d, generator=gen), torch.randn(P, page, hk, d, generator=gen)
    table = torch.randint(0, P, (B, width), generator=gen, dtype=torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = answer_or_clear_error(lambda: ops.attention_decode(q, kc, vc, table, seq_lens, window=window))
    if out is None:
        return
    want = ref.attention_decode_ref(q.double(), kc.double(), vc.double(), table, seq_lens, scale=d**-0.5,
                                    window=no_window_past_int32(window))
    close(out, want, what="attention_decode")


@st.composite
def cca_case(draw):
    lens = draw(st.lists(st.integers(0, 3), min_size=0, max_size=3))
    hk = draw(st.integers(1, 2))
    return (lens, hk * draw(st.integers(1, 2)), hk, draw(st.sampled_from([0, 2, 4])), draw(st.integers(1, 3)),
            draw(st.integers(1, 3)), draw(st.booleans()), draw(st.integers(0, 2**16)))


@fuzz(cca_case())
def fuzz_cca(case):
    from cca_helpers import make_inputs, reference

    from zaya_rt import ops

    lens, hq, hk, d, k0, k1, state, seed = case
    args, attrs = make_inputs(lens, Hq=hq, Hk=hk, d=max(d, 2), k0=k0, k1=k1, rd=2, state=state, seed=seed)
    if d == 0:  # a zero head_dim: every projection has zero columns
        attrs["rope_dims"] = 0
    got = answer_or_clear_error(lambda: ops.cca_prep(**args, **attrs))
    if got is None:
        return
    want = reference(args, attrs, eps_dtype=torch.float32)
    for g, w, name in zip(got, want, ("q", "k", "v", "conv_state", "v_state")):
        close(g, w, what=name)


@st.composite
def pages_case(draw):
    L, P, S, W = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    N = draw(st.integers(0, min(4, P * S + 1)))
    slots = draw(st.lists(st.integers(-1, P * S - 1), min_size=N, max_size=N, unique=True))
    n = draw(st.integers(0, P))
    pages = draw(st.permutations(range(P)))
    src, dst = pages[:n], draw(st.lists(st.integers(0, P - 1), min_size=n, max_size=n, unique=True))
    B, M = draw(st.integers(0, 2)), draw(st.integers(0, 3))
    seq = [draw(st.integers(0, M * S)) for _ in range(B)]
    return L, P, S, W, slots, src, dst, B, M, seq, draw(st.integers(0, 3)), draw(st.integers(0, 2**16))


@fuzz(pages_case())
def fuzz_page_ops(case):
    from zaya_rt import ops

    L, P, S, W, slots, src, dst, B, M, seq, tau, seed = case
    gen = torch.Generator().manual_seed(seed)
    # kv_write: row n goes to slot slots[n] (-1: padding, skipped)
    kc, vc = torch.randn(P, S, 1, W, generator=gen), torch.randn(P, S, 1, W, generator=gen)
    kn, vn = torch.randn(len(slots), 1, W, generator=gen), torch.randn(len(slots), 1, W, generator=gen)
    mapping = torch.tensor(slots, dtype=torch.int32)
    want_k, want_v = kc.clone(), vc.clone()
    for i, s in enumerate(slots):
        if s >= 0:
            want_k.view(P * S, 1, W)[s], want_v.view(P * S, 1, W)[s] = kn[i], vn[i]
    if answer_or_clear_error(lambda: ops.kv_write(kn, vn, kc, vc, mapping) or True) is not None:
        close(kc, want_k, rel=0, floor=0, what="kv_write k")
        close(vc, want_v, rel=0, floor=0, what="kv_write v")
    # copy_pages: cache[:, dst[i]] = cache[:, src[i]] (pages read before any is written)
    cache = torch.randn(L, P, S, W, generator=gen)
    want = cache.clone()
    want[:, list(dst)] = cache[:, list(src)]
    src_t, dst_t = torch.tensor(src, dtype=torch.int32), torch.tensor(dst, dtype=torch.int32)
    if answer_or_clear_error(lambda: ops.copy_pages(cache, src_t, dst_t) or True) is not None:
        close(cache, want, rel=0, floor=0, what="copy_pages")
    # gather_tail: rows seq_lens[b] - tau .. seq_lens[b] - 1 of each sequence, zeros before position 0
    pc = torch.randn(P, S, 1, W, generator=gen)
    table = torch.randint(0, P, (B, M), generator=gen, dtype=torch.int32)
    out = answer_or_clear_error(lambda: ops.gather_tail(pc, table, torch.tensor(seq, dtype=torch.int32), tau))
    if out is not None:
        want = torch.zeros(B, tau, 1, W)
        for b in range(B):
            for j in range(tau):
                pos = seq[b] - tau + j
                if pos >= 0:
                    want[b, j] = pc[table[b, pos // S], pos % S]
        close(out, want, rel=0, floor=0, what="gather_tail")


if __name__ == "__main__":
    globals()["fuzz_" + sys.argv[1]]()
    print(f"fuzz_{sys.argv[1]}: ok")

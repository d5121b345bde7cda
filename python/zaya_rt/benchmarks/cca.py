"""CCA prep benchmark cases: the fused cca_prep against the unfused PyTorch composition the model used before
(transformers' ZayaCCAProjection after its linears: conv1d x2 + residual paths, ZayaQKNorm, partial RoPE from
positions, value shift), on [B, T] batches with incoming state."""

from __future__ import annotations

import torch

from zaya_rt import ops, ref
from zaya_rt.benchmarks.harness import Case

# (sequences B, tokens per sequence T): prefill and decode-like batches.
DEFAULT_SHAPES = ((1, 2048), (4, 512), (1, 1), (4, 1), (16, 1), (1, 16))


def _unfused(qp, kp, v_cur, v_del, w0, b0, w1, b1, temp, positions_BT, conv_state, v_state, Hq, Hk, rd, theta):
    B, T = positions_BT.shape
    q, k, cs = ref.cca_conv_qk(qp, kp, w0, b0, w1, b1, Hq, Hk, conv_state)
    q, k = ref.qk_norm(q, k, temp)
    inv_freq = ref.rope_inv_freq(rd, theta, torch.float32).to(qp.device)
    freqs = positions_BT[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(qp.dtype), emb.sin().to(qp.dtype)
    q, k = ref.partial_rope(q, cos, sin), ref.partial_rope(k, cos, sin)
    v = torch.cat([v_cur, torch.cat([v_state[:, None], v_del[:, :-1]], dim=1)], dim=-1).view(B, T, Hk, -1)
    return q, k, v, cs, v_del[:, -1]


def cca_cases(device: str = "cpu", shapes=None, Hq: int = 8, Hk: int = 2, d: int = 128, k0: int = 2, k1: int = 2,
              dtypes=(torch.float32, torch.bfloat16), theta: float = 5e6):
    cases = []
    C, V, K, rd = (Hq + Hk) * d, Hk * d // 2, (k0 - 1) + (k1 - 1), d // 2
    for dtype in dtypes:
        for B, T in shapes or DEFAULT_SHAPES:
            gen = torch.Generator().manual_seed(B * 7919 + T)
            mk = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=gen)).to(device=device, dtype=dtype)  # noqa: E731
            qp, kp, v_cur, v_del = mk(B, T, Hq * d), mk(B, T, Hk * d), mk(B, T, V), mk(B, T, V)
            w0, b0, w1, b1 = mk(C, 1, k0, scale=0.5), mk(C, scale=0.1), mk(C, d, k1, scale=(d * k1) ** -0.5), mk(C, scale=0.1)
            temp = 1 + mk(Hk, scale=0.1).abs()
            cs, vs = mk(B, C, K), mk(B, V)
            pos_BT = torch.arange(100, 100 + T, device=device).repeat(B, 1)
            cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=device)
            flat = [t.reshape(B * T, -1) for t in (qp, kp, v_cur, v_del)]
            pos = pos_BT.reshape(-1)

            def ours(f=flat, w=(w0, b0, w1, b1, temp), p=pos, c=cu, s=(cs, vs)):
                return ops.cca_prep(*f, *w, p, c, *s, num_q_heads=Hq, num_kv_heads=Hk, rope_dims=rd, rope_theta=theta)

            def peer(a=(qp, kp, v_cur, v_del, w0, b0, w1, b1, temp, pos_BT, cs, vs)):
                return _unfused(*a, Hq, Hk, rd, theta)

            n = B * T
            elem = qp.element_size()
            cases.append(Case(
                "cca_prep", f"B{B} T{T} Hq{Hq} Hk{Hk} d{d} k{k0},{k1}", str(dtype).removeprefix("torch."),
                ours=ours, peer=peer, peer_name="unfused PyTorch (ref conv1d x2 + qk_norm + rope + shift)",
                flops=2 * n * C * (d * k1 + k0), bytes_moved=(2 * n * (C + Hk * d) + C * d * k1) * elem,
            ))
    return cases


# (documents B, tokens per document T, head dim d) of training steps: the 124M-shaped model's and ZAYA1-8B's heads.
DEFAULT_FWD_BWD_SHAPES = ((4, 512, 64), (1, 2048, 128))


def cca_fwd_bwd_cases(device: str = "cpu", shapes=None, dtypes=(torch.bfloat16, torch.float32), Hq: int = 8,
                      Hk: int = 2, k0: int = 2, k1: int = 2, theta: float = 5e6):
    """cca_prep forward + backward as a training step runs it (packed documents, fresh state): ours is
    `ops.cca_prep` and its backward kernel, the peer the ref/cca.py composition (`_unfused`) under autograd in
    the same dtype. Both return the gradients of the projections, conv weights/biases and temperature for the
    same random output gradients. shapes: (B, T, d) tuples."""
    cases = []
    for dtype in dtypes:
        for B, T, d in shapes or DEFAULT_FWD_BWD_SHAPES:
            C, V, K, rd = (Hq + Hk) * d, Hk * d // 2, (k0 - 1) + (k1 - 1), d // 2
            gen = torch.Generator().manual_seed(B * 7919 + T * 31 + d)
            mk = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=gen)).to(device=device, dtype=dtype)  # noqa: E731
            qp, kp, v_cur, v_del = mk(B, T, Hq * d), mk(B, T, Hk * d), mk(B, T, V), mk(B, T, V)
            w0, b0 = mk(C, 1, k0, scale=0.5), mk(C, scale=0.1)
            w1, b1 = mk(C, d, k1, scale=(d * k1) ** -0.5), mk(C, scale=0.1)
            temp = 1 + mk(Hk, scale=0.1).abs()
            grads = mk(B * T, Hq, d), mk(B * T, Hk, d), mk(B * T, Hk, d)
            zero_cs, zero_vs = torch.zeros_like(mk(B, C, K)), torch.zeros_like(mk(B, V))
            pos_BT = torch.arange(T, device=device).repeat(B, 1)
            cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=device)
            weights = [t.requires_grad_() for t in (w0, b0, w1, b1, temp)]
            acts = [t.requires_grad_() for t in (qp, kp, v_cur, v_del)]
            flat = [t.reshape(B * T, -1) for t in acts]  # views: their grads flow to the same leaves
            leaves = acts + weights

            def ours(f=flat, w=weights, p=pos_BT.reshape(-1), c=cu, g=grads, x=leaves, rd=rd):
                q, k, v, _, _ = ops.cca_prep(*f, *w, p, c, None, None, num_q_heads=Hq, num_kv_heads=Hk,
                                             rope_dims=rd, rope_theta=theta)
                return torch.autograd.grad((q, k, v), x, g)

            def peer(a=acts, w=weights, p=pos_BT, s=(zero_cs, zero_vs), g=grads, x=leaves, rd=rd):
                q, k, v, _, _ = _unfused(*a, *w, p, *s, Hq, Hk, rd, theta)
                return torch.autograd.grad((q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)), x, g)

            n = B * T
            cases.append(Case(
                "cca_prep fwd+bwd", f"B{B} T{T} Hq{Hq} Hk{Hk} d{d} k{k0},{k1}", str(dtype).removeprefix("torch."),
                ours=ours, peer=peer, peer_name="ref/cca.py composition under autograd",
                flops=3 * 2 * n * C * (d * k1 + k0),
                bytes_moved=3 * (2 * n * (C + Hk * d) + C * d * k1) * qp.element_size(),
            ))
    return cases

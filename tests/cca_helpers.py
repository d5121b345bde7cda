"""Random inputs for the cca_prep tests: packed ragged sequences, optional incoming state, optional
non-contiguous projections (column slices of one packed [q | k | v_cur | v_del] output)."""

from __future__ import annotations

import torch

from zaya_rt import ref


def make_inputs(lens, Hq=4, Hk=2, d=32, k0=2, k1=2, rd=None, dtype=torch.float32, state=True, sliced=False,
                seed=0, theta=10_000.0, w_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    T, B = sum(lens), len(lens)
    C, V, K = (Hq + Hk) * d, Hk * d // 2, (k0 - 1) + (k1 - 1)
    rn = lambda *s, scale=1.0: scale * torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    widths = (Hq * d, Hk * d, V, V)
    if sliced:
        packed = rn(T, sum(widths) + 3).to(dtype)
        cols, out = 0, []
        for w in widths:
            out.append(packed[:, cols : cols + w])
            cols += w
        qp, kp, v_cur, v_del = out
    else:
        qp, kp, v_cur, v_del = (rn(T, w).to(dtype) for w in widths)
    wd = w_dtype or dtype
    args = dict(
        qp=qp, kp=kp, v_cur=v_cur, v_del=v_del,
        conv0_w=rn(C, 1, k0, scale=0.5).to(wd), conv0_b=rn(C, scale=0.1).to(wd),
        conv1_w=rn(C, d, k1, scale=(d * k1) ** -0.5).to(wd), conv1_b=rn(C, scale=0.1).to(wd),
        temp=(1.0 + 0.3 * rn(Hk).abs()).to(wd),
        positions=torch.cat([torch.arange(n) + int(torch.randint(0, 50, (1,), generator=gen)) for n in lens])
        if T else torch.zeros(0, dtype=torch.int64),
        cu_seqlens=torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32),
        conv_state=rn(B, C, K).to(dtype) if state else None,
        v_state=rn(B, V).to(dtype) if state else None,
    )
    attrs = dict(num_q_heads=Hq, num_kv_heads=Hk, rope_dims=rd or d // 2, rope_theta=theta)
    return args, attrs


def reference(args, attrs, dtype=torch.float64, eps_dtype=None):
    """ref.cca_prep with every float input cast to dtype; norm eps of eps_dtype (default: dtype)."""
    cast = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in args.items()}
    return ref.cca_prep(**cast, **attrs, norm_eps=torch.finfo(eps_dtype or dtype).eps)


def max_err(a, b) -> float:
    return 0.0 if a.numel() == 0 else (a.double() - b.double()).abs().max().item()

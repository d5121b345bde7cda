"""cca_prep forward on decode-sized inputs (at most 16 tokens: the conv1 dot path, which on AVX-512 reads the
weight rows in their storage type and widens them in registers) vs the float64 reference: every weight and
activation dtype, head dims that take the register tiles and one that falls back, one token per sequence (the
engine's decode step) and a few ragged ones, with and without state, NaN-poisoned outputs. Tolerance as in
test_cca.py."""

from __future__ import annotations

import pytest
import torch

import zaya_rt
from cca_helpers import make_inputs, reference
from conftest import assert_close_to_peer, poisoned_empty

NAMES = ("q", "k", "v", "conv_state", "v_state")


def _run_poisoned(args, attrs):
    """cca_prep with outputs and workspace NaN-filled before the kernel writes them."""
    from zaya_rt.ops import cca as cca_ops

    with poisoned_empty(cca_ops):
        return zaya_rt.ops.cca_prep(**args, **attrs)


@pytest.mark.parametrize("dtype,w_dtype", [(torch.bfloat16, None), (torch.float16, None), (torch.float32, None),
                                           (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("d,k1", [(64, 2), (48, 2), (32, 3), (40, 2)])  # 40: d % 16 != 0 falls back
@pytest.mark.parametrize("lens", [[1], [1] * 16, [3, 1, 0, 5]])
def test_decode_sized_forward_matches_reference(dtype, w_dtype, d, k1, lens):
    args, attrs = make_inputs(lens, Hq=8, Hk=2, d=d, k0=2, k1=k1, dtype=dtype, w_dtype=w_dtype, state=True,
                              seed=d + k1 + len(lens))
    out = _run_poisoned(args, attrs)
    want = reference(args, attrs, torch.float64, eps_dtype=dtype)
    peer = reference(args, attrs, w_dtype or dtype)  # weights rounded as the kernel reads them
    for name, o, w, p in zip(NAMES, out, want, peer):
        assert o.shape == w.shape, name
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        assert_close_to_peer(o, w, p, f"{name} d={d} k1={k1} lens={lens}", scale=scale, dtype=dtype)

"""The call contract (csrc/bindings_params.h): each params struct crosses into _C by field name, and each
builder in zaya_rt.ops sets every field its struct binds (a field left at its zero default is a silent wrong
answer the kernels cannot detect). Every `*Params` class of _C must have its builder checked here."""

from __future__ import annotations

import importlib

import pytest
import torch

from zaya_rt import _C

attention = importlib.import_module("zaya_rt.ops.attention")
cca = importlib.import_module("zaya_rt.ops.cca")
cross_entropy = importlib.import_module("zaya_rt.ops.cross_entropy")
moe = importlib.import_module("zaya_rt.ops.moe")
newton_schulz = importlib.import_module("zaya_rt.ops.newton_schulz")
norms = importlib.import_module("zaya_rt.ops.norms")
packed_linear = importlib.import_module("zaya_rt.ops.packed_linear")
router = importlib.import_module("zaya_rt.ops.router")
runtime = importlib.import_module("zaya_rt.ops.runtime")
sampling = importlib.import_module("zaya_rt.ops.sampling")

I32, I64 = torch.int32, torch.int64


def recording(cls):
    """A subclass of the bound params class that records which fields were assigned."""

    class Recording(cls):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "assigned", set())

        def __setattr__(self, name, value):
            self.assigned.add(name)
            super().__setattr__(name, value)

    return Recording


def _e(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype)


def _norm_tensors():
    x, w, rstd = torch.randn(3, 8), torch.randn(8), _e(3)
    return x, w, rstd, tuple(torch.randn(8) for _ in range(4))


def _rms_norm_fwd():
    x, w, rstd, _ = _norm_tensors()
    return norms.rms_norm_fwd_params(x, w, _e(3, 8), rstd, 1e-5)


def _rms_norm_bwd():
    x, w, rstd, _ = _norm_tensors()
    return norms.rms_norm_bwd_params(_e(3, 8), x, w, rstd, _e(3, 8), _e(2, 8), _e(8))


def _residual_fwd():
    x, w, rstd, params = _norm_tensors()
    return norms.residual_rms_norm_fwd_params(x, x.clone(), params, w, _e(3, 8), _e(3, 8), rstd, 1e-5)


def _residual_bwd():
    x, w, rstd, params = _norm_tensors()
    return norms.residual_rms_norm_bwd_params(_e(3, 8), _e(3, 8), x, x.clone(), params, w, _e(3, 8), rstd,
                                              _e(3, 8), _e(3, 8), _e(2, 5, 8), _e(5, 8))


def _router():
    x, z_prev = torch.randn(3, 8), torch.randn(3, 4)
    weights = (_e(4, 8), _e(4), _e(4), _e(4), _e(4, 4), _e(4), _e(4, 4), _e(4), _e(3, 4))
    return router.zaya_router_params(x, z_prev, *weights, _e(3), 1e-5, _e(3, 3), _e(3), _e(3, dtype=I64), _e(3, 4),
                                     _e(3, 4))


def _cca_tensors():
    T, B, Hq, Hk, d, k0, k1 = 5, 2, 2, 1, 8, 2, 3
    C, V, K = (Hq + Hk) * d, Hk * d // 2, k0 + k1 - 2
    weights = (_e(C, 1, k0), _e(C), _e(C, d, k1), _e(C), _e(Hk))
    common = (_e(T, Hq * d), _e(T, Hk * d), weights, _e(B, C, K))
    return (T, B, Hq, Hk, d, C, V, K), common, (torch.zeros(T, dtype=I64), torch.tensor([0, 2, 5], dtype=I32), _e(2))


def _cca_fwd():
    (T, B, Hq, Hk, d, C, V, K), (qp, kp, weights, cs_in), (pos, cu, inv) = _cca_tensors()
    return cca.cca_prep_fwd_params(qp, kp, _e(T, V), _e(T, V), weights, cs_in, _e(B, V), pos, cu, inv,
                                   _e(T, Hq, d), _e(T, Hk, d), _e(T, Hk, d), _e(B, C, K), _e(B, V))


def _cca_bwd():
    (T, B, Hq, Hk, d, C, V, K), (qp, kp, weights, cs_in), (pos, cu, inv) = _cca_tensors()
    grads = tuple(_e(*w.shape) for w in weights)
    return cca.cca_prep_bwd_params(_e(T, Hq, d), _e(T, Hk, d), _e(T, Hk * d), _e(B, C, K), _e(B, V), qp, kp,
                                   weights, cs_in, pos, cu, inv, _e(T, Hq * d), _e(T, Hk * d), _e(T, V), _e(T, V),
                                   _e(B, C, K), _e(B, V), grads)


def _varlen():
    q, k, cu = _e(5, 4, 32), _e(7, 2, 32), torch.tensor([0, 2, 5], dtype=I32)
    return q, k, cu, torch.tensor([0, 3, 7], dtype=I32)


def _attn_fwd():
    q, k, cu_q, cu_k = _varlen()
    return attention.attention_varlen_fwd_params(q, k, k.clone(), cu_q, cu_k, _e(5, 4, 32), _e(4, 5), True, 3, 0.1)


def _attn_bwd():
    q, k, cu_q, cu_k = _varlen()
    return attention.attention_varlen_bwd_params(q, k, k.clone(), q.clone(), q.clone(), _e(4, 5), cu_q, cu_k,
                                                 _e(5, 4, 32), _e(7, 2, 32), _e(7, 2, 32), False, 0, 0.1)


def _attn_decode():
    cache = _e(6, 4, 2, 32)
    return attention.attention_decode_params(_e(2, 1, 4, 32), cache, cache.clone(), torch.zeros(2, 3, dtype=I32),
                                             torch.ones(2, dtype=I32), _e(2, 1, 4, 32), 0, 0.1)


def _sample():
    f, i = _e(2), torch.zeros(2, dtype=I64)
    return sampling.sample_tokens_params(_e(2, 9), (f, torch.zeros(2, dtype=I32), f, f, i, i), _e(2, dtype=I64))


BUILDERS = {  # _C params class -> a call of its one builder on small tensors
    "RmsNormFwdParams": _rms_norm_fwd,
    "RmsNormBwdParams": _rms_norm_bwd,
    "ResidualRmsNormFwdParams": _residual_fwd,
    "ResidualRmsNormBwdParams": _residual_bwd,
    "MoeDispatchParams": lambda: moe.moe_dispatch_params(torch.zeros(4, dtype=I64), 3, _e(3, dtype=I32),
                                                         _e(4, dtype=I32), _e(4, dtype=I32), _e(3, dtype=I32)),
    "GroupedGemmParams": lambda: moe.grouped_gemm_params(_e(4, 8), _e(2, 5, 8), _e(2, dtype=I32), _e(4, 5)),
    "GroupedGemmWeightGradParams": lambda: moe.grouped_gemm_weight_grad_params(_e(4, 5), _e(4, 8), _e(2, dtype=I32),
                                                                                _e(2, 5, 8)),
    "MoeExpertsParams": lambda: moe.moe_experts_params(_e(3, 8), torch.zeros(3, 2, dtype=I64), _e(3, 2),
                                                       _e(2, 8, 8), _e(2, 8, 4), _e(3, 8),
                                                       (_e(2, dtype=I32), _e(6, dtype=I32), _e(6, dtype=I32),
                                                        _e(6, 8))),
    "MoeExpertsBackwardParams": lambda: moe.moe_experts_backward_params(
        _e(3, 8), _e(3, 8), _e(3, 2), _e(2, 8, 8), _e(2, 8, 4), _e(2, dtype=I32), _e(6, dtype=I32), _e(6, dtype=I32),
        _e(6, 8), _e(3, 8), _e(3, 2), _e(2, 8, 8), _e(2, 8, 4)),
    "RouterParams": _router,
    "AttnVarlenFwdParams": _attn_fwd,
    "AttnVarlenBwdParams": _attn_bwd,
    "AttnPagedDecodeParams": _attn_decode,
    "CcaPrepFwdParams": _cca_fwd,
    "CcaPrepBwdParams": _cca_bwd,
    "KvWriteParams": lambda: runtime.kv_write_params(_e(3, 8), _e(3, 8), _e(4, 2, 2, 4), _e(4, 2, 2, 4),
                                                     torch.zeros(3, dtype=I32)),
    "CopyPagesParams": lambda: runtime.copy_pages_params(_e(2, 4, 2, 8), torch.zeros(1, dtype=I32),
                                                         torch.ones(1, dtype=I32)),
    "GatherTailParams": lambda: runtime.gather_tail_params(_e(4, 2, 2, 4), torch.zeros(2, 3, dtype=I32),
                                                           torch.ones(2, dtype=I32), _e(2, 2, 2, 4)),
    "SampleParams": _sample,
    "PackLinearParams": lambda: packed_linear.pack_linear_weight_params(_e(5, 8), _e(5), _e(64, dtype=torch.uint8)),
    "PackedLinearParams": lambda: packed_linear.packed_linear_params(_e(3, 8), _e(64, dtype=torch.uint8), _e(3, 5)),
    "NewtonSchulzParams": lambda: newton_schulz.newton_schulz_params(_e(2, 3, 5), _e(2, 3, 5), 5, (3.0, -4.0, 2.0),
                                                                     1e-7),
    "CrossEntropyRowsParams": lambda: cross_entropy.cross_entropy_rows_params(_e(3, 7), _e(3, dtype=I64), _e(3),
                                                                              -100, 0.5),
}


def test_every_params_class_has_a_builder_test():
    bound = {name for name in dir(_C) if name.endswith("Params") and isinstance(getattr(_C, name), type)}
    assert bound == set(BUILDERS), (f"no builder test for {sorted(bound - set(BUILDERS))}; "
                                    f"no _C class for {sorted(set(BUILDERS) - bound)}")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_sets_every_field(name, monkeypatch):
    cls = recording(getattr(_C, name))
    monkeypatch.setattr(_C, name, cls)
    p = BUILDERS[name]()
    assert type(p) is cls
    missing = set(cls.fields) - p.assigned
    assert not missing, f"{name}: its builder leaves {sorted(missing)} unset"
    assert p.assigned == set(cls.fields)


def test_params_fields_read_back_by_name():
    p = _C.NewtonSchulzParams()
    assert p.x == 0 and p.batch == 0
    p.x, p.batch, p.dtype, p.eps = 0x1000, 7, 0, 0.5
    assert (p.x, p.batch, p.dtype, p.eps) == (0x1000, 7, 0, 0.5)
    with pytest.raises((ValueError, TypeError)):
        p.dtype = 99


def test_builders_read_sizes_and_strides_from_the_tensors():
    """Spot checks that the fields hold what their names say (a swapped pair would pass the test above)."""
    p = _rms_norm_bwd()
    assert (p.rows, p.dim, p.num_partials, p.x_row_stride, p.grad_out_row_stride) == (3, 8, 2, 8, 8)
    a = torch.empty(8, 4).T  # [4, 8] column-major
    g = moe.grouped_gemm_params(a, _e(2, 5, 8), _e(2, dtype=I32), _e(4, 5))
    assert (g.M, g.N, g.K, g.G, g.a_row_stride, g.a_col_stride, g.b_group_stride) == (4, 5, 8, 2, 1, 4, 40)
    d = _attn_decode()
    assert (d.batch, d.num_queries, d.num_heads_q, d.num_heads_k, d.head_dim, d.page_size, d.num_pages,
            d.max_pages, d.k_page_stride, d.k_slot_stride) == (2, 1, 4, 2, 32, 4, 6, 3, 256, 64)
    c = _cca_bwd()
    assert (c.T, c.B, c.Hq, c.Hk, c.d, c.k0, c.k1, c.rd) == (5, 2, 2, 1, 8, 2, 3, 4)
    n = newton_schulz.newton_schulz_params(torch.randn(2, 3, 5), _e(2, 3, 5), 5, (3.0, -4.0, 2.0), 1e-7)
    assert (n.batch, n.rows, n.cols, n.x_row_stride, n.workspace) == (2, 3, 5, 5, 0)

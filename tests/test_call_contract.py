"""The call contract (csrc/bindings_params.h): each params struct crosses into _C by field name, and each
builder in zaya_rt.ops sets every field its struct binds (a field left at its zero default is a silent wrong
answer the kernels cannot detect)."""

from __future__ import annotations

import importlib

import pytest
import torch

from zaya_rt import _C
ns_ops = importlib.import_module("zaya_rt.ops.newton_schulz")


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


def test_params_fields_read_back_by_name():
    p = _C.NewtonSchulzParams()
    assert p.x == 0 and p.batch == 0
    p.x, p.batch, p.dtype, p.eps = 0x1000, 7, 0, 0.5
    assert (p.x, p.batch, p.dtype, p.eps) == (0x1000, 7, 0, 0.5)
    with pytest.raises((ValueError, TypeError)):
        p.dtype = 99


def test_newton_schulz_builder_sets_every_field(monkeypatch):
    cls = recording(_C.NewtonSchulzParams)
    monkeypatch.setattr(_C, "NewtonSchulzParams", cls)
    x3 = torch.randn(2, 3, 5)
    p = ns_ops.newton_schulz_params(x3, torch.empty_like(x3), 5, (3.0, -4.0, 2.0), 1e-7,
                                    torch.empty(64, dtype=torch.uint8))
    assert p.assigned == set(cls.fields)
    assert (p.batch, p.rows, p.cols, p.x_row_stride) == (2, 3, 5, 5)

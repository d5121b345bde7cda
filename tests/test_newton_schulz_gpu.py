"""GPU newton_schulz (CUDA or HIP build of zaya_rt._C) against the float64 reference and the CPU kernel on the
same inputs, plus strided inputs, CUDA-graph capture and empty stacks.

Runs only where torch sees a GPU and _C carries a GPU backend (`pytest -m cuda`).
"""

import pytest
import torch

from zaya_rt import _C, ref
from zaya_rt.ops import newton_schulz

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU visible to torch"),
    pytest.mark.skipif(_C.gpu_backend == "none", reason="zaya_rt._C was built without a GPU backend"),
]

COEFFS = (3.4445, -4.775, 2.0315)
SHAPES = [(1, 7), (40, 24), (3, 50, 97), (2, 130, 61), (4, 256, 512)]


def rel(got, want):
    return ((got.double().cpu() - want).norm() / want.norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_reference_and_cpu(shape):
    torch.manual_seed(sum(shape))
    x = torch.randn(shape)
    got = newton_schulz(x.cuda(), compute_dtype=torch.float32)
    want = ref.newton_schulz(x.double(), 5, COEFFS, 1e-7)
    assert (got.cpu().double() - want).abs().max().item() <= 1e-4
    assert rel(got, newton_schulz(x, compute_dtype=torch.float32).double()) <= 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_close_to_reference(shape):
    torch.manual_seed(1 + sum(shape))
    x = torch.randn(shape, dtype=torch.bfloat16)
    got = newton_schulz(x.cuda())
    assert got.dtype == torch.bfloat16
    assert rel(got, ref.newton_schulz(x.double(), 5, COEFFS, 1e-7)) <= 5e-2
    assert rel(got, newton_schulz(x).double()) <= 5e-2


def test_strided_graph_and_empty():
    torch.manual_seed(3)
    base = torch.randn(3, 80, 50, device="cuda")
    x = base.transpose(-1, -2)[:, ::2]
    eager = newton_schulz(x, compute_dtype=torch.float32)
    assert torch.allclose(eager, newton_schulz(x.contiguous(), compute_dtype=torch.float32), atol=1e-6)
    static_out = newton_schulz(x, compute_dtype=torch.float32)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = newton_schulz(x, compute_dtype=torch.float32)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(static_out, eager, atol=1e-6)
    assert newton_schulz(torch.empty(0, 4, 5, device="cuda")).shape == (0, 4, 5)

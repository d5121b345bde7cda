"""zaya_rt.ops.newton_schulz against the float64 reference and torch.optim.Muon's bf16 composition."""

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_newton_schulz

from zaya_rt import _C, ref
from zaya_rt.ops import newton_schulz
import importlib
ns_module = importlib.import_module("zaya_rt.ops.newton_schulz")

COEFFS = (3.4445, -4.775, 2.0315)


def poison_scratch():
    """Fills the op's CPU workspace with NaN bit patterns: the kernel must not read stale workspace."""
    ns_module._workspace(8 << 20, torch.device("cpu")).fill_(255)


def rel_err(got, want):
    return ((got.double() - want).norm() / want.norm().clamp(min=1e-30)).item()


def reference(x, steps=5, coefficients=COEFFS, eps=1e-7, dtype=torch.float32):
    """Float64 reference on the input as the kernel sees it (cast to the compute dtype first)."""
    return ref.newton_schulz(x.to(dtype).double(), steps, coefficients, eps)


SHAPES = [(1, 1), (1, 7), (7, 1), (5, 9), (40, 24), (64, 64), (3, 50, 97), (2, 3, 130, 61), (4, 13, 200)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_float64_reference(cpu_isa, shape):
    torch.manual_seed(sum(shape))
    x = torch.randn(shape)
    poison_scratch()
    out = newton_schulz(x, compute_dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == x.shape
    want = reference(x)
    assert (out.double() - want).abs().max().item() <= 2e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("shape", [(40, 24), (3, 50, 97), (2, 130, 61), (96, 160)])
@pytest.mark.parametrize("dot", [0, 1])
def test_bf16_as_close_as_torch_composition(cpu_isa, shape, dot):
    previous = _C.cpu_bf16_dot()
    _C.set_cpu_bf16_dot(dot)
    try:
        torch.manual_seed(7 + sum(shape))
        x = torch.randn(shape, dtype=torch.bfloat16)
        poison_scratch()
        out = newton_schulz(x)
    finally:
        _C.set_cpu_bf16_dot(previous)
    assert out.dtype == torch.bfloat16
    want = reference(x, dtype=torch.bfloat16)
    peer = torch.stack([torch_newton_schulz(m, COEFFS, 5, 1e-7) for m in x.reshape(-1, *shape[-2:])]).reshape(shape)
    ours, theirs = rel_err(out, want), rel_err(peer, want)
    assert ours <= 1.25 * theirs + 2e-3, (ours, theirs)
    assert rel_err(out, peer.double()) <= 3e-2


def test_orthogonalises():
    torch.manual_seed(0)
    x = torch.randn(64, 128)
    out = newton_schulz(x, steps=10, coefficients=(1.5, -0.5, 0.0), compute_dtype=torch.float32)
    # The cubic iteration converges to U V^T: its singular values approach 1.
    s = torch.linalg.svdvals(out)
    assert (s - 1).abs().max() < 0.05


def test_batch_is_independent_matrices():
    torch.manual_seed(1)
    x = torch.randn(5, 33, 70, dtype=torch.bfloat16)
    together = newton_schulz(x)
    alone = torch.stack([newton_schulz(m) for m in x])
    assert torch.equal(together, alone)


def test_non_contiguous_and_dtypes():
    torch.manual_seed(2)
    base = torch.randn(3, 80, 50)
    x = base.transpose(-1, -2)[:, ::2]  # [3, 25, 80], strided both ways
    got = newton_schulz(x, compute_dtype=torch.float32)
    assert torch.allclose(got, newton_schulz(x.contiguous(), compute_dtype=torch.float32))
    want = reference(x)
    assert (got.double() - want).abs().max().item() <= 2e-5
    half = newton_schulz(x.half(), compute_dtype=torch.float32)
    assert (half.double() - reference(x.half())).abs().max().item() <= 2e-5


def test_steps_zero_is_normalisation_and_zero_matrix():
    torch.manual_seed(3)
    x = torch.randn(2, 6, 4)
    got = newton_schulz(x, steps=0, compute_dtype=torch.float32)
    assert torch.allclose(got.double(), x.double() / x.double().norm(dim=(-2, -1), keepdim=True), atol=1e-7)
    z = newton_schulz(torch.zeros(3, 5), compute_dtype=torch.float32)
    assert torch.equal(z, torch.zeros(3, 5))


def test_zero_size():
    for shape in [(0, 4, 5), (3, 0, 5), (3, 4, 0)]:
        out = newton_schulz(torch.randn(shape))
        assert out.shape == shape and out.dtype == torch.bfloat16


def test_bad_arguments():
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        newton_schulz(torch.randn(4))
    with pytest.raises(ValueError, match="steps"):
        newton_schulz(x, steps=-1)
    with pytest.raises(ValueError, match="steps"):
        newton_schulz(x, steps=100)
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz(x, coefficients=(1.0, 2.0))
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz(x, coefficients=(1.0, float("nan"), 2.0))
    with pytest.raises(ValueError, match="eps"):
        newton_schulz(x, eps=-1.0)
    with pytest.raises(TypeError, match="compute_dtype"):
        newton_schulz(x, compute_dtype=torch.float16)
    with pytest.raises(TypeError, match="x has dtype int64"):
        newton_schulz(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        newton_schulz([[1.0]])


def test_opcheck_and_fake():
    torch.manual_seed(4)
    for args in [(torch.randn(3, 20, 12), 5, list(COEFFS), 1e-7, torch.bfloat16),
                 (torch.randn(12, 20), 2, list(COEFFS), 1e-7, torch.float32)]:
        torch.library.opcheck(torch.ops.zaya_rt.newton_schulz, args)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = newton_schulz(torch.empty(4, 30, 10))
    assert out.shape == (4, 30, 10) and out.dtype == torch.bfloat16

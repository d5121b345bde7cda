import contextlib
import importlib.util
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import zaya_rt  # noqa: E402
from zaya_rt import _C  # noqa: E402

CPU_ISAS = ("base", "avx2", "avx512")


def subprocess_env(**extra: str) -> dict:
    """Environment for a child Python that must import the same zaya_rt as this process (an installed wheel, the
    source tree with a dev build, or the sanitizer build) and the tests' helper modules."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(zaya_rt.__file__)))
    path = [package_parent, os.path.dirname(os.path.abspath(__file__))]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **extra)


def load_gpu_emu_params():
    """tools/gpu_emu/params.py (fills the emulated kernels' params structs by field name), loaded as a module."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "gpu_emu", "params.py")
    spec = importlib.util.spec_from_file_location("zaya_gpu_emu_params", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs a test once per CPU kernel build this machine supports (skips the others)."""
    previous = _C.cpu_isa()
    active = _C.set_cpu_isa(request.param)
    if active != request.param:
        _C.set_cpu_isa(previous)
        pytest.skip(f"CPU lacks {request.param}")
    yield active
    _C.set_cpu_isa(previous)


def tolerance(dtype: torch.dtype) -> float:
    """Max error relative to the output's scale, for a kernel vs the float64 reference."""
    return {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


# Marks a module as GPU tests that run only where a GPU kernel can: `pytestmark = NEEDS_GPU`.
NEEDS_GPU = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU visible to torch"),
    pytest.mark.skipif(_C.gpu_backend == "none", reason="zaya_rt._C was built without a GPU backend"),
]


def max_abs_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| in float64 (0 for empty tensors)."""
    return 0.0 if want.numel() == 0 else (got.double() - want.double()).abs().max().item()


def assert_close_to_peer(got, want, peer, what: str = "", *, scale: float | None = None, floor: float | None = None,
                         extra: float = 0.0, dtype: torch.dtype | None = None) -> None:
    """Flash-attention's tolerance rule: the kernel's max error against the float64 reference `want` is at most
    twice that of `peer`, the same computation composed of PyTorch ops in the kernel's precision, plus a small
    floor for cases the composition happens to get exact.

    got, peer: any float dtype, want's shape; want: float64. The floor is `floor` times `scale` (default:
    max |want|, at least 1e-6); `extra` is an absolute allowance the caller derives (e.g. a rounding the kernel
    does and the composition does not). The default floor is one ulp for the 16-bit types, the rounding of the
    output itself; 16 ulps (2e-6) for float32, whose sums the kernels block and order differently from PyTorch,
    so a composition that happens to be near exact is no yardstick there. `dtype` names the precision the
    kernel computed in where got's dtype is wider (e.g. a float32 gate gradient of a bf16 expert block)."""
    assert got.shape == want.shape and peer.shape == want.shape, (what, got.shape, peer.shape, want.shape)
    if want.numel() == 0:
        return
    if scale is None:
        scale = max(want.abs().max().item(), 1e-6)
    if floor is None:
        dtype = dtype or got.dtype
        floor = tolerance(dtype) if dtype == torch.float32 else torch.finfo(dtype).eps
    err, peer_err = max_abs_err(got, want), max_abs_err(peer, want)
    bound = 2 * peer_err + floor * scale + extra
    assert err <= bound, (f"{what}: error {err:.3g} > bound {bound:.3g} (same-precision PyTorch error "
                          f"{peer_err:.3g}, {dtype or got.dtype}, scale {scale:.3g})")


def assert_rejects(op, table: dict, case: str) -> None:
    """Bad-input tables: table[case] = (args, exception type, message pattern); op(*args) must raise that
    exception with a message matching the pattern (re.search)."""
    args, exc, pattern = table[case]
    with pytest.raises(exc, match=pattern):
        op(*args)


def assert_compiles_like_eager(fn, *args) -> None:
    """torch.compile(fn, fullgraph=True, backend="aot_eager") gives what fn gives on args."""
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), fn(*args))


@contextlib.contextmanager
def poisoned_empty(module):
    """Within the block, `module`'s torch.empty returns float tensors filled with NaN and uint8 ones (workspaces)
    with 0xFF (NaN bit patterns as float32), so a kernel that leaves an output element unwritten or reads scratch
    it did not write shows it."""
    real_empty = module.torch.empty

    def nan_empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.uint8:
            t.fill_(0xFF)
        return t

    module.torch.empty = nan_empty
    try:
        yield
    finally:
        module.torch.empty = real_empty

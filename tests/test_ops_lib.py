"""The shared op plumbing in zaya_rt.ops._lib: the direct CPU call (router, MoE experts) that skips the dispatcher
only when nothing the dispatcher provides is in play, and the per-thread CPU workspace."""

import threading

import pytest
import torch
import torch.utils._pytree
from torch.utils._python_dispatch import TorchDispatchMode

import zaya_rt
from zaya_rt.ops import _lib


def _router_args(T=5, D=12, R=8, E=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: 0.3 * torch.randn(*s, generator=gen)  # noqa: E731
    return (mk(T, D), mk(T, R), mk(R, D), mk(R), 1 + mk(R), 1 + mk(R), mk(R, R), mk(R), mk(R, R), mk(R), mk(E + 1, R),
            0.05 * torch.randn(E + 1, generator=gen), 1e-5)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _moe_args(T=6, D=16, I=8, E=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, E + 1, (T,), generator=gen)  # E = skip
    return (torch.randn(T, D, generator=gen), index, torch.rand(T, generator=gen),
            0.3 * torch.randn(E, 2 * I, D, generator=gen), 0.3 * torch.randn(E, D, I, generator=gen))


@pytest.mark.parametrize("name, make", [("zaya_router", _router_args), ("moe_experts", _moe_args)])
def test_dispatch_modes_still_see_the_op(name, make):
    args, op = make(), getattr(zaya_rt.ops, name)
    plain = op(*args)
    with _RecordOps() as mode:
        recorded = op(*args)
    assert any(name in o for o in mode.ops), mode.ops
    for a, b in zip(torch.utils._pytree.tree_leaves(plain), torch.utils._pytree.tree_leaves(recorded)):
        assert torch.equal(a, b)


def test_fake_tensors_and_parameters_take_the_right_path():
    args = _router_args()
    params = tuple(torch.nn.Parameter(a, requires_grad=False) if isinstance(a, torch.Tensor) and a.dim() == 2 and i > 1
                   else a for i, a in enumerate(args))
    for a, b in zip(zaya_rt.ops.zaya_router(*args), zaya_rt.ops.zaya_router(*params)):
        assert torch.equal(a, b)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        logits, gate, choice, z = zaya_rt.ops.zaya_router(*fake)
    assert logits.shape == (5, 4) and choice.dtype == torch.int64 and z.shape == (5, 8)


def test_gradients_still_flow_through_the_op():
    args = list(_router_args())
    args[2] = args[2].clone().requires_grad_()
    logits, gate, _, z = zaya_rt.ops.zaya_router(*args)
    (logits.sum() + gate.sum() + z.sum()).backward()
    assert args[2].grad is not None and torch.isfinite(args[2].grad).all() and args[2].grad.abs().sum() > 0


def test_cpu_workspace_is_reused_per_thread_and_capped():
    cpu = torch.device("cpu")
    a = _lib.workspace(1000, cpu)
    b = _lib.workspace(10, cpu)
    assert a.data_ptr() == b.data_ptr() and b.numel() >= 1000
    assert _lib.workspace(0, cpu).numel() >= 64
    big = _lib.SCRATCH_MAX_BYTES + 1
    assert _lib.workspace(big, cpu).numel() == big
    assert _lib.workspace(10, cpu).numel() < big  # the per-thread buffer did not grow past the cap
    other = []
    t = threading.Thread(target=lambda: other.append(_lib.workspace(1000, cpu).data_ptr()))
    t.start()
    t.join()
    assert other[0] != a.data_ptr()

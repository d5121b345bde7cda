"""The fused softmax-cross-entropy row kernel (ops/cross_entropy.py, csrc/cpu/cross_entropy.cpp) against a float64
reference (log_softmax in float64 of the same logits) on every CPU ISA build: per-row losses and the in-place
gradient (softmax - one-hot) * grad_scale in float32/bfloat16/float16, vocabularies that are not a multiple of 16,
zero and one rows, strided rows whose padding must stay untouched, extreme and non-finite logits, targets at
both ends, ignored rows, bad input, opcheck, and the LM-head loss routing its CPU chunks through the kernel."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_peer, assert_rejects
from torch.utils._python_dispatch import TorchDispatchMode

from zaya_rt.model.loss import linear_cross_entropy
from zaya_rt.ops.cross_entropy import cross_entropy_rows

IGNORE = -100
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _reference(logits: torch.Tensor, targets: torch.Tensor, scale: float):
    """(losses [n] float64, gradient [n, V] float64) of the logits as given, ignored rows zero."""
    x = logits.double()
    live = targets != IGNORE
    t = torch.where(live, targets, 0)
    logp = torch.log_softmax(x, dim=1)
    rows = torch.arange(x.shape[0])
    loss = torch.where(live, -logp[rows, t], 0.0)
    grad = logp.exp()
    grad[rows, t] -= 1.0
    grad = torch.where(live[:, None], grad * scale, 0.0)
    return loss, grad


def _peer(logits: torch.Tensor, targets: torch.Tensor, scale: float):
    """The same in PyTorch fp32 ops, the gradient rounded to the logits' dtype: the same-precision yardstick."""
    x = logits.float()
    live = targets != IGNORE
    loss = F.cross_entropy(x, targets, ignore_index=IGNORE, reduction="none")
    grad = torch.softmax(x, dim=1)
    grad[torch.arange(x.shape[0]), torch.where(live, targets, 0)] -= 1.0
    grad = torch.where(live[:, None], grad * scale, 0.0)
    return loss, grad.to(logits.dtype)


def _logits(n, V, dtype, seed, spread=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(n, V, generator=gen)).to(dtype)


def _targets(n, V, seed, ignored=()):
    gen = torch.Generator().manual_seed(seed + 1)
    t = torch.randint(0, V, (n,), generator=gen)
    if n > 0:
        t[0] = V - 1
    if n > 1:
        t[1] = 0
    for i in ignored:
        t[i] = IGNORE
    return t


def _check(logits_before, targets, scale, got_loss, got_grad):
    want_loss, want_grad = _reference(logits_before, targets, scale)
    peer_loss, peer_grad = _peer(logits_before, targets, scale)
    assert got_loss.dtype == torch.float32 and got_loss.shape == targets.shape
    assert got_grad.dtype == logits_before.dtype
    assert_close_to_peer(got_loss, want_loss, peer_loss, "loss", dtype=torch.float32)
    assert_close_to_peer(got_grad, want_grad, peer_grad, "gradient")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 17, 1000, 32768])
@pytest.mark.parametrize("n", [1, 5])
def test_matches_float64_reference(cpu_isa, dtype, V, n):
    logits = _logits(n, V, dtype, seed=V + n)
    targets = _targets(n, V, seed=V)
    before = logits.clone()
    losses = cross_entropy_rows(logits, targets, IGNORE, 0.37)
    _check(before, targets, 0.37, losses, logits)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows_leave_the_padding_alone(cpu_isa, dtype):
    n, V, pad = 6, 333, 29
    buf = _logits(n, V + pad, dtype, seed=11)
    sentinel = buf[:, V:].clone()
    logits = buf[:, :V]
    assert not logits.is_contiguous()
    targets = _targets(n, V, seed=3, ignored=(4,))
    before = logits.clone()
    losses = cross_entropy_rows(logits, targets, IGNORE, 1.0 / n)
    _check(before, targets, 1.0 / n, losses, logits)
    assert torch.equal(buf[:, V:].view(torch.int16 if dtype != torch.float32 else torch.int32),
                       sentinel.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ignored_rows_give_zero_loss_and_gradient(cpu_isa, dtype):
    logits = _logits(7, 100, dtype, seed=5)
    targets = _targets(7, 100, seed=5, ignored=(0, 3, 6))
    before = logits.clone()
    losses = cross_entropy_rows(logits, targets, IGNORE, 2.0)
    _check(before, targets, 2.0, losses, logits)
    assert (losses[[0, 3, 6]] == 0).all() and (logits[[0, 3, 6]] == 0).all()
    # ignore_index is any int: here a valid class id, so rows targeting 7 are ignored
    logits = _logits(4, 50, dtype, seed=6)
    losses = cross_entropy_rows(logits, torch.tensor([7, 1, 7, 49]), 7, 1.0)
    assert (losses[[0, 2]] == 0).all() and (logits[[0, 2]] == 0).all() and (losses[[1, 3]] > 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits(cpu_isa, dtype):
    """Large magnitudes (the row's max far above 88, the exp range) and -inf entries (masked vocabulary)."""
    big = 1e4 if dtype == torch.float16 else 1e5  # float16 tops out at 65504
    n, V = 4, 530
    logits = _logits(n, V, dtype, seed=8, spread=big)
    logits[1, ::3] = float("-inf")  # the target of row 1 stays finite
    logits[2, 40:] = float("-inf")
    targets = torch.tensor([V - 1, 1, 3, 0])
    logits[0, V - 1] = logits[0].max()  # a confident row: loss near 0
    before = logits.clone()
    losses = cross_entropy_rows(logits, targets, IGNORE, 1.0)
    _check(before, targets, 1.0, losses, logits)
    assert torch.isfinite(losses).all() and torch.isfinite(logits).all()
    assert (logits[1, ::3] == 0).all() and (logits[2, 40:] == 0).all()  # exp(-inf) is exactly 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows_give_nan_not_a_crash(cpu_isa, dtype):
    """A row of only -inf, or holding a NaN or +inf: NaN loss and an all-NaN gradient row, as the float64
    log_softmax gives; the other rows are unaffected."""
    n, V = 5, 70
    logits = _logits(n, V, dtype, seed=9)
    logits[0] = float("-inf")
    logits[2, 33] = float("nan")
    logits[3, 5] = float("inf")
    targets = _targets(n, V, seed=9)
    before = logits.clone()
    losses = cross_entropy_rows(logits, targets, IGNORE, 1.0)
    want_loss, _ = _reference(before, targets, 1.0)
    bad = [0, 2, 3]
    assert torch.equal(losses.isnan(), want_loss.isnan()) and losses[bad].isnan().all()
    assert logits[bad].isnan().all()
    good = [1, 4]
    _check(before[good], targets[good], 1.0, losses[good], logits[good])


def test_zero_rows_and_one_column(cpu_isa):
    logits = torch.empty(0, 9, dtype=torch.bfloat16)
    losses = cross_entropy_rows(logits, torch.empty(0, dtype=torch.int64))
    assert losses.shape == (0,) and losses.dtype == torch.float32
    one = torch.tensor([[3.5]])
    losses = cross_entropy_rows(one, torch.tensor([0]), IGNORE, 0.5)
    assert losses.item() == 0.0 and one.item() == 0.0  # softmax of one class is 1, minus the one-hot


def test_one_row_ignores_its_stride(cpu_isa):
    buf = _logits(3, 64, torch.float32, seed=12)
    row = buf[1:2, :40]
    before = row.clone()
    losses = cross_entropy_rows(row, torch.tensor([39]), IGNORE, 1.0)
    _check(before, torch.tensor([39]), 1.0, losses, row)
    assert torch.equal(buf[1, 40:], _logits(3, 64, torch.float32, seed=12)[1, 40:])


def test_opcheck():
    logits = _logits(5, 37, torch.bfloat16, seed=13)
    targets = _targets(5, 37, seed=13, ignored=(2,))
    torch.library.opcheck(torch.ops.zaya_rt.cross_entropy_rows.default, (logits, targets, IGNORE, 0.5))


_x, _t = torch.zeros(3, 8), torch.tensor([0, 1, 2])
BAD = {
    "float64 logits": ((_x.double(), _t), TypeError, "logits has dtype float64"),
    "int32 targets": ((_x, _t.int()), TypeError, "targets has dtype int32"),
    "1-d logits": ((_x[0], _t), ValueError, "logits must have 2 dimension"),
    "row count": ((_x, _t[:2]), ValueError, "targets has 2 entries for 3 logits rows"),
    "no column": ((_x[:, :0], _t), ValueError, "at least one column"),
    "inner stride": ((torch.zeros(8, 3).t(), _t), ValueError, "unit inner stride"),
    "target too large": ((_x, torch.tensor([0, 8, 1])), ValueError, r"targets\[1\] = 8 is outside \[0, 8\)"),
    "negative target": ((_x, torch.tensor([-1, 0, 1])), ValueError, r"targets\[0\] = -1"),
    "nan scale": ((_x, _t, IGNORE, float("nan")), ValueError, "grad_scale must be a finite number"),
    "not a tensor": (([[0.0]], _t), TypeError, "logits must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_rejected(case):
    assert_rejects(cross_entropy_rows, BAD, case)


def test_gpu_device_is_rejected_by_the_entry_point():
    from zaya_rt import _C
    from zaya_rt.ops.cross_entropy import cross_entropy_rows_params

    p = cross_entropy_rows_params(_x, _t, torch.empty(3), IGNORE, 1.0)
    with pytest.raises(ValueError, match="cross_entropy_rows: runs on the CPU only"):
        _C.cross_entropy_rows(p, 1, 0, 0)


class _OpsSeen(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lm_head_loss_runs_its_cpu_chunks_through_the_kernel(dtype):
    """linear_cross_entropy on the CPU: the kernel, no log_softmax, and (float16 has no test in test_loss.py)
    loss and gradients within the same-precision rule of F.cross_entropy's float64 value."""
    N, D, V = 40, 24, 301
    gen = torch.Generator().manual_seed(14)
    h = torch.randn(N, D, generator=gen).to(dtype).requires_grad_()
    w = (2 * D**-0.5 * torch.randn(V, D, generator=gen)).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[5:9] = IGNORE
    with _OpsSeen() as seen:
        loss = linear_cross_entropy(h, w, labels, chunk_size=16)
        loss.backward()
    assert "cross_entropy_rows" in seen.names and "_log_softmax" not in seen.names
    h64, w64 = (t.detach().double().requires_grad_() for t in (h, w))
    want = F.cross_entropy(F.linear(h64, w64), labels, ignore_index=IGNORE)
    want.backward()
    hp, wp = (t.detach().clone().requires_grad_() for t in (h, w))
    peer = F.cross_entropy(F.linear(hp, wp).float(), labels, ignore_index=IGNORE)
    peer.backward()
    assert_close_to_peer(loss.detach(), want.detach(), peer.detach(), "loss", dtype=dtype)
    assert_close_to_peer(h.grad, h64.grad, hp.grad, "d_hidden")
    assert_close_to_peer(w.grad, w64.grad, wp.grad, "d_weight")

"""Step tapes (runtime/step_tape.py), the CPU's recorded decode steps: a replay recomputes what the recorded
step computed from the current contents of the same tensors, through the same `_C` calls and torch ops, and
a step that cannot be replayed faithfully (a value read back to Python, a tensor made from Python data, a
workspace that grew) is refused after it has run to its end. The engine-level checks (taped decode steps give
the normal path's tokens and logits, and transformers') are in test_engine_decode_graph.py."""

import pytest
import torch

from zaya_rt.runtime import direct
from zaya_rt.runtime.step_tape import record_step

NAN = float("nan")


def _linear_step(x, b, linear):
    """A step mixing the three kinds of recorded work: a `_C` call (direct.Linear), functional torch ops, in-place
    ops and views, all reading the static input x."""

    def step():
        h = linear(x)                      # _C.packed_linear into the wrapper's kept buffer
        g = torch.nn.functional.silu(h.float())
        g.mul_(2.0).add_(b)                # in place
        top = g[:, :3]                     # a view
        return torch.cat([g, top.tanh()], dim=1)

    return step


def _reference(x, w, b):
    h = (x.double() @ w.double().t()).to(x.dtype).double()  # the GEMM's output is rounded to x's dtype
    g = torch.nn.functional.silu(h) * 2.0 + b.double()
    return torch.cat([g, g[:, :3].tanh()], dim=1).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3])
def test_replay_recomputes_from_the_inputs_current_contents(dtype, rows):
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(20, 16, generator=gen).to(dtype)
    b = torch.randn(20, generator=gen)
    ws = direct.Workspace()
    linear = direct.Linear(w, None, ws)
    x = torch.randn(rows, 16, generator=gen).to(dtype)
    step = _linear_step(x, b, linear)
    step()  # warm-up: the wrapper builds its params and output buffer
    tape, out = record_step(step, ws)
    assert len(tape) >= 4
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, _reference(x, w, b), **tol)
    for trial in range(3):
        x.copy_(torch.randn(rows, 16, generator=gen).to(dtype))
        b.copy_(torch.randn(20, generator=gen))
        out.fill_(NAN)  # poisoned: the replay must write every element
        tape.replay()
        torch.testing.assert_close(out, _reference(x, w, b), **tol)


def test_replay_reruns_in_place_writes_into_shared_state():
    """An index_copy_ into a persistent tensor (like the CCA state) runs again on every replay."""
    state = torch.zeros(4, 3)
    rows = torch.tensor([2, 0])
    new = torch.randn(2, 3)
    ws = direct.Workspace()

    def step():
        cur = state.index_select(0, rows)
        state.index_copy_(0, rows, cur + new)
        return cur.sum(1)

    step()
    tape, out = record_step(step, ws)
    expect = state.clone()
    for _ in range(2):
        expect[[2, 0]] += new
        tape.replay()
    assert torch.equal(state, expect)
    assert torch.equal(out, (expect[[2, 0]] - new).sum(1))


def test_a_value_read_back_to_python_is_refused_after_the_step_ran():
    state = torch.zeros(3)
    ws = direct.Workspace()

    def step():
        state.add_(1.0)
        if float(state.sum()) > 0:  # a Python decision on tensor data: a replay could not repeat it
            state.mul_(2.0)
        return state

    with pytest.raises(RuntimeError, match="returns a value to Python"):
        record_step(step, ws)
    assert torch.equal(state, torch.full((3,), 2.0))  # the step still ran to its end


def test_a_tensor_made_from_python_data_is_refused():
    ws = direct.Workspace()
    data = [1.0, 2.0, 3.0]

    def step():
        return torch.tensor(data) * 2

    with pytest.raises(RuntimeError, match="Python data"):
        record_step(step, ws)


def test_a_workspace_that_grows_during_recording_is_refused():
    ws = direct.Workspace()
    w = torch.randn(40, 24)
    linear = direct.Linear(w, None, ws)
    x = torch.randn(2, 24)

    def step():
        ws.get(ws.buffer.numel() + 4096)  # stands in for a call needing more scratch than the warm-up did
        return linear(x)

    step()
    with pytest.raises(RuntimeError, match="workspace grew"):
        record_step(step, ws)
    assert direct.recording() is None  # recording stopped despite the refusal


def test_a_failing_step_stops_recording():
    ws = direct.Workspace()

    def step():
        raise ValueError("bad slot")

    with pytest.raises(ValueError, match="bad slot"):
        record_step(step, ws)
    assert direct.recording() is None

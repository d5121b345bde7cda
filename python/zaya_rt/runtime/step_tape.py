"""Recorded decode steps on the CPU: what a CUDA graph is to a GPU step (SPEC section 8).

`record_step(step)` runs `step()` once and records, in order, every `_C` entry point the runtime's direct calls
make (`runtime.direct`: a copy of the params, and the buffers they point into) and every torch op around them
(through a `TorchDispatchMode`). `StepTape.replay()` then runs the same work on the same tensors with none of
the Python that produced it (the model's modules, the kernel wrappers, the argument checks):
  - a `_C` call runs again with its copied params;
  - an op that writes into an argument (in place or out=) runs again on the same tensors;
  - an op that returns new values runs again and its result is copied into the tensor it returned when recorded,
    which is what every later recorded call reads;
  - views and allocations are not rerun: the recorded tensors (and their memory) are reused.
The tape keeps every tensor it touched alive, so the raw addresses in the copied params stay valid.

A step can be recorded when everything it reads from step to step sits in tensors that stay put (the static
buffers of `DecodeGraphs`, the weights, the cache) and no Python decision in it depends on tensor values: the
pure decode step of `DecodeGraphs` is built that way for CUDA graphs. A tensor made from Python data inside the
step (`torch.tensor(...)`) is a constant of the tape, so recording refuses one with more than one element.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from zaya_rt.runtime import direct

_ALLOCATIONS = {
    torch.ops.aten.empty.memory_format, torch.ops.aten.empty_like.default, torch.ops.aten.empty_strided.default,
    torch.ops.aten.new_empty.default, torch.ops.aten.new_empty_strided.default,
}


class StepTape:
    """The calls of one recorded step; `replay()` runs them again."""

    def __init__(self) -> None:
        self._calls: list[Callable[[], object]] = []
        self._keep: list[object] = []  # everything the calls' raw addresses point into
        self.error: str | None = None  # why the recorded step cannot be replayed, if it cannot

    def __len__(self) -> int:
        return len(self._calls)

    def replay(self) -> None:
        """Runs the recorded calls in order (exceptions of a `_C` entry, e.g. a bad slot, propagate)."""
        for call in self._calls:
            call()

    # -- recording ----------------------------------------------------------------------------------------------
    def add_entry(self, entry, params, keep: tuple) -> None:
        """A `_C` entry point called on the CPU with `params`; keep: the tensors its addresses point into that
        the tape does not otherwise hold (kernel outputs kept by the direct wrappers, the workspace)."""
        copied = type(params)()
        for name in type(params).fields:
            setattr(copied, name, getattr(params, name))
        self._calls.append(functools.partial(entry, copied, 0, 0, 0))
        self._keep.append(keep)

    def add_op(self, func, args, kwargs, out) -> None:
        """A torch op `func(*args, **kwargs)` that returned `out` when recorded."""
        self._keep.append((args, kwargs, out))
        schema = func._schema
        if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            self._calls.append(functools.partial(func, *args, **kwargs))  # writes into its arguments
            return
        if func in _ALLOCATIONS or any(r.alias_info is not None for r in schema.returns):
            if func is torch.ops.aten.lift_fresh.default and args[0].numel() > 1:
                self._refuse("a tensor made from Python data inside the step would be a constant of the tape")
            return  # a view or fresh memory: the recorded tensor is reused
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if not all(isinstance(t, torch.Tensor) for t in outs):
            self._refuse(f"{func} returns a value to Python")
            return

        def rerun(func=func, args=args, kwargs=kwargs, outs=outs):
            fresh = func(*args, **kwargs)
            for dst, src in zip(outs, fresh if isinstance(fresh, (tuple, list)) else (fresh,)):
                dst.copy_(src)

        self._calls.append(rerun)

    def _refuse(self, why: str) -> None:
        """Marks the tape unreplayable (the step being recorded still runs to its end)."""
        if self.error is None:
            self.error = why


class _Recorder(TorchDispatchMode):
    def __init__(self, tape: StepTape) -> None:
        super().__init__()
        self.tape = tape

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.tape.add_op(func, args, kwargs, out)
        return out


def record_step(step: Callable[[], torch.Tensor], workspace: direct.Workspace) -> tuple[StepTape, torch.Tensor]:
    """(tape, output): runs step() once, recording it. The step's `_C` calls must all go through
    `runtime.direct` (whose shared scratch is `workspace`); the workspace must not grow during the step (run the
    step once before recording so that it has grown). Raises RuntimeError, after the step has run to its end, when
    it cannot be replayed (a value read back to Python, a tensor made from Python data, a workspace that grew)."""
    tape = StepTape()
    before = workspace.buffer
    direct.start_recording(tape)
    try:
        with _Recorder(tape):
            out = step()
    finally:
        direct.stop_recording()
    if workspace.buffer is not before:
        tape._refuse("the direct calls' workspace grew while the step was recorded")
    if tape.error is not None:
        raise RuntimeError(f"the step cannot be replayed: {tape.error}")
    tape._keep.append(workspace.buffer)
    return tape, out

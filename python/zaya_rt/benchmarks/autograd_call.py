"""Forward + backward as one zero-argument callable, for the fwd_bwd benchmark cases (ours and the peer alike)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def fwd_bwd_call(forward: Callable[..., object], inputs: Sequence[torch.Tensor | None], seed: int = 0,
                 frozen: Sequence[int] = ()) -> Callable[[], tuple]:
    """A callable running forward(*leaves) and the gradients of its float outputs with respect to every float input
    (None inputs pass through; inputs at the `frozen` positions take no gradient).

    inputs are detached into leaves once; each output's incoming gradient is drawn once (seeded, in the output's
    shape and dtype) on the first call and reused, so ours and a peer given the same seed see the same gradients.
    Runs with autograd on even under the harness's inference mode. Returns the input gradients.
    """
    leaves = [None if t is None else t.detach().requires_grad_(t.is_floating_point() and i not in frozen)
              for i, t in enumerate(inputs)]
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    grads_out: list[torch.Tensor] = []

    def run():
        with torch.inference_mode(False), torch.enable_grad():
            outs = forward(*leaves)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
            if not grads_out:
                gen = torch.Generator().manual_seed(seed)
                grads_out.extend(torch.randn(o.shape, generator=gen).to(device=o.device, dtype=o.dtype) for o in diff)
            return torch.autograd.grad(diff, wanted, grads_out, allow_unused=True)

    return run

"""Router balancing (SPEC section 7): a PID-like controller of each layer's balancing biases.

Every step, per layer, the load fraction f_e of each class over the global batch (all-reduced across ranks when
torch.distributed is initialised) gives the "gradient" f_e - target_e, which drives that layer's bias through its
own AdamW: an overloaded expert's bias goes down, an idle one's goes up. Experts share the non-skip traffic
uniformly; the skip class has its own target, or is left alone when none is given. The biases only steer the
argmax choice (no gradient flows through them), so this controller is the only thing that moves them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist


class RouterBalancer:
    """Drives `biases` (one fp32 tensor [E + 1] per layer, updated in place) towards uniform expert load.

    lr, betas, eps, weight_decay: the AdamW of each layer's bias. skip_target: wanted fraction of skipped tokens
    (None leaves the skip bias as it is). process_group: all-reduce group for the loads (default: the world, when
    torch.distributed is initialised).
    """

    def __init__(
        self,
        biases: Sequence[torch.Tensor],
        *,
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        skip_target: float | None = None,
        process_group=None,
    ) -> None:
        biases = list(biases)
        if not biases:
            raise ValueError("RouterBalancer needs at least one layer's balancing biases")
        for i, b in enumerate(biases):
            if not isinstance(b, torch.Tensor) or b.dim() != 1 or b.shape[0] < 2 or b.dtype != torch.float32:
                raise ValueError(f"biases[{i}] must be a 1-D float32 tensor of E + 1 >= 2 entries")
        if skip_target is not None and not 0.0 <= skip_target < 1.0:
            raise ValueError(f"skip_target must lie in [0, 1), got {skip_target}")
        self.biases = biases
        self.skip_target = skip_target
        self.process_group = process_group
        self.optimizers = [
            torch.optim.AdamW([b], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay) for b in biases
        ]

    @classmethod
    def for_model(cls, model: torch.nn.Module, **kwargs) -> "RouterBalancer":
        """A balancer over every ZAYA router's `balancing_biases` in `model`, in layer order."""
        biases = [m.balancing_biases for m in model.modules() if hasattr(m, "balancing_biases")]
        return cls(biases, **kwargs)

    def targets(self, num_classes: int, device: torch.device) -> torch.Tensor:
        """Wanted load fraction per class [E + 1] (the skip target last; NaN when the skip class is free)."""
        experts = num_classes - 1
        skip = 0.0 if self.skip_target is None else self.skip_target
        t = torch.full((num_classes,), (1.0 - skip) / experts, device=device)
        t[-1] = float("nan") if self.skip_target is None else skip
        return t

    @torch.no_grad()
    def step(self, loads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Updates every layer's bias from its token counts per class ([E + 1] each, this rank's share).

        Returns the global load fractions per layer. Without a skip target, the experts' fractions are taken
        among non-skipped tokens and the skip bias does not move."""
        if len(loads) != len(self.biases):
            raise ValueError(f"got loads for {len(loads)} layers, the balancer drives {len(self.biases)}")
        counts = torch.stack([torch.as_tensor(c, dtype=torch.float64).to(self.biases[0].device) for c in loads])
        if counts.shape[1] != self.biases[0].shape[0]:
            raise ValueError(f"loads have {counts.shape[1]} classes, biases {self.biases[0].shape[0]}")
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts, group=self.process_group)
        fractions = []
        for bias, optimizer, c in zip(self.biases, self.optimizers, counts):
            if self.skip_target is None:
                f = c / c[:-1].sum().clamp_min(1.0)
                grad = f - 1.0 / (c.shape[0] - 1)
                grad[-1] = 0.0
            else:
                f = c / c.sum().clamp_min(1.0)
                grad = f - self.targets(c.shape[0], c.device).to(f.dtype)
            bias.grad = grad.to(bias.dtype)
            optimizer.step()
            bias.grad = None
            fractions.append(f.to(torch.float32))
        return fractions

    def state_dict(self) -> dict:
        """Biases and optimizer states, for trainer checkpoints."""
        return {
            "biases": [b.detach().clone() for b in self.biases],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "skip_target": self.skip_target,
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["biases"]) != len(self.biases):
            raise ValueError(f"state has {len(state['biases'])} layers, the balancer drives {len(self.biases)}")
        with torch.no_grad():
            for b, saved in zip(self.biases, state["biases"]):
                if saved.shape != b.shape:
                    raise ValueError(f"saved bias of shape {tuple(saved.shape)} for a bias of {tuple(b.shape)}")
                b.copy_(saved)
        for o, saved in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(saved)
        self.skip_target = state["skip_target"]


@contextlib.contextmanager
def collect_router_loads(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, counts each router's choices per class during forwards; yields the list of counts
    ([E + 1] int64 per layer, summed over the forwards in the block)."""
    routers = [m for m in model.modules() if hasattr(m, "balancing_biases")]
    loads = [torch.zeros(r.balancing_biases.shape[0], dtype=torch.int64, device=r.balancing_biases.device)
             for r in routers]

    def hook(index):
        def record(module, args, output):
            choice = output[2]
            loads[index] += torch.bincount(choice.reshape(-1), minlength=loads[index].shape[0])
        return record

    handles = [r.register_forward_hook(hook(i)) for i, r in enumerate(routers)]
    try:
        yield loads
    finally:
        for h in handles:
            h.remove()

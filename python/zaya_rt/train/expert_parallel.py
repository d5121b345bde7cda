"""Expert parallelism (SPEC section 7): each MoE layer's E experts split over the k ranks of an expert-parallel
group, E / k consecutive experts per rank; tokens travel to their expert's rank and back with
`all_to_all_single` after a count exchange. Skip tokens never leave their rank.

Legend: N token rows on this rank, D hidden, E experts of the layer, L = E / k experts on this rank, M rows
received for this rank's experts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd

from zaya_rt.model.modeling import ZayaExperts, ZayaSparseMoeBlock


def check_expert_parallel(expert_parallel: int, world_size: int, num_experts: int) -> None:
    """ValueError unless expert_parallel divides both the world size and the expert count."""
    if world_size % expert_parallel:
        raise ValueError(f"config: parallel.expert_parallel ({expert_parallel}) must divide the world size "
                         f"({world_size})")
    if num_experts % expert_parallel:
        raise ValueError(f"config: parallel.expert_parallel ({expert_parallel}) must divide model.num_experts "
                         f"({num_experts})")


class ExpertParallelRunner:
    """The MoE block's `experts_runner` under expert parallelism: (experts, x [N, D], choice [N] int (E = skip),
    gate [N]) -> y [N, D] (zero rows for skipped tokens, as the local kernel gives them).

    `experts` holds this rank's slice: experts ep_rank * L ... ep_rank * L + L - 1 of the layer. Every rank of the
    group calls it once per layer and forward (the exchanges are collective); gradients flow back through the
    same exchanges."""

    def __init__(self, group, num_experts: int) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.num_experts = num_experts
        self.local = num_experts // self.size

    def __call__(self, experts: nn.Module, x_ND: torch.Tensor, choice_N: torch.Tensor, gate_N: torch.Tensor):
        E, L, k = self.num_experts, self.local, self.size
        routed = torch.nonzero(choice_N < E).squeeze(1)
        order = torch.argsort(choice_N[routed], stable=True)
        rows = routed[order]  # routed rows grouped by expert, hence by destination rank
        choice = choice_N[rows]
        send_counts = torch.bincount(torch.div(choice, L, rounding_mode="floor"), minlength=k)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send, recv = send_counts.tolist(), recv_counts.tolist()
        M = sum(recv)

        def exchange(t: torch.Tensor, out_splits, in_splits) -> torch.Tensor:
            return all_to_all_single_autograd(t.contiguous(), out_splits, in_splits, self.group)

        x_MD = exchange(x_ND[rows], recv, send)
        gate_M = exchange(gate_N[rows], recv, send)
        with torch.no_grad():
            local_choice = torch.empty(M, dtype=choice.dtype, device=choice.device)
            dist.all_to_all_single(local_choice, (choice % L).contiguous(), recv,
                                   send, group=self.group)
        y_MD = experts(x_MD, local_choice, gate_M)
        y_rows = exchange(y_MD, send, recv)
        y_ND = x_ND.new_zeros(x_ND.shape[0], y_rows.shape[1], dtype=y_rows.dtype)
        return y_ND.index_copy(0, rows, y_rows)


def split_experts(model: nn.Module, group) -> None:
    """Keeps only this rank's slice of every ZayaExperts stack (parameters [E, ...] -> [L, ...]) and installs an
    ExpertParallelRunner on every MoE block. Call on a model whose weights are the same on every rank."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    for block in model.modules():
        if not isinstance(block, ZayaSparseMoeBlock):
            continue
        experts: ZayaExperts = block.experts
        E = experts.gate_up_proj.shape[0]
        L = E // size
        with torch.no_grad():
            for name in ("gate_up_proj", "down_proj"):
                full = getattr(experts, name)
                setattr(experts, name, nn.Parameter(full[rank * L:(rank + 1) * L].clone()))
        block.experts_runner = ExpertParallelRunner(group, E)

"""Muon over FSDP2-sharded weights (SPEC section 7): Newton-Schulz needs whole matrices.

A 2-D weight sharded by rows (FSDP2's Shard(0)) has its update gathered to one owner rank, orthogonalised
there and scattered back; owners go round-robin over the ranks, so every rank orthogonalises its share of the
matrices at the same time. A 3-D expert stack [E, A, B] is sharded along E, so each rank already holds whole
expert matrices (its expert-parallel slice, split further over its "dp" column): those are orthogonalised in
place with no communication. The update rule is Muon's (muon.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

from zaya_rt.train.muon import Muon, ns_update


class DistributedMuon(Muon):
    """Muon whose parameters may be DTensors sharded on dim 0 (FSDP2); plain tensors are treated as whole."""

    def orthogonalise(self, items):
        out: list[torch.Tensor | None] = [None] * len(items)
        matrices = []  # (item index, parameter, local update, group) of the sharded 2-D weights
        for i, (p, update, group) in enumerate(items):
            if isinstance(p, DTensor) and p.dim() == 2 and p.device_mesh.size() > 1:
                if p.placements != (Shard(0),):
                    raise ValueError(f"DistributedMuon: expected a Shard(0) weight, got {p.placements}")
                matrices.append((i, p, update, group))
            else:
                out[i] = ns_update(update, group) if update.numel() else update.clone()
        self._gather_orthogonalise_scatter(matrices, out)
        return out

    def _gather_orthogonalise_scatter(self, matrices, out) -> None:
        gathers, scatters = [], []
        for n, (i, p, update, group) in enumerate(matrices):
            pg = p.device_mesh.get_group()
            size, rank = dist.get_world_size(pg), dist.get_rank(pg)
            owner = n % size
            rows = -(-p.shape[0] // size)  # FSDP2 chunk size; the last shards may be short or empty
            padded = update.new_zeros((rows, p.shape[1]))
            padded[: update.shape[0]] = update
            parts = [torch.empty_like(padded) for _ in range(size)] if rank == owner else None
            work = dist.gather(padded, parts, group_dst=owner, group=pg, async_op=True)
            gathers.append((work, parts, padded, pg, owner, rank, rows))
        for (i, p, update, group), (work, parts, padded, pg, owner, rank, rows) in zip(matrices, gathers):
            work.wait()
            pieces = None
            if rank == owner:
                ortho = ns_update(torch.cat(parts)[: p.shape[0]], group)
                ortho = torch.cat([ortho, ortho.new_zeros((rows * len(parts) - p.shape[0], p.shape[1]))])
                pieces = list(ortho.split(rows))
            mine = padded.new_empty(padded.shape, dtype=group["ns_dtype"])
            scatters.append((dist.scatter(mine, pieces, group_src=owner, group=pg, async_op=True), mine))
        for (i, p, update, group), (work, mine) in zip(matrices, scatters):
            work.wait()
            out[i] = mine[: update.shape[0]]

"""The trainer on torch.distributed (SPEC section 7): process group, device meshes, FSDP2 sharding, expert
parallelism, each rank's share of the global batch, and the global gradient norm.

Launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU. Ranks form a ("ep", "dp") mesh of k x world / k
(rank = dp_index * k + ep_index): the k ranks of an "ep" row split the experts, the "dp" columns hold copies of
an expert slice. Everything but the experts is FSDP2-sharded over all ranks; an expert slice is FSDP2-sharded
over its "dp" column. Every rank reads a different share of each step's windows, so with gradients summed (not
averaged) and the loss divided by the step's global target count, results do not depend on the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, Shard

from zaya_rt.model.modeling import ZayaExperts
from zaya_rt.train.expert_parallel import check_expert_parallel, split_experts


@dataclass
class Parallel:
    """This process's place in a distributed run. world: 1-D mesh of all ranks (FSDP of the dense weights);
    ep_dp: 2-D ("ep", "dp") mesh (the experts); device: where this rank computes."""

    rank: int
    world_size: int
    expert_parallel: int
    world: DeviceMesh
    ep_dp: DeviceMesh
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True under torchrun (or any launcher setting WORLD_SIZE > 1) or when a process group already exists."""
    return (dist.is_available() and dist.is_initialized()) or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_parallel(expert_parallel: int, num_experts: int) -> Parallel | None:
    """Joins the process group (NCCL when CUDA is present, else gloo) and builds the meshes; None in a single
    process that is not launched distributed (expert_parallel must then be 1). Raises ValueError when
    expert_parallel does not divide the world size or the expert count."""
    if not launched_distributed():
        check_expert_parallel(expert_parallel, 1, num_experts)
        return None
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    check_expert_parallel(expert_parallel, world_size, num_experts)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    kind = device.type
    world = init_device_mesh(kind, (world_size,), mesh_dim_names=("world",))
    k = expert_parallel
    layout = torch.arange(world_size).reshape(world_size // k, k).T  # [ep, dp]: rank = dp * k + ep
    ep_dp = DeviceMesh(kind, layout, mesh_dim_names=("ep", "dp"))
    return Parallel(rank, world_size, k, world, ep_dp, device)


def shard_model(model: nn.Module, par: Parallel, compute_dtype: torch.dtype) -> None:
    """Expert parallelism (when k > 1), then FSDP2: each expert stack over its "dp" column, each decoder layer
    (with the next layer's input norm, which its fused residual-norm uses) and the root over all ranks; fp32
    sharded weights, `compute_dtype` for the forward, fp32 gradient reduction summed over ranks."""
    if par.expert_parallel > 1:
        split_experts(model, par.ep_dp["ep"].get_group())
    policy = MixedPrecisionPolicy(param_dtype=None if compute_dtype == torch.float32 else compute_dtype,
                                  reduce_dtype=torch.float32)
    units = []
    for module in model.modules():
        if isinstance(module, ZayaExperts):
            units.append(fully_shard(module, mesh=par.ep_dp["dp"], mp_policy=policy))
    layers = list(model.model.layers)
    # Layer 0's input norm runs before layer 0 as its own module; layer i > 0's is used by layer i - 1 only.
    units.append(fully_shard(layers[0].input_layernorm, mesh=par.world, mp_policy=policy))
    for i, layer in enumerate(layers):
        group = [layer] if i + 1 == len(layers) else [layer, layers[i + 1].input_layernorm]
        units.append(fully_shard(group, mesh=par.world, mp_policy=policy)[0])  # the group's modules share one state
    units.append(fully_shard(model, mesh=par.world, mp_policy=policy))
    # The trainer's step calls model.loss (the fused LM-head cross-entropy), not forward: FSDP must gather the
    # root's weights (embedding, head, final norm) around it too.
    register_fsdp_forward_method(model, "loss")
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)


def local_share(items: list, par: Parallel | None) -> list:
    """This rank's contiguous share of a step's windows (all of them in a single process)."""
    if par is None:
        return items
    n = len(items) // par.world_size
    return items[par.rank * n:(par.rank + 1) * n]


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The shard a DTensor holds on this rank; a plain tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def global_grad_norm(grads: list[torch.Tensor], par: Parallel | None) -> torch.Tensor:
    """The L2 norm of all gradients of the model (fp32 scalar). Every element lives on exactly one rank (FSDP2
    shards, expert slices), so the squared norms of the local shards add up over all ranks."""
    if par is None:
        return torch.nn.utils.get_total_norm(grads)
    local = [local_tensor(g).float() for g in grads]
    sq = sum((g.square().sum() for g in local), torch.zeros((), device=par.device))
    dist.all_reduce(sq)
    return sq.sqrt()


@torch.no_grad()
def clip_grads(grads: list[torch.Tensor], max_norm: float, par: Parallel | None) -> torch.Tensor:
    """Scales the gradients so their global norm is at most max_norm (torch's clip_grad_norm_ rule); returns the
    norm before clipping."""
    if par is None:
        return torch.nn.utils.clip_grad_norm_(grads, max_norm)
    norm = global_grad_norm([p.grad for p in grads], par)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in grads:
        local_tensor(p.grad).mul_(coef)
    return norm


def is_expert_stack(model: nn.Module) -> set[int]:
    """ids of the parameters of every ZayaExperts module (split over the "ep" ranks under expert parallelism)."""
    return {id(p) for m in model.modules() if isinstance(m, ZayaExperts) for p in m.parameters(recurse=False)}


def full_tensor(t: torch.Tensor, expert: bool, par: Parallel | None) -> torch.Tensor:
    """The whole model tensor on every rank (collective): FSDP2 shards gathered, expert slices gathered over
    "ep" too."""
    if par is None:
        return t
    whole = t.full_tensor() if isinstance(t, DTensor) else t
    if expert and par.expert_parallel > 1:
        out = whole.new_empty((whole.shape[0] * par.expert_parallel, *whole.shape[1:]))
        dist.all_gather_single(out, whole.contiguous(), group=par.ep_dp["ep"].get_group())
        whole = out
    return whole


def global_view(t: torch.Tensor, expert: bool, par: Parallel | None) -> torch.Tensor:
    """The tensor as a piece of the whole model's tensor: a DTensor with the global shape (plain tensors in a
    single process). FSDP2's DTensors already are; an expert slice (a DTensor over "dp" of shape [L, ...]) becomes
    a view over the ("ep", "dp") mesh of shape [E, ...], so checkpoints and gathers see the full stack."""
    if par is None or not expert or par.expert_parallel == 1:
        return t
    local = local_tensor(t)
    shape = (t.shape[0] * par.expert_parallel, *t.shape[1:])
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, par.ep_dp, [Shard(0), Shard(0)], run_check=False, shape=shape, stride=stride)

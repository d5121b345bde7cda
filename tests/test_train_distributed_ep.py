"""The expert-parallel token exchange on 2 gloo ranks (spawned processes), against the local MoE op on the whole
expert stack: outputs and gradients match, only routed tokens travel (skip tokens stay home), and a rank whose
tokens all skip, or that receives none, still takes part."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zaya_rt import ops

E, D, I = 4, 16, 8  # noqa: E741


def _tokens(rank: int, case: str):
    """Each rank's x [N, D], choice [N] (E = skip), gate [N]; fresh seeded values, some skips."""
    gen = torch.Generator().manual_seed(100 + rank)
    n = {"mixed": 23 + 6 * rank, "all_skip": 9}[case]
    x = torch.randn(n, D, generator=gen, dtype=torch.float32)
    choice = torch.randint(0, E + 1, (n,), generator=gen)
    if case == "all_skip" and rank == 1:
        choice.fill_(E)
    if case == "all_skip" and rank == 0:
        choice = torch.where(choice < E, choice % 2, choice)  # only rank 0's experts get tokens
    gate = torch.rand(n, generator=gen, dtype=torch.float32)
    return x, choice, gate


def _worker(rank: int, init: str, case: str, out_dir: str) -> None:
    from zaya_rt.train.expert_parallel import ExpertParallelRunner

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    gen = torch.Generator().manual_seed(7)
    gate_up = torch.randn(E, 2 * I, D, generator=gen, dtype=torch.float32) * 0.3
    down = torch.randn(E, D, I, generator=gen, dtype=torch.float32) * 0.3
    L = E // 2
    received = []

    class Slice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(gate_up[rank * L:(rank + 1) * L].clone())
            self.down_proj = torch.nn.Parameter(down[rank * L:(rank + 1) * L].clone())

        def forward(self, x, choice, gate):
            received.append(choice.clone())
            return ops.moe_experts(x, choice, gate, self.gate_up_proj, self.down_proj)

    x, choice, gate = _tokens(rank, case)
    x.requires_grad_(True)
    gate.requires_grad_(True)
    experts = Slice()
    y = ExpertParallelRunner(dist.group.WORLD, E)(experts, x, choice, gate)
    y.backward(torch.ones_like(y))
    torch.save({"y": y.detach(), "dx": x.grad, "dgate": gate.grad, "received": received[0],
                "dgate_up": experts.gate_up_proj.grad, "ddown": experts.down_proj.grad},
               os.path.join(out_dir, f"{case}-{rank}.pt"))
    dist.destroy_process_group()


def _reference(rank: int, case: str, gate_up, down):
    x, choice, gate = _tokens(rank, case)
    x.requires_grad_(True)
    gate.requires_grad_(True)
    y = ops.moe_experts(x, choice, gate, gate_up, down)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad, gate.grad, choice


def _run(tmp_path, case: str):
    init = f"file://{tmp_path / f'{case}.store'}"
    mp.spawn(_worker, args=(init, case, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"{case}-{r}.pt") for r in range(2)]
    gen = torch.Generator().manual_seed(7)
    gate_up = (torch.randn(E, 2 * I, D, generator=gen, dtype=torch.float32) * 0.3).requires_grad_(True)
    down = (torch.randn(E, D, I, generator=gen, dtype=torch.float32) * 0.3).requires_grad_(True)
    refs = [_reference(r, case, gate_up, down) for r in range(2)]
    for r in range(2):
        y, dx, dgate, _ = refs[r]
        torch.testing.assert_close(got[r]["y"], y)
        torch.testing.assert_close(got[r]["dx"], dx)
        torch.testing.assert_close(got[r]["dgate"], dgate)
        # Rank r holds experts 2r, 2r + 1: it receives exactly the tokens routed to them, as local ids 0, 1.
        routed = torch.cat([c[(c >= 2 * r) & (c < 2 * r + 2)] for *_, c in refs]) - 2 * r
        assert sorted(got[r]["received"].tolist()) == sorted(routed.tolist())
    torch.testing.assert_close(torch.cat([got[0]["dgate_up"], got[1]["dgate_up"]]), gate_up.grad)
    torch.testing.assert_close(torch.cat([got[0]["ddown"], got[1]["ddown"]]), down.grad)


def test_exchange_matches_the_local_op_and_sends_routed_tokens_only(tmp_path):
    _run(tmp_path, "mixed")


def test_rank_with_only_skipped_tokens_and_rank_receiving_none(tmp_path):
    _run(tmp_path, "all_skip")

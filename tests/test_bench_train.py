"""`zaya-rt bench train` on a tiny model (no timing is checked): every side runs the same training step (their
first-step losses agree), each step leaves gradients, and the CLI rejects bad options clearly."""

import pytest
import torch

from zaya_rt import cli
from zaya_rt.benchmarks.train import IGNORE_INDEX, ours_step_fn, packed_batch, profile_table, run_train

TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=64, moe_intermediate_size=64, num_experts=4, router_hidden_size=16, max_position_embeddings=256)


def test_packed_batch_labels_are_next_tokens():
    ids_BT, ids_N, labels_N, cu = packed_batch(3, 5, 50, seed=0, device="cpu")
    assert torch.equal(ids_N, ids_BT.reshape(-1)) and cu.tolist() == [0, 5, 10, 15] and cu.dtype == torch.int32
    labels = labels_N.view(3, 5)
    assert torch.equal(labels[:, :-1], ids_BT[:, 1:]) and (labels[:, -1] == IGNORE_INDEX).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_side_computes_the_same_step(dtype):
    lines = []
    (result,) = run_train(config=TINY, sequences=2, seq_len=16, dtypes=(dtype,), repeats=1,
                          losses=("fused", "unfused"), peers=[("grouped_mm", "sdpa"), ("eager", "eager")],
                          log=lines.append)
    assert result.dtype == dtype and result.ours_s > 0 and result.peer_s > 0
    assert set(result.all_peers) == {"grouped_mm/sdpa", "eager/eager"} and result.peer_name in result.all_peers
    losses = list(result.first_losses.values())
    assert len(losses) == 4
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert max(losses) - min(losses) <= tol * max(losses)
    assert any(line.startswith("host: ") for line in lines)
    assert sum("-> " in line for line in lines) == 2  # one ratio line per form of our loss


def test_ours_step_leaves_gradients():
    from zaya_rt.benchmarks.e2e import _build

    _, ours = _build(TINY, "cpu", torch.float32, seed=0)
    _, ids, labels, cu = packed_batch(2, 8, TINY["vocab_size"], seed=1, device="cpu")
    loss = ours_step_fn(ours, ids, labels, cu)()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in ours.named_parameters() if "balancing" not in n)
    table = profile_table(ours_step_fn(ours, ids, labels, cu), row_limit=5)
    assert "Self CPU" in table and "aten::mm" in table  # --profile's table of the step's top ops


@pytest.mark.parametrize("argv,needle", [
    (["--dtypes", "float16"], "--dtypes"),
    (["--sequences", "0"], "--sequences"),
    (["--peers", "grouped_mm"], "--peers"),
])
def test_cli_rejects_bad_options(argv, needle, capsys):
    assert cli.main(["bench", "train", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_run_train_rejects_unknown_loss_form():
    with pytest.raises(ValueError, match="losses"):
        run_train(config=TINY, losses=("chunked",), log=lambda _: None)


def test_kept_moe_activations_step_matches_and_uses_the_kept_op():
    """The kept form (the model's default): the model's MoE blocks run moe_experts_keep, and the step's loss and
    gradients equal the recomputing step's (fp32, up to rounding order)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from zaya_rt.benchmarks.e2e import _build

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func._overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    _, ours = _build(TINY, "cpu", torch.float32, seed=0)
    _, ids, labels, cu = packed_batch(2, 8, TINY["vocab_size"], seed=3, device="cpu")
    runs = {}
    for keep in (False, True):
        with Ops() as seen:
            loss = ours_step_fn(ours, ids, labels, cu, keep_activations=keep)()
        assert ("moe_experts_keep" in seen.names) == keep
        runs[keep] = loss, {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}
    assert torch.allclose(runs[True][0], runs[False][0], rtol=1e-6)
    assert runs[True][1].keys() == runs[False][1].keys()
    for name, grad in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(m.keep_activations for m in ours.modules() if hasattr(m, "keep_activations"))  # the last step's

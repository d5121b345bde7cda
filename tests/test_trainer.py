"""zaya_rt.train.Trainer: learning on a structured corpus (Muon and AdamW), packed SFT loss on assistant tokens
only, router loads counted once under activation checkpointing, bf16 compute with fp32 masters, the final model
readable by zaya_rt.load and transformers, and config errors naming the key."""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

import zaya_rt
from train_helpers import raw_config, runs_corpus, to_toml, unigram_entropy
from zaya_rt import cli
from zaya_rt.train.config import parse_config
from zaya_rt.train.data import IGNORE_INDEX, ByteTokenizer, load_samples, pack_windows
from zaya_rt.train import Trainer
from zaya_rt.train.trainer import _batch


def _losses(out_dir) -> list[float]:
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "runs.jsonl"
    return path, runs_corpus(path)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """Final losses of Muon and AdamW runs of equal steps on the runs corpus (each run's metrics too)."""
    path, _ = corpus
    out = {}
    for optimizer in ("muon", "adamw"):
        out_dir = tmp_path_factory.mktemp(optimizer)
        trainer = Trainer(parse_config(raw_config(path, out_dir, optimizer=optimizer)), progress=False)
        final = trainer.run()
        out[optimizer] = (out_dir, final, trainer)
    return out


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_loss_falls_well_below_unigram_entropy(corpus, trained, optimizer):
    _, texts = corpus
    entropy = unigram_entropy(texts)
    out_dir, _, _ = trained[optimizer]
    losses = _losses(out_dir)
    assert len(losses) == 30
    final = sum(losses[-3:]) / 3
    print(f"{optimizer}: unigram entropy {entropy:.3f} nats, first loss {losses[0]:.3f}, mean of last 3 {final:.3f}")
    assert losses[0] > 0.9 * entropy  # it starts out knowing nothing
    assert final < 0.3 * entropy


def test_metrics_lines(trained):
    out_dir, _, trainer = trained["muon"]
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [m["step"] for m in lines] == list(range(1, 31))
    for m in lines:
        assert set(m) == {"step", "loss", "grad_norm", "lr", "tokens", "tokens_per_s", "router_load_entropy",
                          "skip_share"}
        assert m["grad_norm"] > 0 and m["tokens"] > 0 and m["tokens_per_s"] > 0
        assert 0.0 <= m["router_load_entropy"] <= 1.0 and 0.0 <= m["skip_share"] <= 1.0
    assert lines[0]["lr"] == pytest.approx(1e-2 / 3) and lines[10]["lr"] == pytest.approx(1e-2)
    assert lines[-1]["lr"] == pytest.approx(1e-3)


def test_final_model_loads_in_zaya_rt_and_transformers(trained):
    _, final, trainer = trained["muon"]
    ids = torch.tensor([list(b"abcdefghijklmnopqrstuvwxyzabc")])
    expected = trainer.final_model().eval()(ids)
    ours = zaya_rt.load(final).eval()(ids)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(final).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, expected.detach(), rtol=1e-4, atol=1e-4)
    # The model learned the runs: greedy continuation of a run follows the alphabet.
    assert bytes(zaya_rt.load(final).generate_greedy(ids[:, :10], 4)[0].tolist()) == b"klmn"


def _sft_corpus(path):
    chats = [
        [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "<think>2+3</think>5"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital of France?"},
         {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "and Italy?"},
         {"role": "assistant", "content": "Rome"}],
        [{"role": "user", "content": "spell cat"}, {"role": "assistant", "content": "c-a-t"}],
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "plain pretraining text in the mix"}) + "\n")
        for c in chats:
            f.write(json.dumps({"messages": c}) + "\n")
    return chats


def _assistant_targets(chat) -> list[int]:
    """Independently of data.py: the byte offsets (in the rendered chat) of assistant content and end markers."""
    text, targets = "", []
    for m in chat:
        text += f"<|{m['role']}|>\n"
        body = m["content"] + "<|end|>\n"
        if m["role"] == "assistant":
            targets += range(len(text.encode()), len(text.encode()) + len(body.encode()))
        text += body
    return targets


def test_packed_sft_loss_covers_assistant_tokens_only(tmp_path):
    data = tmp_path / "sft.jsonl"
    chats = _sft_corpus(data)
    samples, dropped = load_samples(data, ByteTokenizer(), window=512)
    windows = pack_windows(samples, 512)
    assert dropped == 0 and len(windows) == 1  # all four documents packed into one window
    (w,) = windows
    # Which positions carry loss: per document, exactly the assistant tokens (as targets of the previous one).
    docs = [w.input_ids[a:b] for a, b in zip(w.cu_seqlens[:-1].tolist(), w.cu_seqlens[1:].tolist())]
    labels = [w.labels[a:b] for a, b in zip(w.cu_seqlens[:-1].tolist(), w.cu_seqlens[1:].tolist())]
    by_text = {bytes(d.tolist()): lab for d, lab in zip(docs, labels)}
    for chat in chats:
        rendered = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in chat).encode()
        lab = by_text[rendered]
        carried = [i + 1 for i in range(len(rendered)) if lab[i] != IGNORE_INDEX]
        assert carried == [t for t in _assistant_targets(chat) if t > 0]
        assert all(lab[i] == rendered[i + 1] for i in range(len(rendered)) if lab[i] != IGNORE_INDEX)

    # The trainer's loss of step 1 is the per-document (unpacked) loss on exactly those tokens.
    raw = raw_config(data, tmp_path / "out", steps=1, batch_windows=1, warmup_steps=0, decay_steps=0)
    raw["data"]["window"] = 512
    trainer = Trainer(parse_config(raw), progress=False)
    reference = copy.deepcopy(trainer.model).eval()
    line = trainer.train_step(1)
    total, count = 0.0, 0
    for chat in chats:
        rendered = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in chat).encode()
        ids = torch.tensor([list(rendered)])
        with torch.no_grad():
            logp = F.log_softmax(reference(ids)[0].double(), dim=-1)
        for t in _assistant_targets(chat):
            total -= float(logp[t - 1, rendered[t]])
            count += 1
    text = b"plain pretraining text in the mix"
    with torch.no_grad():
        logp = F.log_softmax(reference(torch.tensor([list(text)]))[0].double(), dim=-1)
    total -= sum(float(logp[t - 1, text[t]]) for t in range(1, len(text)))
    count += len(text) - 1
    assert line["loss"] == pytest.approx(total / count, rel=2e-5)


def test_router_loads_counted_once_under_activation_checkpointing(corpus, tmp_path):
    path, _ = corpus
    plain = Trainer(parse_config(raw_config(path, tmp_path / "a", steps=3, warmup_steps=0, decay_steps=0)), progress=False)
    ckpt = Trainer(parse_config(raw_config(path, tmp_path / "b", steps=3, warmup_steps=0, decay_steps=0, activation_checkpointing=True)),
                   progress=False)
    # What the routers of step 1's forward choose, counted straight from one no-grad forward.
    ids, _, cu = _batch(plain.windows_for_step(1))
    routers = [m for m in plain.model.modules() if hasattr(m, "balancing_biases")]
    seen = []
    handles = [r.register_forward_hook(lambda m, a, out: seen.append(torch.bincount(out[2], minlength=5)))
               for r in routers]
    with torch.no_grad():
        plain.model(ids, cu_seqlens=cu)
    for h in handles:
        h.remove()
    # The checkpointed model does run each router twice per step (forward + recompute) ...
    calls = []
    ckpt_routers = [m for m in ckpt.model.modules() if hasattr(m, "balancing_biases")]
    handles = [r.register_forward_hook(lambda *a: calls.append(1)) for r in ckpt_routers]
    ckpt.train_step(1)
    for h in handles:
        h.remove()
    assert len(calls) == 2 * len(ckpt_routers)
    plain.train_step(1)
    # ... but both trainers hand the balancer the single forward's counts.
    for a, b, expected in zip(plain.last_loads, ckpt.last_loads, seen, strict=True):
        assert torch.equal(a, expected) and torch.equal(b, expected)
    for a, b in zip(routers, ckpt_routers):
        assert torch.equal(a.balancing_biases, b.balancing_biases)
    for step in (2, 3):
        assert plain.train_step(step)["loss"] == ckpt.train_step(step)["loss"]


def test_grad_accum_splits_the_same_step(corpus, tmp_path):
    path, _ = corpus
    one = Trainer(parse_config(raw_config(path, tmp_path / "a", steps=3, warmup_steps=0, decay_steps=0)), progress=False)
    four = Trainer(parse_config(raw_config(path, tmp_path / "b", steps=3, warmup_steps=0, decay_steps=0, grad_accum=4)), progress=False)
    a, b = one.train_step(1), four.train_step(1)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert [torch.equal(x, y) for x, y in zip(one.last_loads, four.last_loads)] == [True] * 2


def test_bfloat16_compute_with_fp32_masters(corpus, tmp_path):
    path, _ = corpus
    trainer = Trainer(parse_config(raw_config(path, tmp_path / "o", steps=8, warmup_steps=0, decay_steps=0, dtype="bfloat16")), progress=False)
    losses = [trainer.train_step(s)["loss"] for s in range(1, 9)]
    assert losses[-1] < 0.8 * losses[0]
    for p in trainer.model.parameters():
        m = trainer.masters[id(p)]
        assert p.dtype == torch.bfloat16 and m.dtype == torch.float32
        assert torch.equal(p, m.to(torch.bfloat16))
    for opt in trainer.optimizers:
        for state in opt.state.values():
            assert all(v.dtype == torch.float32 for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    for r in (m for m in trainer.model.modules() if hasattr(m, "balancing_biases")):
        assert r.balancing_biases.dtype == torch.float32


def _run_cli(raw, tmp_path, capsys) -> str:
    cfg = tmp_path / "run.toml"
    cfg.write_text(to_toml(raw))
    assert cli.main(["train", "--config", str(cfg), "--no-progress"]) == 2
    return capsys.readouterr().err


def test_config_errors_name_the_key(corpus, tmp_path, capsys):
    path, _ = corpus
    raw = raw_config(path, tmp_path / "o")
    raw["train"]["stpes"] = 3
    assert "train.stpes" in _run_cli(raw, tmp_path, capsys)
    raw = raw_config(path, tmp_path / "o", lr="fast")
    assert "train.lr must be float" in _run_cli(raw, tmp_path, capsys)
    raw = raw_config(path, tmp_path / "o", batch_windows=3, grad_accum=2)
    assert "train.batch_windows" in _run_cli(raw, tmp_path, capsys)
    raw = raw_config(path, tmp_path / "o", clip=-1.0)
    assert "train.clip" in _run_cli(raw, tmp_path, capsys)
    raw = raw_config(path, tmp_path / "o")
    raw["model"]["vocab_size"] = 128
    assert "model.vocab_size" in _run_cli(raw, tmp_path, capsys)
    raw["model"]["hidden_sise"] = 64
    assert "model.hidden_sise" in _run_cli(raw, tmp_path, capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "cut\n')
    assert "line 2" in _run_cli(raw_config(bad, tmp_path / "o"), tmp_path, capsys)


def test_bfloat16_checkpointed_muon_run_resumes_exactly(corpus, tmp_path):
    path, _ = corpus
    options = dict(steps=6, warmup_steps=1, decay_steps=2, dtype="bfloat16", activation_checkpointing=True,
                   grad_accum=2, checkpoint_every=3)
    straight = Trainer(parse_config(raw_config(path, tmp_path / "a", **options)), progress=False)
    straight.run()
    first = Trainer(parse_config(raw_config(path, tmp_path / "b", **options)), progress=False)
    for step in (1, 2, 3):
        first.train_step(step)
        first.step = step
    first.save_checkpoint()
    resumed = Trainer(parse_config(raw_config(path, tmp_path / "b", **options)), progress=False)
    assert resumed.resume() == 3
    resumed.run()
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")[3:]
    for a, b in zip(straight.masters.values(), resumed.masters.values(), strict=True):
        assert torch.equal(a, b)


def test_init_from_a_trained_checkpoint(corpus, trained, tmp_path):
    path, _ = corpus
    _, final, trainer = trained["muon"]
    raw = raw_config(path, tmp_path / "o", steps=2, warmup_steps=0, decay_steps=0, lr=0.0)
    raw["model"] = {"init_from": final}
    again = Trainer(parse_config(raw), progress=False)
    for a, b in zip(again.model.state_dict().values(), trainer.final_model().state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert again.train_step(1)["loss"] < 1.0  # starts where the trained run ended, not from random weights

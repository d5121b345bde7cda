"""RLTrainer end to end on a tiny model: steps run (finite loss, metrics, aggregation prompts mixed in), a
resumed run equals the unbroken one bit for bit, the config is strict, and `zaya-rt rl` runs."""

import json
import math

import pytest
import torch

from train_helpers import TINY_MODEL, to_toml
from zaya_rt.cli import main
from zaya_rt.train import RLTrainer
from zaya_rt.train.rl.config import load_rl_config, parse_rl_config

PROBLEMS = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in ((1, 2), (3, 4), (5, 9), (2, 2))]


def first_char_even(text: str) -> float:
    """A checkable stand-in reward that a random tiny model hits about half the time."""
    return float(bool(text) and ord(text[0]) % 2 == 0)


@pytest.fixture
def prompts_path(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def raw_config(prompts_path, out_dir, **rl):
    base = dict(steps=3, out_dir=str(out_dir), prompts_per_step=2, group_size=3, micro_batch=4, max_new_tokens=6,
                advantage="maxrl", tv_delta=0.2, lr=3e-3, seed=1, checkpoint_every=1, aggregation_ratio=0.5,
                aggregation_tails=2, tail_tokens=4, engine_pages=128, page_size=16, canary_threshold=0.05)
    base.update(rl)
    return {"model": dict(TINY_MODEL), "data": {"path": str(prompts_path)}, "rl": base}


def trainer(raw, fresh=False):
    t = RLTrainer(parse_rl_config(raw), fresh=fresh, progress=False)
    t.rewards = [first_char_even] * len(t.prompts)
    return t


def metrics(out_dir):
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
    return lines


def test_steps_run_and_resume_is_exact(prompts_path, tmp_path):
    unbroken_dir, broken_dir = tmp_path / "a", tmp_path / "b"
    a = trainer(raw_config(prompts_path, unbroken_dir))
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    a.run()
    lines = metrics(unbroken_dir)
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in lines)
    assert sum(m["aggregation_prompts"] for m in lines) > 0
    assert any(m["kept_groups"] > 0 for m in lines)
    assert all(m["logprob_gap"] < 1e-4 for m in lines)  # fp32: the engine's log-probs are the trainer's
    assert any(not torch.equal(before[k], v) for k, v in a.model.state_dict().items())

    b = trainer(raw_config(prompts_path, broken_dir))
    b.resume()
    for step in (1, 2):
        b.train_step(step)
        b.step = step
        b.save_checkpoint()
    with open(broken_dir / "metrics.jsonl", "w") as f:  # a killed run's log: only step 1 made it
        f.write(json.dumps({**lines[0], "seconds": 0.0}) + "\n")
    c = trainer(raw_config(prompts_path, broken_dir))
    assert c.resume() == 2
    c.run()
    for k, v in a.model.state_dict().items():
        assert torch.equal(c.model.state_dict()[k], v), k
    assert metrics(broken_dir)[-1] == lines[-1]


def test_resume_refuses_another_config(prompts_path, tmp_path):
    t = trainer(raw_config(prompts_path, tmp_path, steps=1))
    t.run()
    other = trainer(raw_config(prompts_path, tmp_path, steps=1, lr=1e-4))
    with pytest.raises(ValueError, match="different config"):
        other.resume()


def test_config_is_strict(prompts_path, tmp_path):
    raw = raw_config(prompts_path, tmp_path)
    for key, value, exc, match in (("advantage", "ppo", ValueError, "rl.advantage"),
                                   ("group_size", 0, ValueError, "rl.group_size"),
                                   ("tv_delta", 2.0, ValueError, "rl.tv_delta"),
                                   ("lr", "high", TypeError, "rl.lr"),
                                   ("kl", 0.1, ValueError, "rl.kl"),
                                   ("aggregation_tails", 5, ValueError, "aggregation_tails")):
        bad = json.loads(json.dumps(raw))
        bad["rl"][key] = value
        with pytest.raises(exc, match=match):
            parse_rl_config(bad)
    with pytest.raises(ValueError, match="unknown section"):
        parse_rl_config({**raw, "train": {}})
    (tmp_path / "bad.jsonl").write_text('{"question": "x"}\n')
    bad = json.loads(json.dumps(raw))
    bad["data"]["path"] = str(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="line 1"):
        RLTrainer(parse_rl_config(bad), progress=False)


def test_cli_rl(prompts_path, tmp_path, capsys):
    raw = raw_config(prompts_path, tmp_path / "out", steps=1, reward="exact", aggregation_ratio=0.0)
    path = tmp_path / "rl.toml"
    path.write_text(to_toml(raw))
    assert load_rl_config(path).rl.steps == 1
    assert main(["rl", "--config", str(path), "--no-progress"]) == 0
    assert (tmp_path / "out" / "final").is_dir() and len(metrics(tmp_path / "out")) == 1
    (tmp_path / "broken.toml").write_text("[rl\n")
    assert main(["rl", "--config", str(tmp_path / "broken.toml")]) != 0


def test_rl_raises_a_verifiable_reward(prompts_path, tmp_path):
    """The loop learns: on-policy steps push the stand-in reward (first character's code point even) from about
    chance towards 1 (a sign error in the loss drives it to 0)."""
    t = trainer(raw_config(prompts_path, tmp_path, steps=12, prompts_per_step=4, group_size=4, micro_batch=16,
                           max_new_tokens=2, lr=1e-2, optimizer="adamw", advantage="drgrpo", aggregation_ratio=0.0,
                           checkpoint_every=0, canary_threshold=0.0))
    t.run()
    reward = [m["reward"] for m in metrics(tmp_path)]
    assert sum(reward[-4:]) / 4 > sum(reward[:4]) / 4 + 0.3, reward


def test_chat_prompts_are_the_sft_user_turn(prompts_path, tmp_path):
    """[data] chat = true: a rollout prompt is the user turn as zaya_rt.train.data renders SFT chats (header, the
    rollout text, end marker, assistant header); chat = false leaves the text bare."""
    from zaya_rt.rsa.templates import DefaultTemplate
    from zaya_rt.runtime.tokenizer import ByteTokenizer
    from zaya_rt.train.data import render_chat

    raw = raw_config(prompts_path, tmp_path, steps=1)
    bare = ByteTokenizer().decode(DefaultTemplate(ByteTokenizer(), use_chat_template=False).rollout("What?"))
    raw["data"]["chat"] = True
    chat = trainer(raw)
    sft = render_chat([{"role": "user", "content": bare}, {"role": "assistant", "content": "x"}], ByteTokenizer())
    ids = chat.template.rollout("What?")
    assert ids == sft.input_ids[:len(ids)] and not any(sft.loss_mask[:len(ids)])
    assert ByteTokenizer().decode(ids).endswith("<|assistant|>\n")
    raw["data"]["chat"] = False
    assert trainer(raw).template.rollout("What?") == ByteTokenizer().encode(bare)
    raw["data"]["chat"] = "yes"
    with pytest.raises(TypeError, match="data.chat"):
        parse_rl_config(raw)

"""`zaya-rt demo --rl`: the RL recipe's prompts (train split, seeded, checkable), its `zaya-rt rl` config (the SFT
chat format the demo model was trained on), a tiny run end to end from the shipped model, and the CLI's checks.
No accuracy is asserted: a few steps of RL prove nothing either way; bench/RESULTS.md has the real run."""

import dataclasses
import json
import os

import pytest

from zaya_rt.cli import main
from zaya_rt.demo.evaluate import packaged_model_dir
from zaya_rt.demo.recipe import Recipe
from zaya_rt.demo.rl import RL_RECIPE, rl_demo, rl_problems, summarize_metrics, write_rl_config
from zaya_rt.demo.task import make_problem
from zaya_rt.demo.tokenizer import DemoTokenizer
from zaya_rt.rsa.templates import DefaultTemplate
from zaya_rt.train.rl.config import load_rl_config
from zaya_rt.train.rl.trainer import RLTrainer

TINY = dataclasses.replace(RL_RECIPE, steps=2, prompts=12, prompts_per_step=2, group_size=2, micro_batch=3,
                           max_new_tokens=24, checkpoint_every=1)


def test_prompts_are_seeded_training_problems_with_their_answers():
    rows = rl_problems(TINY, 11)
    assert rows == rl_problems(TINY, 11) and len(rows) == TINY.prompts
    assert rows != rl_problems(dataclasses.replace(TINY, seed=TINY.seed + 1), 11)
    steps = []
    for i, row in enumerate(rows):
        n = row["problem"].count("\n")  # one line per operation
        steps.append(n)
        p = make_problem("train", TINY.seed, i, steps=n, modulus=11)
        assert row == {"problem": p.text(), "answer": p.answer()}
    assert min(steps) >= TINY.task_steps[0] and max(steps) <= TINY.task_steps[1] and len(set(steps)) > 1
    with pytest.raises(ValueError, match="task_steps"):
        rl_problems(dataclasses.replace(TINY, task_steps=(4, 2)), 11)


def test_config_renders_prompts_as_the_demo_evaluation_does(tmp_path):
    """The RL trainer's rollout prompt is token for token the one `zaya-rt demo` evaluates (the SFT chat turn),
    and the rollouts stop at `<|end|>`."""
    model_dir = packaged_model_dir()
    config = load_rl_config(write_rl_config(str(tmp_path), model_dir, TINY, Recipe.from_json_file(
        os.path.join(model_dir, "demo.json"))))
    assert config.data.chat and config.init_from == os.path.abspath(model_dir)
    trainer = RLTrainer(config, progress=False)
    tokenizer = DemoTokenizer(model_dir)
    assert config.rl.stop_token_ids == [tokenizer.eos_token_id]
    problem = trainer.prompts[0]["problem"]
    expected = DefaultTemplate(tokenizer).rollout(problem)
    assert trainer.template.rollout(problem) == expected
    text = tokenizer.decode(expected)
    assert text.startswith("<|user|>\n") and text.endswith("<|assistant|>\n")


def test_tiny_rl_run_writes_model_metrics_and_config(tmp_path):
    out = tmp_path / "run"
    model = rl_demo(str(out), TINY, progress=False, log=lambda *a: None)
    assert sorted(os.listdir(model)) == ["config.json", "demo.json", "model.safetensors", "tokenizer.json"]
    lines = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(0 <= m["reward"] <= 1 and m["logprob_gap"] < 1e-4 for m in lines)
    summary = summarize_metrics(str(out / "rl" / "metrics.jsonl"))
    assert summary["steps"] == 2 and summary["reward_last"] == pytest.approx(
        sum(m["reward"] for m in lines) / 2)
    assert json.loads((out / "rl_recipe.json").read_text())["steps"] == 2
    # the written config is a plain `zaya-rt rl` run: rerunning it resumes at the end and trains nothing more
    assert main(["rl", "--config", str(out / "rl.toml"), "--no-progress"]) == 0
    assert len((out / "rl" / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_rl_before_and_after(tmp_path, capsys, monkeypatch):
    import zaya_rt.demo.rl as rl

    monkeypatch.setattr(rl, "RL_RECIPE", TINY)
    report = tmp_path / "rl.json"
    code = main(["demo", "--rl", "--rl-steps", "1", "--out", str(tmp_path / "run"), "--no-progress", "--problems",
                 "2", "--population", "2", "--tails", "2", "--rounds", "0", "--json", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "before RL" in out and "after RL (1 steps" in out and "binomial standard errors" in out
    data = json.loads(report.read_text())
    assert data["rl"]["steps"] == 1 and data["rl_recipe"]["steps"] == 1
    assert data["before"]["config"]["model"] == "shipped"
    assert data["after"]["config"]["model"] == os.path.abspath(tmp_path / "run" / "model")
    assert [p["problem"] for p in data["before"]["problems"]] == [p["problem"] for p in data["after"]["problems"]]


@pytest.mark.parametrize("argv,message", [
    (["demo", "--rl", "--train"], "separate runs"),
    (["demo", "--rl-steps", "3"], "only applies to --rl"),
    (["demo", "--rl", "--rl-steps", "0"], "--rl-steps must be a positive int"),
])
def test_cli_rl_rejects_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err

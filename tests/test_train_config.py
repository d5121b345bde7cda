"""zaya_rt.train config parsing (strict keys and types) and the WSD learning-rate schedule."""

import pytest

from zaya_rt.model.config import ZayaConfig
from zaya_rt.train.config import load_config, parse_config
from zaya_rt.train.schedule import wsd_lr

GOOD = """
[model]
vocab_size = 256
hidden_size = 64
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 32
moe_intermediate_size = 64
num_experts = 4
router_hidden_size = 16

[data]
path = "corpus.jsonl"
window = 128
sft_budget = 96

[train]
steps = 100
out_dir = "runs/tiny"
lr = 1
warmup_steps = 10
decay_steps = 20
optimizer = "adamw"
dtype = "bfloat16"
activation_checkpointing = true

[balancer]
skip_target = 0.1
"""


def base():
    return {"model": {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
            "data": {"path": "d.jsonl"}, "train": {"steps": 10, "out_dir": "o"}}


def test_load_good_file(tmp_path):
    (tmp_path / "c.toml").write_text(GOOD)
    cfg = load_config(tmp_path / "c.toml")
    assert isinstance(cfg.model, ZayaConfig) and cfg.model.num_experts == 4 and cfg.init_from is None
    assert cfg.data.window == 128 and cfg.data.sft_budget == 96 and cfg.data.tokenizer == "bytes"
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.optimizer == "adamw" and cfg.train.dtype == "bfloat16" and cfg.train.activation_checkpointing
    assert cfg.train.grad_accum == 1 and cfg.train.keep_checkpoints == 2
    assert cfg.balancer.skip_target == 0.1 and cfg.balancer.lr == 1e-2


def test_init_from():
    raw = base()
    raw["model"] = {"init_from": "ckpt/"}
    cfg = parse_config(raw)
    assert cfg.model is None and cfg.init_from == "ckpt/"
    raw["model"]["hidden_size"] = 64
    with pytest.raises(ValueError, match="model.hidden_size"):
        parse_config(raw)


@pytest.mark.parametrize("section, key, value, exc, message", [
    ("train", "stepz", 3, ValueError, "unknown key train.stepz"),
    ("data", "windows", 3, ValueError, "unknown key data.windows"),
    ("model", "hidden", 3, ValueError, "unknown key model.hidden"),
    ("balancer", "rate", 3, ValueError, "unknown key balancer.rate"),
    ("train", "steps", "10", TypeError, "train.steps must be int"),
    ("train", "steps", 10.0, TypeError, "train.steps must be int"),
    ("train", "lr", True, TypeError, "train.lr must be float"),
    ("train", "activation_checkpointing", 1, TypeError, "train.activation_checkpointing must be bool"),
    ("data", "path", 5, TypeError, "data.path must be str"),
    ("model", "hidden_size", 64.5, TypeError, "model.hidden_size must be int"),
    ("model", "layer_types", "hybrid", TypeError, "model.layer_types"),
    ("train", "optimizer", "sgd", ValueError, "train.optimizer must be one of muon, adamw"),
    ("train", "dtype", "float16", ValueError, "train.dtype must be one of"),
    ("train", "steps", 0, ValueError, "train.steps must be positive"),
    ("train", "lr", -1.0, ValueError, "train.lr must be non-negative"),
    ("train", "min_lr_ratio", 1.5, ValueError, r"train.min_lr_ratio must be in \[0, 1\]"),
    ("data", "sft_budget", 4096, ValueError, "data.sft_budget"),
    ("train", "warmup_steps", 8, None, None),
])
def test_bad_values_name_the_key(section, key, value, exc, message):
    raw = base()
    raw.setdefault(section, {})[key] = value
    if exc is None:
        parse_config(raw)
        return
    with pytest.raises(exc, match=message):
        parse_config(raw)


def test_structure_errors(tmp_path):
    raw = base()
    raw["optim"] = {}
    with pytest.raises(ValueError, match=r"unknown section \[optim\]"):
        parse_config(raw)
    raw = base()
    del raw["train"]["out_dir"]
    with pytest.raises(ValueError, match="missing required key train.out_dir"):
        parse_config(raw)
    raw = base()
    del raw["data"]
    with pytest.raises(ValueError, match=r"missing section \[data\]"):
        parse_config(raw)
    raw = base()
    raw["train"].update(warmup_steps=6, decay_steps=5)
    with pytest.raises(ValueError, match="exceed train.steps"):
        parse_config(raw)
    raw = base()
    raw["model"]["num_key_value_heads"] = 3  # does not divide the attention heads
    with pytest.raises(ValueError, match=r"\[model\]"):
        parse_config(raw)
    (tmp_path / "bad.toml").write_text("[train\nsteps = 1")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_wsd_schedule():
    lrs = [wsd_lr(s, 1.0, steps=10, warmup_steps=2, decay_steps=4, min_lr_ratio=0.2) for s in range(1, 11)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert [wsd_lr(s, 3.0, 3, 0, 0, 0.0) for s in (1, 2, 3)] == [3.0, 3.0, 3.0]
    assert wsd_lr(4, 1.0, 4, 0, 4, 0.0) == 0.0 and wsd_lr(1, 1.0, 4, 0, 4, 0.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="step"):
        wsd_lr(0, 1.0, 10, 0, 0, 0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        wsd_lr(1, 1.0, 10, 6, 6, 0.1)

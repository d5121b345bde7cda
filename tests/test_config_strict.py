"""Config values of the wrong type (JSON strings for numbers, strings for booleans, fractional sizes) are
rejected when the checkpoint is loaded, with a ValueError naming the key, in both config layouts; load's
device must hold weights and exist."""

import json

import pytest
import torch

import zaya_rt
from zaya_rt.model.checkpoint import save

SMALL = dict(
    vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    moe_intermediate_size=16, num_experts=3, router_hidden_size=12, layer_types=["hybrid", "hybrid_sliding"],
    sliding_window=5, max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{layout: checkpoint directory} of one small random model."""
    model = zaya_rt.ZayaForCausalLM(zaya_rt.ZayaConfig(**SMALL)).init_random(1)
    out = {}
    for layout in ("native", "zyphra"):
        out[layout] = tmp_path_factory.mktemp(layout)
        save(model, out[layout], layout=layout)
    return out


def _with_config(src, dst, edit):
    """A copy of checkpoint src in dst whose config.json is edit(config dict)."""
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    raw = json.loads((src / "config.json").read_text())
    edit(raw)
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


def _set(key, value):
    def edit(raw):
        raw[key] = value
    return edit


def _set_rope(layer_type, key, value):
    def edit(raw):
        raw["rope_parameters"][layer_type][key] = value
    return edit


NATIVE_BAD = [
    ("tie_word_embeddings", _set("tie_word_embeddings", "no")),
    ("tie_word_embeddings", _set("tie_word_embeddings", 0)),
    ("attention_bias", _set("attention_bias", "false")),
    ("sliding_window", _set("sliding_window", 2.5)),
    ("sliding_window", _set("sliding_window", "5")),
    ("sliding_window", _set("sliding_window", True)),
    ("max_position_embeddings", _set("max_position_embeddings", "4096")),
    ("max_position_embeddings", _set("max_position_embeddings", 4096.0)),
    ("max_position_embeddings", _set("max_position_embeddings", 0)),
    ("hidden_size", _set("hidden_size", 32.0)),
    ("rms_norm_eps", _set("rms_norm_eps", "1e-5")),
    ("rms_norm_eps", _set("rms_norm_eps", float("nan"))),
    ("eos_token_id", _set("eos_token_id", "106")),
    ("eos_token_id", _set("eos_token_id", [1, "2"])),
    ("pad_token_id", _set("pad_token_id", -1)),
    ("layer_types", _set("layer_types", ["hybrid", 7])),
    ("rope_theta", _set_rope("hybrid", "rope_theta", "abc")),
    ("rope_theta", _set_rope("hybrid_sliding", "rope_theta", -1.0)),
    ("rope_theta", _set_rope("hybrid", "rope_theta", False)),
    ("partial_rotary_factor", _set_rope("hybrid", "partial_rotary_factor", "0.5")),
    ("rope_type", _set_rope("hybrid", "rope_type", "yarn")),
]

ZYPHRA_BAD = [
    ("tie_word_embeddings", _set("tie_word_embeddings", "no")),
    ("rope_theta", _set("rope_theta", "abc")),
    ("swa_rotary_base", _set("swa_rotary_base", "1e4")),
    ("max_position_embeddings", _set("max_position_embeddings", "4096")),
    ("swa_layers", _set("swa_layers", [0, 0, 2.5, 2.5])),
    ("ffn_hidden_size", _set("ffn_hidden_size", "32")),
    ("ffn_hidden_size", _set("ffn_hidden_size", 33)),
    ("zaya_mlp_expansion", _set("zaya_mlp_expansion", 12.5)),
    ("norm_epsilon", _set("norm_epsilon", None)),
    ("num_hidden_layers", _set("num_hidden_layers", "4")),
    ("kv_channels", _set("kv_channels", "8")),
    ("cca_time0", _set("cca_time0", 2.0)),
]


@pytest.mark.parametrize("layout,key,edit", [("native", *b) for b in NATIVE_BAD] + [("zyphra", *b) for b in ZYPHRA_BAD],
                         ids=[f"native-{b[0]}-{i}" for i, b in enumerate(NATIVE_BAD)]
                         + [f"zyphra-{b[0]}-{i}" for i, b in enumerate(ZYPHRA_BAD)])
def test_bad_config_value_names_its_key(checkpoints, tmp_path, layout, key, edit):
    path = _with_config(checkpoints[layout], tmp_path, edit)
    with pytest.raises(ValueError, match=key):
        zaya_rt.load(path)


@pytest.mark.parametrize("layout", ["native", "zyphra"])
def test_good_config_still_loads(checkpoints, layout):
    """The unedited copies load: the failures above come from the edits alone."""
    model = zaya_rt.load(checkpoints[layout])
    assert model.config.max_position_embeddings == 64 and model.config.tie_word_embeddings is True
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_json_false_unties(checkpoints, tmp_path):
    src = zaya_rt.ZayaForCausalLM(zaya_rt.ZayaConfig(**SMALL, tie_word_embeddings=False)).init_random(2)
    save(src, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is False
    model = zaya_rt.load(tmp_path)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, src.lm_head.weight)


def test_config_constructor_is_strict_too():
    for key, value in (("tie_word_embeddings", "no"), ("sliding_window", 2.5), ("max_position_embeddings", "4096"),
                       ("skip_passthrough", 1)):
        with pytest.raises(ValueError, match=key):
            zaya_rt.ZayaConfig(**{**SMALL, key: value})


def test_meta_device_is_refused(checkpoints):
    with pytest.raises(ValueError, match="meta"):
        zaya_rt.load(checkpoints["native"], device="meta")
    with pytest.raises(ValueError, match="meta"):
        zaya_rt.load(checkpoints["native"], device=torch.device("meta"))


def test_unknown_device_string(checkpoints):
    with pytest.raises(ValueError, match="not a torch device"):
        zaya_rt.load(checkpoints["native"], device="gpu0")


def test_cuda_device_that_is_not_there(checkpoints):
    """On a PyTorch without CUDA any CUDA device is unavailable; with CUDA, an index past the last device."""
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
            with pytest.raises(RuntimeError, match="not available"):
                zaya_rt.load(checkpoints["native"], device=device)
    else:
        with pytest.raises(ValueError, match="does not exist"):
            zaya_rt.load(checkpoints["native"], device=f"cuda:{torch.cuda.device_count()}")

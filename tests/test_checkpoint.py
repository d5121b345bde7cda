"""zaya_rt.load: both layouts, sharded or not, lazily; bad checkpoints give errors naming file and key."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import zaya_rt
from zaya_rt.model.checkpoint import zyphra_key_map

SMALL = dict(
    vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    moe_intermediate_size=16, num_experts=3, router_hidden_size=12, layer_types=["hybrid", "hybrid_sliding", "hybrid"],
    sliding_window=5,
)


def _model(seed=0, **overrides):
    cfg = zaya_rt.ZayaConfig(**{**SMALL, **overrides})
    return zaya_rt.ZayaForCausalLM(cfg).init_random(seed)


def _logits(model, seed=0):
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("layout", ["native", "zyphra"])
@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip(tmp_path, layout, sharded, tied):
    model = _model(seed=3, tie_word_embeddings=tied)
    zaya_rt.save(model, tmp_path, layout=layout, max_shard_bytes=20_000 if sharded else None)
    if sharded:
        assert len(list(tmp_path.glob("*.safetensors"))) > 2
        assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = zaya_rt.load(tmp_path)
    assert loaded.config == model.config
    assert torch.equal(_logits(loaded), _logits(model))


def test_zyphra_layout_names_and_sub_layers(tmp_path):
    model = _model()
    zaya_rt.save(model, tmp_path, layout="zyphra")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6 and cfg["ffn_hidden_size"] == 32 and cfg["zaya_mlp_expansion"] == 12
    assert cfg["swa_layers"] == [0, 0, 4, 4, 0, 0]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.res_scale.hidden_states_scale" in keys
    assert "model.layers.0.res_scale.residual_scale" not in keys
    assert "model.layers.1.zaya_block.router.router_states_scale" not in keys  # no EDA on the first MoE
    assert "model.layers.3.zaya_block.router.router_states_scale" in keys
    assert "model.layers.5.zaya_block.experts.local_experts.2.linear_fc2.weight" in keys
    assert "model.res_scale.residual_bias" in keys and "model.final_norm.weight" in keys
    assert not any(k.startswith("model.layers.6.") for k in keys)


def test_zyphra_config_conversion():
    raw = {
        "num_hidden_layers": 80, "hidden_size": 2048, "num_attention_heads": 8, "num_query_groups": 2,
        "kv_channels": 128, "ffn_hidden_size": 4096, "num_experts": 16, "moe_router_topk": 1,
        "zaya_mlp_expansion": 256, "norm_epsilon": 1e-5, "vocab_size": 262272, "rope_theta": 5e6,
        "swa_layers": [0, 0, 1023, 1023] * 20, "cca": True, "zaya_use_eda": True, "residual_in_fp32": True,
    }
    cfg = zaya_rt.ZayaConfig.from_dict(raw)
    assert cfg.num_hidden_layers == 40 and cfg.moe_intermediate_size == 2048 and cfg.router_hidden_size == 256
    assert cfg.head_dim == 128 and cfg.num_key_value_heads == 2 and cfg.sliding_window == 1024
    assert cfg.layer_types[:4] == ["hybrid", "hybrid_sliding", "hybrid", "hybrid_sliding"]
    assert cfg.rope_theta("hybrid") == 5e6 and cfg.rope_theta("hybrid_sliding") == 1e4
    assert cfg.tie_word_embeddings and cfg.cca_time0 == cfg.cca_time1 == 2
    with pytest.raises(ValueError, match="moe_router_topk"):
        zaya_rt.ZayaConfig.from_dict({**raw, "moe_router_topk": 2})
    with pytest.raises(ValueError, match="alternate"):
        zaya_rt.ZayaConfig.from_dict({**raw, "num_hidden_layers": 79})
    with pytest.raises(ValueError, match="zaya_mlp_expansion"):
        zaya_rt.ZayaConfig.from_dict({k: v for k, v in raw.items() if k != "zaya_mlp_expansion"})


def test_key_map_covers_every_parameter_once():
    model = _model(tie_word_embeddings=False)
    mapping = zyphra_key_map(model.config)
    assert set(mapping) == set(model.state_dict())
    flat = [k for keys in mapping.values() for k in keys]
    assert len(flat) == len(set(flat))


def test_load_does_not_import_transformers(tmp_path):
    zaya_rt.save(_model(), tmp_path)
    code = (
        "import sys, zaya_rt; zaya_rt._C; m = zaya_rt.load(sys.argv[1]); "
        "assert 'transformers' not in sys.modules, 'transformers was imported'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ---- bad checkpoints ----------------------------------------------------------------------------------------


def _saved(tmp_path, **kw):
    zaya_rt.save(_model(), tmp_path, **kw)
    return tmp_path


def _rewrite(path, edit):
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"))


def test_missing_key(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda s: s.pop("model.layers.1.mlp.experts.down_proj"))
    with pytest.raises(ValueError, match="lacks .*model.layers.1.mlp.experts.down_proj"):
        zaya_rt.load(path)


def test_unexpected_key(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda s: s.update({"model.layers.9.mystery": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor 'model.layers.9.mystery'"):
        zaya_rt.load(path)


def test_misshapen_key(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda s: s.update({"model.layers.0.self_attn.o_proj.weight": torch.zeros(32, 31)}))
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.o_proj.weight' has shape \(32, 31\)"):
        zaya_rt.load(path)


def test_misshapen_expert_in_zyphra_layout(tmp_path):
    path = _saved(tmp_path, layout="zyphra")
    key = "model.layers.3.zaya_block.experts.local_experts.1.linear_fc1.weight"
    _rewrite(path, lambda s: s.update({key: torch.zeros(5, 32)}))
    with pytest.raises(ValueError, match=r"local_experts.1.linear_fc1.weight. has shape \(5, 32\), config expects \(32, 32\)"):
        zaya_rt.load(path)


def test_truncated_file(tmp_path):
    path = _saved(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated"):
        zaya_rt.load(path)


def test_garbage_header(tmp_path):
    path = _saved(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        zaya_rt.load(path)


def test_missing_shard(tmp_path):
    path = _saved(tmp_path, max_shard_bytes=20_000)
    victim = sorted(path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ValueError, match=f"{victim.name}.* is missing"):
        zaya_rt.load(path)


def test_bad_index(tmp_path):
    path = _saved(tmp_path, max_shard_bytes=20_000)
    (path / "model.safetensors.index.json").write_text("{\"weights\": 3}")
    with pytest.raises(ValueError, match="not a valid safetensors index"):
        zaya_rt.load(path)


def test_no_config_no_dir_bad_json(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        zaya_rt.load(tmp_path / "nope")
    path = _saved(tmp_path)
    (path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        zaya_rt.load(path)
    (path / "config.json").unlink()
    with pytest.raises(ValueError, match="no config.json"):
        zaya_rt.load(path)


def test_config_shape_mismatch_names_key(tmp_path):
    path = _saved(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["moe_intermediate_size"] = 24
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mlp.experts.gate_up_proj.*config expects"):
        zaya_rt.load(path)


def test_invalid_config_values(tmp_path):
    path = _saved(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    for change, pattern in [
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"num_experts_per_tok": 2}, "one expert"),
        ({"layer_types": ["hybrid"]}, "layer_types has 1 entries"),
        ({"sliding_window": None}, "sliding_window"),
        ({"hidden_size": -4}, "hidden_size must be a positive integer"),
    ]:
        (path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=pattern):
            zaya_rt.load(path)


def test_integer_tensor_is_rejected(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda s: s.update({"model.norm.weight": torch.ones(32, dtype=torch.int32)}))
    with pytest.raises(ValueError, match="non-floating"):
        zaya_rt.load(path)


def test_bad_dtype_argument(tmp_path):
    with pytest.raises(TypeError, match="floating dtype"):
        zaya_rt.load(_saved(tmp_path), dtype=torch.int8)

"""Checkpoint loading and saving (SPEC section 3, "Checkpoints"): safetensors, sharded or not, in the
transformers-native layout or the original Zyphra one (alternating attention / MoE sub-layers), read lazily
one tensor at a time, without transformers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zaya_rt.model.config import ZayaConfig
from zaya_rt.model.modeling import ZayaForCausalLM

_INDEX = "model.safetensors.index.json"
_FP32_KEYS = ("balancing_biases",)  # selection-only state kept in fp32 whatever the model dtype


def zyphra_key_map(config: ZayaConfig) -> dict[str, list[str]]:
    """Native key -> the original-layout key(s) holding it (several = expert tensors stacked over experts)."""
    n = config.num_hidden_layers
    out: dict[str, list[str]] = {
        "model.embed_tokens.weight": ["model.embed_tokens.weight"],
        "model.input_hidden_states_scale": ["model.layers.0.res_scale.hidden_states_scale"],
        "model.input_hidden_states_bias": ["model.layers.0.res_scale.hidden_states_bias"],
        "model.norm.weight": ["model.final_norm.weight"],
    }
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = ["lm_head.weight"]
    if config.lm_head_bias:
        out["lm_head.bias"] = ["lm_head.bias"]
    linear_suffixes = ("weight", "bias") if config.attention_bias else ("weight",)
    for i in range(n):
        nat, att, moe = f"model.layers.{i}.", f"model.layers.{2 * i}.", f"model.layers.{2 * i + 1}."
        post_mlp = f"model.layers.{2 * i + 2}.res_scale." if i + 1 < n else "model.res_scale."
        pairs = {
            "input_layernorm.weight": att + "input_norm.weight",
            "self_attn.qk_norm.temp": att + "self_attn.qkv.temp",
            "post_attention_layernorm.weight": moe + "input_norm.weight",
            "mlp.gate.down_proj.weight": moe + "zaya_block.router.down_proj.weight",
            "mlp.gate.down_proj.bias": moe + "zaya_block.router.down_proj.bias",
            "mlp.gate.router_mlp.norm.weight": moe + "zaya_block.router.rmsnorm_eda.weight",
            "mlp.gate.router_mlp.fc1.weight": moe + "zaya_block.router.router_mlp.0.weight",
            "mlp.gate.router_mlp.fc1.bias": moe + "zaya_block.router.router_mlp.0.bias",
            "mlp.gate.router_mlp.fc2.weight": moe + "zaya_block.router.router_mlp.2.weight",
            "mlp.gate.router_mlp.fc2.bias": moe + "zaya_block.router.router_mlp.2.bias",
            "mlp.gate.router_mlp.out_proj.weight": moe + "zaya_block.router.router_mlp.4.weight",
            "mlp.gate.balancing_biases": moe + "zaya_block.router.balancing_biases",
        }
        if i > 0:
            pairs["mlp.gate.router_states_scale"] = moe + "zaya_block.router.router_states_scale"
        for native, original in (("q_proj", "linear_q"), ("k_proj", "linear_k"), ("v_proj_current", "val_proj1"),
                                 ("v_proj_delayed", "val_proj2"), ("o_proj", None)):
            for suffix in linear_suffixes:
                src = f"self_attn.qkv_proj.{native}" if original else f"self_attn.{native}"
                dst = f"self_attn.qkv.{original}" if original else f"self_attn.{native}"
                pairs[f"{src}.{suffix}"] = f"{att}{dst}.{suffix}"
        for native, index in (("conv_qk_depthwise", 0), ("conv_qk_grouped", 1)):
            for suffix in ("weight", "bias"):
                pairs[f"self_attn.qkv_proj.{native}.{suffix}"] = f"{att}self_attn.qkv.conv_qk.{index}.{suffix}"
        for leaf in ("hidden_states_scale", "hidden_states_bias", "residual_scale", "residual_bias"):
            pairs[f"post_attention_residual_scale.{leaf}"] = moe + "res_scale." + leaf
            pairs[f"post_mlp_residual_scale.{leaf}"] = post_mlp + leaf
        out.update({nat + k: [v] for k, v in pairs.items()})
        experts = moe + "zaya_block.experts.local_experts."
        out[nat + "mlp.experts.gate_up_proj"] = [f"{experts}{e}.linear_fc1.weight" for e in range(config.num_experts)]
        out[nat + "mlp.experts.down_proj"] = [f"{experts}{e}.linear_fc2.weight" for e in range(config.num_experts)]
    return out


class _TensorSource:
    """Key -> file map over a checkpoint directory's safetensors files, opened lazily."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key_to_file: dict[str, str] = {}
        self._handles: dict[str, object] = {}
        index = path / _INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{index}: not a valid safetensors index ({exc!r})") from None
            for key, fname in weight_map.items():
                if not (path / fname).exists():
                    raise ValueError(f"{index}: names shard {fname!r} for {key!r}, but {path / fname} is missing")
            self.key_to_file = dict(weight_map)
            for fname in sorted(set(weight_map.values())):
                listed = {k for k, f in weight_map.items() if f == fname}
                missing = listed - set(self._open(fname).keys())
                if missing:
                    raise ValueError(f"{path / fname}: lacks {sorted(missing)[0]!r} that {_INDEX} places there")
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
            if not files:
                raise ValueError(f"{path}: no *.safetensors files and no {_INDEX}")
            for fname in files:
                for key in self._open(fname).keys():
                    if key in self.key_to_file:
                        raise ValueError(f"{path}: key {key!r} is in both {self.key_to_file[key]} and {fname}")
                    self.key_to_file[key] = fname

    def _open(self, fname: str):
        if fname not in self._handles:
            file = self.path / fname
            try:
                self._handles[fname] = safe_open(str(file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise ValueError(f"{file}: corrupt or truncated safetensors file ({exc})") from None
        return self._handles[fname]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._open(self.key_to_file[key]).get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        fname = self.key_to_file[key]
        try:
            return self._open(fname).get_tensor(key)
        except Exception as exc:
            raise ValueError(f"{self.path / fname}: cannot read {key!r} ({exc})") from None


def _is_zyphra_layout(keys) -> bool:
    return any(".zaya_block." in k or k == "model.final_norm.weight" for k in keys)


def load(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> ZayaForCausalLM:
    """Loads a ZAYA checkpoint directory (config.json + safetensors, sharded or not, either layout).

    dtype: weights' dtype (default: as stored); balancing biases stay fp32. device: where the weights go; it must
    hold data ('meta' raises ValueError: build ZayaForCausalLM(config) under torch.device("meta") for shapes) and
    be available in this PyTorch (else RuntimeError). Returns the model in eval mode. Raises ValueError naming
    the file and key on missing, unexpected, misshapen or unreadable tensors and on config fields of the wrong
    type or value.
    """
    device = _check_device(device)
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a checkpoint directory")
    if not (path / "config.json").exists():
        raise ValueError(f"{path}: no config.json")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    config = ZayaConfig.from_json_file(path / "config.json")
    source = _TensorSource(path)
    if _is_zyphra_layout(source.key_to_file):
        plan = zyphra_key_map(config)
    else:
        plan = {k: [k] for k in _expected_keys(config)}
    _check_keys(path, source, plan)

    with torch.device("meta"):
        model = ZayaForCausalLM(config)
    model.to_empty(device=device)
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers()))
    with torch.no_grad():
        for native_key, source_keys in plan.items():
            target = targets[native_key]
            stacked = len(source_keys) > 1
            want = tuple(target.shape[1:]) if stacked else tuple(target.shape)
            parts = []
            for key in source_keys:
                part = source.get(key)
                if tuple(part.shape) != want:
                    raise ValueError(
                        f"{path / source.key_to_file[key]}: {key!r} has shape {tuple(part.shape)}, config "
                        f"expects {want} for {native_key!r}"
                    )
                parts.append(part)
            tensor = torch.stack(parts) if stacked else parts[0]
            if dtype is None and native_key == "model.embed_tokens.weight":
                dtype = tensor.dtype
            if not tensor.is_floating_point():
                raise ValueError(f"{path}: {source_keys[0]!r} has non-floating dtype {tensor.dtype}")
            target.data = tensor.to(device=device, dtype=target.dtype if native_key.endswith(_FP32_KEYS) else None)
    _cast(model, dtype or torch.float32)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"load: device {device!r} is not a torch device ({exc})") from None
    if dev.type == "meta":
        raise ValueError("load: device='meta' would give a model without weights; load to 'cpu' or a GPU, or build "
                         "ZayaForCausalLM(config) under torch.device('meta') for shapes alone")
    if dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise RuntimeError(f"load: device {str(dev)!r} is not available in this PyTorch build "
                               f"(torch {torch.__version__})")
        count = getattr(backend, "device_count", None)
        if dev.index is not None and count is not None and dev.index >= count():
            raise ValueError(f"load: device {str(dev)!r} does not exist; this machine has {count()} {dev.type} "
                             f"device(s)")
    return dev


def _cast(model: ZayaForCausalLM, dtype: torch.dtype) -> None:
    for name, p in model.named_parameters():
        p.data = p.data.to(dtype)
    for name, b in model.named_buffers():
        if not name.endswith(_FP32_KEYS):
            b.data = b.data.to(dtype)


def _expected_keys(config: ZayaConfig) -> list[str]:
    with torch.device("meta"):
        model = ZayaForCausalLM(config)
    keys = list(model.state_dict().keys())
    if config.tie_word_embeddings:
        keys.remove("lm_head.weight")
    return keys


def _check_keys(path: Path, source: _TensorSource, plan: dict[str, list[str]]) -> None:
    wanted = {k for keys in plan.values() for k in keys}
    have = set(source.key_to_file)
    missing = sorted(wanted - have)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} tensor(s), first {missing[0]!r}")
    unexpected = sorted(have - wanted)
    if unexpected:
        k = unexpected[0]
        raise ValueError(f"{path / source.key_to_file[k]}: unexpected tensor {k!r} ({len(unexpected)} in all)")


def save(
    model: ZayaForCausalLM,
    path: str | os.PathLike,
    *,
    layout: str = "native",
    max_shard_bytes: int | None = None,
) -> None:
    """Writes config.json and safetensors (sharded with an index when max_shard_bytes is set).

    layout="native" writes the transformers layout; "zyphra" the original alternating-sub-layer layout
    (config included), which zaya_rt.load reads back to the same model.
    """
    if layout not in ("native", "zyphra"):
        raise ValueError(f"layout must be 'native' or 'zyphra', got {layout!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    if layout == "zyphra":
        mapped = {}
        for native_key, keys in zyphra_key_map(config).items():
            tensors = state[native_key].unbind(0) if len(keys) > 1 else [state[native_key]]
            mapped.update({k: t.clone() for k, t in zip(keys, tensors)})
        state = mapped
        (path / "config.json").write_text(json.dumps(_zyphra_config_dict(config), indent=2))
    else:
        config.save(path / "config.json")
    shards = _split(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    (path / _INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


def _split(state: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if not max_bytes:
        return [state]
    shards, current, size = [], {}, 0
    for k, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = t
        size += nbytes
    shards.append(current)
    return shards


def _zyphra_config_dict(config: ZayaConfig) -> dict:
    windows = [
        (config.sliding_window - 1) if t == "hybrid_sliding" else 0 for t in config.layer_types for _ in range(2)
    ]
    return {
        "model_type": "zaya",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": 2 * config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_query_groups": config.num_key_value_heads,
        "kv_channels": config.head_dim,
        "ffn_hidden_size": 2 * config.moe_intermediate_size,
        "num_experts": config.num_experts,
        "moe_router_topk": 1,
        "zaya_mlp_expansion": config.router_hidden_size,
        "norm_epsilon": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta("hybrid"),
        "swa_rotary_base": config.rope_theta("hybrid_sliding"),
        "partial_rotary_factor": config.partial_rotary_factor("hybrid"),
        "swa_layers": windows,
        "cca_time0": config.cca_time0,
        "cca_time1": config.cca_time1,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "lm_head_bias": config.lm_head_bias,
        "cca": True,
        "zaya_use_eda": True,
        "residual_in_fp32": True,
    }

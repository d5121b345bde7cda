"""ZayaConfig: reads transformers-native `config.json` and the original Zyphra one (SPEC section 3)."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

LAYER_TYPES = ("hybrid", "hybrid_sliding")
DEFAULT_ROPE = {
    "hybrid": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.5},
    "hybrid_sliding": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5},
}
# Keys of the original Zyphra config that carry no weights and no shape.
_ZYPHRA_IGNORED = {
    "cca", "residual_in_fp32", "scale_residual_merge", "zaya_use_eda", "zaya_use_mod", "zaya_high_prec",
    "activation_func", "normalization", "add_bias_linear", "gated_linear_unit", "fused_add_norm",
    "apply_rope_fusion", "bias_activation_fusion", "activation_func_fp8_input_store", "clamp_temp",
    "mamba_cache_dtype", "rope_scaling",
}


@dataclass
class ZayaConfig:
    """Shape and numerics of a ZAYA1 model. Field names follow transformers' `ZayaConfig`.

    `skip_passthrough=True` selects the older skip semantics (a skipped token passes its normalised input
    through scaled by the skip probability); the default gives skipped tokens zero expert output.
    """

    vocab_size: int = 262272
    hidden_size: int = 2048
    num_hidden_layers: int = 40
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 128
    moe_intermediate_size: int = 2048
    num_experts: int = 16
    num_experts_per_tok: int = 1
    router_hidden_size: int = 256
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = True
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    rope_parameters: dict[str, dict[str, Any]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_ROPE)))
    cca_time0: int = 2
    cca_time1: int = 2
    attention_bias: bool = False
    lm_head_bias: bool = False
    hidden_act: str = "silu"
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 106
    skip_passthrough: bool = False

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = ["hybrid"] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        rope = {k: dict(v) for k, v in (self.rope_parameters or {}).items() if isinstance(v, dict)}
        for layer_type, default in DEFAULT_ROPE.items():
            rope.setdefault(layer_type, dict(default))
        self.rope_parameters = rope
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first field of the wrong type or value (JSON strings for numbers,
        strings or numbers for booleans, fractional sizes) or inconsistent with the others."""
        positive = (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "moe_intermediate_size", "num_experts", "router_hidden_size", "cca_time0", "cca_time1",
            "max_position_embeddings", "num_experts_per_tok",
        )
        for name in positive:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"ZayaConfig.{name} must be a positive integer, got {value!r}")
        for name in ("tie_word_embeddings", "attention_bias", "lm_head_bias", "skip_passthrough"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"ZayaConfig.{name} must be a boolean (true or false), got {value!r}")
        if self.sliding_window is not None and (not _is_int(self.sliding_window) or self.sliding_window < 1):
            raise ValueError(f"ZayaConfig.sliding_window must be a positive integer or null, got "
                             f"{self.sliding_window!r}")
        if not _is_real(self.rms_norm_eps) or not math.isfinite(self.rms_norm_eps) or self.rms_norm_eps < 0:
            raise ValueError(f"ZayaConfig.rms_norm_eps must be a finite number >= 0, got {self.rms_norm_eps!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if name == "eos_token_id" and isinstance(value, list) else [value]
            if value is not None and any(not _is_int(t) or t < 0 for t in ids):
                raise ValueError(f"ZayaConfig.{name} must be null or a non-negative integer"
                                 f"{' (or a list of them)' if name == 'eos_token_id' else ''}, got {value!r}")
        if not all(isinstance(t, str) for t in self.layer_types):
            raise ValueError(f"ZayaConfig.layer_types must be a list of strings, got {self.layer_types!r}")
        for layer_type in LAYER_TYPES:
            rope = self.rope_parameters[layer_type]
            key = f"ZayaConfig.rope_parameters[{layer_type!r}]"
            if rope.get("rope_type", "default") != "default":
                raise ValueError(f"{key}['rope_type'] must be 'default' (the only RoPE ZAYA1 uses), got "
                                 f"{rope['rope_type']!r}")
            theta = rope.get("rope_theta")
            if not _is_real(theta) or not math.isfinite(theta) or theta <= 0:
                raise ValueError(f"{key}['rope_theta'] must be a finite number > 0, got {theta!r}")
            factor = rope.get("partial_rotary_factor", 0.5)
            if not _is_real(factor) or not 0 < factor <= 1:
                raise ValueError(f"{key}['partial_rotary_factor'] must lie in (0, 1], got {factor!r}")
        if self.num_experts_per_tok != 1:
            raise ValueError(f"ZAYA1 routes each token to one expert; num_experts_per_tok={self.num_experts_per_tok}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})"
            )
        if self.head_dim % 2 or (self.num_key_value_heads * self.head_dim) % 2:
            raise ValueError(f"head_dim must be even, got {self.head_dim}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"unknown layer types {unknown}; expected {list(LAYER_TYPES)}")
        if "hybrid_sliding" in self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError("sliding_window must be a positive integer when a layer is 'hybrid_sliding'")
        if self.hidden_act != "silu":
            raise ValueError(f"only hidden_act='silu' is supported, got {self.hidden_act!r}")
        for layer_type in set(self.layer_types):
            factor = self.partial_rotary_factor(layer_type)
            rd = int(self.head_dim * factor)
            if rd % 2 or not 0 < rd <= self.head_dim:
                raise ValueError(f"partial_rotary_factor {factor} gives {rd} rotary dims for head_dim {self.head_dim}")

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def conv_state_len(self) -> int:
        """Pre-conv columns carried between decode steps: (k0 - 1) + (k1 - 1)."""
        return (self.cca_time0 - 1) + (self.cca_time1 - 1)

    def rope_theta(self, layer_type: str) -> float:
        return float(self.rope_parameters[layer_type]["rope_theta"])

    def partial_rotary_factor(self, layer_type: str) -> float:
        return float(self.rope_parameters[layer_type].get("partial_rotary_factor", 0.5))

    def window(self, layer_idx: int) -> int | None:
        """Sliding window (keys kept, the current one included) of a layer, or None for full attention."""
        return self.sliding_window if self.layer_types[layer_idx] == "hybrid_sliding" else None

    # -- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The transformers-native config.json content."""
        out = dataclasses.asdict(self)
        out["model_type"] = "zaya"
        out["architectures"] = ["ZayaForCausalLM"]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ZayaConfig":
        """Builds a config from either layout's config.json content; unknown keys are ignored."""
        if not isinstance(raw, dict):
            raise ValueError(f"a ZAYA config must be a JSON object, got {type(raw).__name__}")
        if is_zyphra_config(raw):
            try:
                raw = _native_from_zyphra(raw)
            except KeyError as exc:
                raise ValueError(f"original ZAYA config lacks the key {exc.args[0]!r}") from None
        raw = dict(raw)
        rope = raw.get("rope_parameters")
        if isinstance(rope, dict):
            rope = {k: v for k, v in rope.items() if isinstance(v, dict)}  # drop a stray top-level rope_type
            raw["rope_parameters"] = rope
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise ValueError(f"invalid ZAYA config: {exc}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ZayaConfig":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(raw)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _zyphra_int(raw: dict[str, Any], key: str, default: Any = None) -> int:
    """raw[key] (or default when absent) as an int; ValueError naming the key for anything but an integer."""
    value = raw[key] if default is None else raw.get(key, default)
    if not _is_int(value):
        raise ValueError(f"original ZAYA config: {key} must be an integer, got {value!r}")
    return int(value)


def _zyphra_real(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if not _is_real(value):
        raise ValueError(f"original ZAYA config: {key} must be a number, got {value!r}")
    return float(value)


def is_zyphra_config(raw: dict[str, Any]) -> bool:
    """True for the original Zyphra (alternating attention/MoE sub-layer) config.json."""
    return "ffn_hidden_size" in raw or "zaya_mlp_expansion" in raw


def _native_from_zyphra(raw: dict[str, Any]) -> dict[str, Any]:
    """The transformers-native keys of an original Zyphra config; numbers must be numbers (ValueError naming the
    original key), the rest is checked by ZayaConfig.validate."""
    sub_layers = _zyphra_int(raw, "num_hidden_layers")
    if sub_layers % 2:
        raise ValueError(f"original ZAYA configs alternate attention and MoE sub-layers; got {sub_layers} layers")
    layers = sub_layers // 2
    topk_key = "moe_router_topk" if "moe_router_topk" in raw else "num_experts_per_tok"
    topk = _zyphra_int(raw, topk_key, 1)
    if topk != 1:
        raise ValueError(f"{topk_key} must be 1 for ZAYA1, got {topk}")
    swa = raw.get("swa_layers") or []
    if not isinstance(swa, list) or not all(_is_int(w) for w in swa):
        raise ValueError(f"original ZAYA config: swa_layers must be a list of integers, got {swa!r}")
    if len(swa) == sub_layers:
        swa = swa[::2]
    elif swa and len(swa) != layers:
        raise ValueError(f"swa_layers has {len(swa)} entries for {sub_layers} sub-layers")
    layer_types = ["hybrid_sliding" if w > 0 else "hybrid" for w in swa] or ["hybrid"] * layers
    windows = [int(w) for w in swa if w > 0]
    factor = _zyphra_real(raw, "partial_rotary_factor", 0.5)
    ffn = _zyphra_int(raw, "ffn_hidden_size")
    if ffn % 2:
        raise ValueError(f"original ZAYA config: ffn_hidden_size (gate and up halves) must be even, got {ffn}")
    eps_key = "norm_epsilon" if "norm_epsilon" in raw else "rms_norm_eps"
    head_key = "head_dim" if raw.get("head_dim") else "kv_channels"
    kv_key = "num_key_value_heads" if raw.get("num_key_value_heads") else "num_query_groups"
    native = {
        k: v
        for k, v in raw.items()
        if k not in _ZYPHRA_IGNORED and k not in ("swa_layers", "rope_theta", "swa_rotary_base")
    }
    native.update(
        num_hidden_layers=layers,
        router_hidden_size=_zyphra_int(raw, "zaya_mlp_expansion"),
        moe_intermediate_size=ffn // 2,
        rms_norm_eps=_zyphra_real(raw, eps_key, 1e-5),
        num_experts_per_tok=1,
        head_dim=_zyphra_int(raw, head_key),
        num_key_value_heads=_zyphra_int(raw, kv_key),
        layer_types=layer_types,
        sliding_window=max(windows) + 1 if windows else None,
        cca_time0=raw.get("cca_time0", 2),
        cca_time1=raw.get("cca_time1", 2),
        tie_word_embeddings=raw.get("tie_word_embeddings", True),
        rope_parameters={
            "hybrid": {"rope_type": "default", "rope_theta": _zyphra_real(raw, "rope_theta", 5_000_000.0),
                       "partial_rotary_factor": factor},
            "hybrid_sliding": {"rope_type": "default", "rope_theta": _zyphra_real(raw, "swa_rotary_base", 10_000.0),
                               "partial_rotary_factor": factor},
        },
    )
    return native

"""ZayaConfig: reads transformers-native `config.json` and the original Zyphra one (SPEC section 3)."""

from __future__ import annotations

import dataclasses
import json
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
        """Raises ValueError naming the first inconsistent field."""
        positive = (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "moe_intermediate_size", "num_experts", "router_hidden_size", "cca_time0", "cca_time1",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ZayaConfig.{name} must be a positive integer, got {value!r}")
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
        if not (self.rms_norm_eps >= 0):
            raise ValueError(f"rms_norm_eps must be non-negative, got {self.rms_norm_eps}")
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


def is_zyphra_config(raw: dict[str, Any]) -> bool:
    """True for the original Zyphra (alternating attention/MoE sub-layer) config.json."""
    return "ffn_hidden_size" in raw or "zaya_mlp_expansion" in raw


def _native_from_zyphra(raw: dict[str, Any]) -> dict[str, Any]:
    sub_layers = int(raw["num_hidden_layers"])
    if sub_layers % 2:
        raise ValueError(f"original ZAYA configs alternate attention and MoE sub-layers; got {sub_layers} layers")
    layers = sub_layers // 2
    topk = int(raw.get("moe_router_topk", raw.get("num_experts_per_tok", 1)))
    if topk != 1:
        raise ValueError(f"moe_router_topk must be 1 for ZAYA1, got {topk}")
    swa = raw.get("swa_layers") or []
    if len(swa) == sub_layers:
        swa = swa[::2]
    elif swa and len(swa) != layers:
        raise ValueError(f"swa_layers has {len(swa)} entries for {sub_layers} sub-layers")
    layer_types = ["hybrid_sliding" if int(w) > 0 else "hybrid" for w in swa] or ["hybrid"] * layers
    windows = [int(w) for w in swa if int(w) > 0]
    factor = float(raw.get("partial_rotary_factor", 0.5))
    native = {
        k: v
        for k, v in raw.items()
        if k not in _ZYPHRA_IGNORED and k not in ("swa_layers", "rope_theta", "swa_rotary_base")
    }
    native.update(
        num_hidden_layers=layers,
        router_hidden_size=int(raw["zaya_mlp_expansion"]),
        moe_intermediate_size=int(raw["ffn_hidden_size"]) // 2,
        rms_norm_eps=float(raw.get("norm_epsilon", raw.get("rms_norm_eps", 1e-5))),
        num_experts_per_tok=1,
        head_dim=int(raw.get("head_dim") or raw["kv_channels"]),
        num_key_value_heads=int(raw.get("num_key_value_heads") or raw["num_query_groups"]),
        layer_types=layer_types,
        sliding_window=max(windows) + 1 if windows else None,
        cca_time0=int(raw.get("cca_time0", 2)),
        cca_time1=int(raw.get("cca_time1", 2)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        rope_parameters={
            "hybrid": {"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 5_000_000.0)),
                       "partial_rotary_factor": factor},
            "hybrid_sliding": {"rope_type": "default", "rope_theta": float(raw.get("swa_rotary_base", 10_000.0)),
                               "partial_rotary_factor": factor},
        },
    )
    return native

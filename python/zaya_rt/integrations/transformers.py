"""transformers drop-in: registers `experts_implementation="zaya_rt"` in transformers' ExpertsInterface and
`attn_implementation="zaya_rt"` in its AttentionInterface (with a matching mask function).

`import zaya_rt` never imports transformers. If transformers is already imported, registration happens at once;
otherwise an import hook registers it the moment `transformers.integrations.moe` is first imported. Then
`ZayaForCausalLM.from_pretrained(path, experts_implementation="zaya_rt")` (or any model whose experts use
transformers' `@use_experts_implementation` with concatenated, untransposed, bias-free gate/up weights) runs
`zaya_rt.ops.moe_experts`; `attn_implementation="zaya_rt"` runs `zaya_rt.ops.attention_varlen` (unpadded batches;
a padded batch gets transformers' boolean mask and the masked reference attention).
"""

from __future__ import annotations

import importlib.abc
import sys

import torch

IMPLEMENTATION = "zaya_rt"
_MOE_MODULE = "transformers.integrations.moe"


def zaya_rt_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """transformers experts forward: hidden_states [T, D], top_k_index [T, k], top_k_weights [T, k] -> [T, D]."""
    if getattr(self, "has_bias", False) or getattr(self, "is_transposed", False) or not getattr(self, "has_gate", True):
        raise NotImplementedError(
            f"{type(self).__name__}: experts_implementation='zaya_rt' supports gated, untransposed, bias-free experts"
        )
    if not getattr(self, "is_concatenated", True):
        raise NotImplementedError(f"{type(self).__name__}: zaya_rt needs [gate; up] concatenated gate_up_proj")
    from zaya_rt.ops import moe_experts

    return moe_experts(hidden_states, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj)


def zaya_rt_attention_mask(*args, attention_mask=None, **kwargs):
    """transformers mask function: None (plain causal, handled by the kernel) unless some token is padding,
    then transformers' boolean SDPA-style mask [B, 1, T, S]."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None or bool(attention_mask.all()):
        return None
    kwargs.pop("allow_is_causal_skip", None)
    return sdpa_mask(*args, attention_mask=attention_mask, allow_is_causal_skip=False, **kwargs)


def zaya_rt_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
):
    """transformers attention: query [B, Hq, T, d], key/value [B, Hk, S, d] (S >= T: cached keys first).
    Returns (out [B, T, Hq, d], None). Causal with the T queries at the last T positions."""
    from zaya_rt import ops, ref

    if dropout != 0.0:
        raise NotImplementedError("attn_implementation='zaya_rt' has no attention dropout")
    B, Hq, T, d = query.shape
    S = key.shape[2]
    scale = d**-0.5 if scaling is None else scaling
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, tokens, heads, d] views
    if attention_mask is None and not ops.attention.kernel_takes_head_dim(d):
        q_pos = torch.arange(S - T, S, device=q.device)[:, None]
        k_pos = torch.arange(S, device=q.device)[None]
        allowed = (k_pos <= q_pos) & (k_pos > q_pos - sliding_window if sliding_window else True)
        attention_mask = allowed.expand(B, 1, T, S)
    if attention_mask is not None:  # padded batch: boolean mask [B, 1, T, S]
        allowed = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0
        return ref.attention(q, k, v, allowed, scale), None
    cu_q = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=q.device)
    cu_k = torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device=q.device)
    out = ops.attention_varlen(q.reshape(B * T, Hq, d), k.reshape(B * S, *k.shape[2:]),
                               v.reshape(B * S, *v.shape[2:]), cu_q, cu_k, causal=True, window=sliding_window,
                               scale=scale)
    return out.view(B, T, Hq, d), None


def _register_experts(module) -> None:
    module.ExpertsInterface.register(IMPLEMENTATION, zaya_rt_experts_forward)


def _register_attention(module) -> None:
    module.AttentionInterface.register(IMPLEMENTATION, zaya_rt_attention_forward)


def _register_mask(module) -> None:
    module.AttentionMaskInterface.register(IMPLEMENTATION, zaya_rt_attention_mask)


# transformers module -> registration to run once that module has executed (each needs only its own module,
# so none of them imports a half-initialised transformers module).
_HOOKS = {
    _MOE_MODULE: _register_experts,
    "transformers.modeling_utils": _register_attention,
    "transformers.masking_utils": _register_mask,
}


def register() -> None:
    """Adds "zaya_rt" to transformers' ExpertsInterface, AttentionInterface and AttentionMaskInterface
    (imports transformers)."""
    import importlib

    for name, hook in _HOOKS.items():
        hook(importlib.import_module(name))


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Wraps the loaders of the modules in _HOOKS so each registration runs right after its module executes."""

    def __init__(self) -> None:
        self.pending = {name for name in _HOOKS if name not in sys.modules}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _HOOKS[fullname](module)
            self.pending.discard(fullname)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Registers with each transformers module in _HOOKS that is loaded, and hooks the others' import."""
    for name, hook in _HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])
    if any(name not in sys.modules for name in _HOOKS) and not any(
        isinstance(f, _RegisterOnImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _RegisterOnImport())

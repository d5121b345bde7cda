"""transformers drop-in: registers `experts_implementation="zaya_rt"` in transformers' ExpertsInterface.

`import zaya_rt` never imports transformers. If transformers is already imported, registration happens at once;
otherwise an import hook registers it the moment `transformers.integrations.moe` is first imported. Then
`ZayaForCausalLM.from_pretrained(path, experts_implementation="zaya_rt")` (or any model whose experts use
transformers' `@use_experts_implementation` with concatenated, untransposed, bias-free gate/up weights) runs
`zaya_rt.ops.moe_experts`.
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


def register() -> None:
    """Adds "zaya_rt" to transformers' ExpertsInterface (imports transformers)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(IMPLEMENTATION, zaya_rt_experts_forward)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of transformers.integrations.moe so registration runs right after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MOE_MODULE:
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
            module.ExpertsInterface.register(IMPLEMENTATION, zaya_rt_experts_forward)
            if self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Registers now if transformers' MoE integration is loaded, else once it is."""
    if _MOE_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())

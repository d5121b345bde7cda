"""The ZAYA1 MoE++ model: config, modules, caches and checkpoints."""

from zaya_rt.model.cache import ZayaCache
from zaya_rt.model.checkpoint import load, save
from zaya_rt.model.config import ZayaConfig
from zaya_rt.model.modeling import ZayaForCausalLM

__all__ = ["ZayaCache", "ZayaConfig", "ZayaForCausalLM", "load", "save"]

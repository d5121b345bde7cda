"""Runtime: paged KV + CCA state cache, continuous-batching generation engine, sampling, tokenizers."""

from zaya_rt.runtime.engine import Engine
from zaya_rt.runtime.kv_cache import PagedKVCache
from zaya_rt.runtime.params import SamplingParams

__all__ = ["Engine", "PagedKVCache", "SamplingParams"]

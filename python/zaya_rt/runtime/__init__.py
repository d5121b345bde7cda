"""Runtime: paged KV + CCA state cache, continuous-batching generation engine, sampling, tokenizers."""

from zaya_rt.runtime.engine import Engine
from zaya_rt.runtime.kv_cache import PagedKVCache
from zaya_rt.runtime.params import Completion, SamplingParams
from zaya_rt.runtime.tiny import tiny_config, tiny_model
from zaya_rt.runtime.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "Completion", "Engine", "HFTokenizer", "PagedKVCache", "SamplingParams", "load_tokenizer", "tiny_config",
           "tiny_model"]

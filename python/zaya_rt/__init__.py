"""zaya_rt: kernels and runtime for Zyphra's ZAYA1 mixture-of-experts (MoE++) models.

`import zaya_rt` registers the `torch.ops.zaya_rt` custom ops. Main entry points: `zaya_rt.load`,
`zaya_rt.ZayaForCausalLM`, `zaya_rt.ZayaConfig`, the ops in `zaya_rt.ops`, and generation with
`zaya_rt.Engine` / `zaya_rt.SamplingParams`.
"""

from zaya_rt import _C, ops, ref, train
from zaya_rt.integrations import transformers as _transformers_integration
from zaya_rt.model import ZayaCache, ZayaConfig, ZayaForCausalLM, load, save

_transformers_integration.install()

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Engine", "SamplingParams"):  # lazy: the runtime is not needed to use the ops
        from zaya_rt import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'zaya_rt' has no attribute {name!r}")


__all__ = ["Engine", "SamplingParams", "ZayaCache", "ZayaConfig", "ZayaForCausalLM", "_C", "load", "ops", "ref", "save", "train"]

"""zaya_rt: kernels and runtime for Zyphra's ZAYA1 mixture-of-experts (MoE++) models.

`import zaya_rt` registers the `torch.ops.zaya_rt` custom ops. Main entry points: `zaya_rt.load`,
`zaya_rt.ZayaForCausalLM`, `zaya_rt.ZayaConfig`, and the ops in `zaya_rt.ops`.
"""

from zaya_rt import _C, ops, ref, train
from zaya_rt.integrations import transformers as _transformers_integration
from zaya_rt.model import ZayaCache, ZayaConfig, ZayaForCausalLM, load, save

_transformers_integration.install()

__version__ = "0.1.0"
__all__ = ["ZayaCache", "ZayaConfig", "ZayaForCausalLM", "_C", "load", "ops", "ref", "save", "train"]

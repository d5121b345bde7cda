"""torch.library custom ops over zaya_rt._C (namespace `torch.ops.zaya_rt`), one module per op family."""

from zaya_rt.ops.attention import attention_decode, attention_varlen
from zaya_rt.ops.cca import cca_prep
from zaya_rt.ops.cross_entropy import cross_entropy_rows
from zaya_rt.ops.moe import grouped_gemm, moe_dispatch, moe_experts
from zaya_rt.ops.newton_schulz import newton_schulz
from zaya_rt.ops.norms import residual_rms_norm, rms_norm
from zaya_rt.ops.router import zaya_router
from zaya_rt.ops.runtime import copy_pages, gather_tail, kv_write
from zaya_rt.ops.sampling import sample_tokens

__all__ = [
    "attention_decode",
    "attention_varlen",
    "cca_prep",
    "copy_pages",
    "cross_entropy_rows",
    "gather_tail",
    "kv_write",
    "sample_tokens",
    "grouped_gemm",
    "moe_dispatch",
    "moe_experts",
    "newton_schulz",
    "residual_rms_norm",
    "rms_norm",
    "zaya_router",
]

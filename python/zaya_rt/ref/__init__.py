"""Plain-PyTorch references of every zaya_rt op: the oracle for tests (run them in float64), and the model's
implementation of ops that have no kernel yet. Each function works in the dtype it is given."""

from zaya_rt.ref.attention import attention, attention_decode_ref, attention_varlen_lse_ref, attention_varlen_ref
from zaya_rt.ref.grouped_gemm import grouped_gemm
from zaya_rt.ref.cca import cca_conv_qk, cca_prep, cca_project, partial_rope, qk_norm, rope_cos_sin, rope_inv_freq
from zaya_rt.ref.moe import moe_experts
from zaya_rt.ref.newton_schulz import newton_schulz
from zaya_rt.ref.norms import residual_rms_norm, rms_norm
from zaya_rt.ref.router import zaya_router

__all__ = [
    "attention",
    "attention_decode_ref",
    "attention_varlen_lse_ref",
    "attention_varlen_ref",
    "cca_conv_qk",
    "cca_prep",
    "cca_project",
    "grouped_gemm",
    "moe_experts",
    "newton_schulz",
    "partial_rope",
    "qk_norm",
    "residual_rms_norm",
    "rms_norm",
    "rope_cos_sin",
    "rope_inv_freq",
    "zaya_router",
]

"""Which implementation each op of a packed training step takes (`ZayaForCausalLM.loss` with cu_seqlens, forward
and backward), for a model shape, device type and dtype, without running it: the CPU build's answer to "does a
CUDA training step call any reference fallback?" (tests/test_training_routes.py; on a GPU the same test also
watches a real step). Each answer comes from the rule the op itself applies (ops.cca.route, ops.router.route,
ops.attention.kernel_takes_head_dim as the model uses it), so the report cannot drift from the ops.

Implementations: KERNEL (zaya_rt._C), COMPOSED (a hand-written backward over zaya_rt kernels and torch ops),
TORCH (torch's own op: embeddings, nn.Linear projections, the chunked LM-head loss), REFERENCE (zaya_rt.ref,
the float64-grade fallback), UNAVAILABLE (the op raises: no kernel for that device in this build).
"""

from __future__ import annotations

import torch

from zaya_rt import _C
from zaya_rt.model.config import ZayaConfig
from zaya_rt.ops import cca, router
from zaya_rt.ops._lib import FLOAT_DTYPES
from zaya_rt.ops.attention import kernel_takes_head_dim

KERNEL, COMPOSED, TORCH, REFERENCE, UNAVAILABLE = "kernel", "composed", "torch", "reference", "unavailable"


def training_step_routes(config: ZayaConfig, *, device_type: str, dtype: torch.dtype,
                         gpu_backend: str | None = None) -> dict[str, str]:
    """{op name: implementation} of one packed forward + backward of a model with `config`, weights and
    activations in `dtype` (float32/float16/bfloat16) on a `device_type` device ("cpu" or "cuda"), with _C
    built for `gpu_backend` ("none", "cuda", "hip"; default: this _C's)."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in FLOAT_DTYPES]}, got {dtype}")
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    backend = _C.gpu_backend if gpu_backend is None else gpu_backend
    # Ops with no fallback: their kernel, or an error where this build has none for the device.
    kernel = KERNEL if device_type == "cpu" or backend != "none" else UNAVAILABLE
    cca_route = cca.route(device_type, dtype, backend)
    attention = kernel if kernel_takes_head_dim(config.head_dim) else REFERENCE
    return {
        "embedding": TORCH, "projections (nn.Linear)": TORCH, "lm_head cross-entropy": TORCH,
        "rms_norm": kernel, "rms_norm backward": kernel,
        "residual_rms_norm": kernel, "residual_rms_norm backward": kernel,
        "cca_prep": cca_route, "cca_prep backward": cca_route,
        "attention_varlen": attention, "attention_varlen backward": attention,
        "zaya_router": router.route(device_type, dtype, backend), "zaya_router backward": COMPOSED,
        "moe_experts": kernel, "moe_experts backward": COMPOSED if kernel == KERNEL else UNAVAILABLE,
    }

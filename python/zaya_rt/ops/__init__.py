"""torch.library custom ops over zaya_rt._C (namespace `torch.ops.zaya_rt`), one module per op family."""

from zaya_rt.ops.norms import residual_rms_norm, rms_norm

__all__ = ["rms_norm", "residual_rms_norm"]

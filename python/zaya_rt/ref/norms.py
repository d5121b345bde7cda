"""Reference norms (see zaya_rt.ops.norms). Statistics in fp32 or wider; float64 inputs stay float64."""

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., D], weight: [D] -> weight * cast(x / sqrt(mean(x^2) + eps)) in weight's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(weight.dtype)


def residual_rms_norm(y, h, y_bias, y_scale, h_bias, h_scale, weight, eps):
    """Returns (r, rms_norm(r)) with r = (y + y_bias) * y_scale + (h + h_bias) * h_scale (fp32 or wider)."""
    wide = torch.promote_types(torch.promote_types(y.dtype, h.dtype), torch.float32)
    r = (y.to(wide) + y_bias.to(wide)) * y_scale.to(wide) + (h.to(wide) + h_bias.to(wide)) * h_scale.to(wide)
    return r, rms_norm(r, weight, eps)

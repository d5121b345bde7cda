"""Fused token sampler (SPEC section 4 "sampling").

  sample_tokens(logits[B, V] f32/f16/bf16, temperature[B] f32, top_k[B] int32, top_p[B] f32, min_p[B] f32,
                seed[B] int64, step[B] int64) -> tokens[B] int64

Per row: temperature 0 = argmax (first maximum); otherwise p = softmax(logits / temperature), top-k (0 = off),
then top-p over the survivors (drop a token when the mass before it in descending order is >= top_p), then
min-p (keep p >= min_p * max p), and the token at uniform u = sampling_uniform(seed, step) of the kept mass in
ascending token order. u is counter-based, so a request's tokens do not depend on the batch it shares.
Reference: zaya_rt.ref.sampling. Kernels: csrc/cpu/sampling.cpp and cuda/runtime_kernels.cuh (CUDA and HIP
builds of _C; one block per row, radix selection instead of a sort, u computed on the device, no host sync). On a
GPU the parameters are not value-checked (that would sync the host) and a row whose logits hold NaN or have no
finite maximum gets token -1 where the CPU raises. A GPU row picks another token than the CPU only when a
cumulative mass ratio lands within float64 rounding of top_p or u (sums in another order). A GPU tensor with a
_C built without a GPU backend falls back to `_torch_path` (PyTorch ops, uniforms made on the host).
"""

from __future__ import annotations

import torch

from zaya_rt import _C
from zaya_rt.ops._lib import (
    DTYPE_CODES, FLOAT_DTYPES, check_same_device, check_tensor, device_args, lib, register_kernels, set_workspace,
    workspace,
)

lib.define("sample_tokens(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, Tensor seed, "
           "Tensor step) -> Tensor")

_PARAMS = (("temperature", torch.float32), ("top_k", torch.int32), ("top_p", torch.float32),
           ("min_p", torch.float32), ("seed", torch.int64), ("step", torch.int64))


def sampling_uniform(seed: int, step: int) -> float:
    """The uniform in [0, 1) the sampler draws for (seed, step)."""
    return _C.sampling_uniform(int(seed), int(step))


def _check(logits, temperature, top_k, top_p, min_p, seed, step, values: bool = True) -> None:
    op = "sample_tokens"
    check_tensor(op, "logits", logits, dtypes=FLOAT_DTYPES, ndim=2)
    B, V = logits.shape
    if V == 0:
        raise ValueError(f"zaya_rt.{op}: logits has an empty vocabulary, shape {tuple(logits.shape)}")
    params = (temperature, top_k, top_p, min_p, seed, step)
    for (name, dtype), t in zip(_PARAMS, params):
        check_tensor(op, name, t, dtypes=(dtype,), ndim=1)
        if t.shape[0] != B:
            raise ValueError(f"zaya_rt.{op}: {name} has {t.shape[0]} entries for {B} rows")
    check_same_device(op, logits=logits, **{name: t for (name, _), t in zip(_PARAMS, params)})
    if values and temperature.device.type == "cpu" and B:
        if not bool(torch.isfinite(temperature).all()) or bool((temperature < 0).any()):
            raise ValueError(f"zaya_rt.{op}: temperature must be finite and >= 0, got {temperature.tolist()}")
        if bool((top_k < 0).any()):
            raise ValueError(f"zaya_rt.{op}: top_k must be >= 0 (0 = off), got {top_k.tolist()}")
        if not bool(((top_p > 0) & (top_p <= 1)).all()):
            raise ValueError(f"zaya_rt.{op}: top_p must lie in (0, 1], got {top_p.tolist()}")
        if not bool(((min_p >= 0) & (min_p <= 1)).all()):
            raise ValueError(f"zaya_rt.{op}: min_p must lie in [0, 1], got {min_p.tolist()}")


def _torch_path(logits, temperature, top_k, top_p, min_p, seed, step):
    """The same rule with PyTorch ops (the GPU fallback without GPU kernels in _C; a benchmark peer)."""
    B, V = logits.shape
    greedy = logits.argmax(-1)
    t = torch.where(temperature > 0, temperature, 1.0).double()[:, None]
    x = logits.double() / t
    p = torch.exp(x - x.max(-1, keepdim=True).values)
    sorted_p, order = torch.sort(p, dim=-1, descending=True, stable=True)
    rank = torch.arange(V, device=logits.device)[None]
    keep_sorted = (top_k[:, None] <= 0) | (rank < top_k[:, None].long())
    kept_p = torch.where(keep_sorted, sorted_p, 0.0)
    before = torch.cumsum(kept_p, -1) - kept_p
    keep_sorted &= (top_p[:, None] >= 1) | (before / kept_p.sum(-1, keepdim=True) < top_p[:, None].double())
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted) & (p >= min_p[:, None].double())
    w = torch.where(keep, p, 0.0)
    cum = torch.cumsum(w, -1)
    u = torch.tensor([sampling_uniform(s, k) for s, k in zip(seed.tolist(), step.tolist())],
                     dtype=torch.float64, device=logits.device)
    hit = (cum > (u * cum[:, -1])[:, None]) & keep
    last_kept = V - 1 - keep.flip(-1).int().argmax(-1)
    sampled = torch.where(hit.any(-1), hit.int().argmax(-1), last_kept)
    return torch.where(temperature == 0, greedy, sampled)


def sample_tokens_params(rows: torch.Tensor, params, out: torch.Tensor) -> _C.SampleParams:
    """rows: logits [B, V] (unit inner stride); params = (temperature, top_k, top_p, min_p, seed, step), each [B]
    contiguous in its dtype (module docstring); out [B] int64. No workspace yet (sample_workspace sizes it)."""
    p = _C.SampleParams()
    p.logits, p.row_stride, p.dtype = rows.data_ptr(), rows.stride(0), DTYPE_CODES[rows.dtype]
    p.temperature, p.top_k, p.top_p, p.min_p, p.seed, p.step = (t.data_ptr() for t in params)
    p.out, (p.B, p.V) = out.data_ptr(), rows.shape
    p.workspace, p.workspace_bytes = 0, 0
    return p


def _impl(logits, temperature, top_k, top_p, min_p, seed, step):
    _check(logits, temperature, top_k, top_p, min_p, seed, step)
    B, V = logits.shape
    on_cpu = logits.device.type == "cpu"
    if not on_cpu and _C.gpu_backend == "none":
        return _torch_path(logits, temperature, top_k, top_p, min_p, seed, step)
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    if B == 0:
        return out
    rows = logits if logits.stride(1) == 1 else logits.contiguous()
    params = [t.contiguous() for t in (temperature, top_k, top_p, min_p, seed, step)]
    p = sample_tokens_params(rows, params, out)
    # the GPU kernel needs no workspace (and reading temperature here would sync the host)
    ws_bytes = _C.sample_workspace(p, 0) if on_cpu and bool((temperature != 0).any()) else 0
    ws = workspace(ws_bytes, logits.device)
    _C.sample_tokens(set_workspace(p, ws), *device_args(rows))
    return out


def _fake(logits, temperature, top_k, top_p, min_p, seed, step):
    _check(logits, temperature, top_k, top_p, min_p, seed, step, values=False)
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


register_kernels("sample_tokens", _impl, _fake)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor, seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """tokens [B] int64 from logits [B, V]; per-row parameters as described in the module docstring."""
    for name, t in zip(("logits", *(n for n, _ in _PARAMS)), (logits, temperature, top_k, top_p, min_p, seed, step)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"zaya_rt.sample_tokens: {name} must be a torch.Tensor, got {type(t).__name__}")
    return torch.ops.zaya_rt.sample_tokens(logits, temperature, top_k, top_p, min_p, seed, step)

"""Cross-entropy over the LM head, fused and chunked: `linear_cross_entropy(hidden, weight, labels)` equals
`F.cross_entropy(F.linear(hidden, weight, bias).float(), labels)` without ever holding the [tokens, vocab]
logits: the loss-carrying tokens go through in chunks, and each chunk's logits become its loss and, under
autograd, at once its gradients (softmax - one-hot), which are folded into the gradients of hidden, weight and
bias before the next chunk. The backward only scales those by the incoming gradient (nothing at all when it is
exactly 1). Logits come out of the GEMM in the weights' dtype (as `F.linear` gives them); the log-softmax and
the gradient are fp32. On the CPU (float32/bfloat16/float16, no bias) one fused kernel per chunk
(ops/cross_entropy.py) turns the logits in place into the gradient, the reduction's scale folded in; elsewhere
(float64, GPU, a bias) torch ops do it.
"""

from __future__ import annotations

import torch

from zaya_rt.ops.cross_entropy import cross_entropy_rows

# Chunk logits of about this many elements (1024 tokens of a 32768 vocabulary) unless chunk_size says otherwise:
# few chunks keep the weight-gradient GEMMs long (their depth is the chunk) and round the accumulated gradient few
# times. Re-measured with the fused CPU kernel (forward + backward, 2048 tokens, D 512, V 32768, 2 threads, three
# runs on a loaded host): 512 and 1024 tokens within noise of each other, 256 and 2048 slower (fp32: 1.5-1.9x).
_CHUNK_ELEMENTS = 1 << 25
_REDUCTIONS = ("mean", "sum")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = -100, reduction: str = "mean",
                         chunk_size: int | None = None) -> torch.Tensor:
    """Next-token cross-entropy of the logits `hidden @ weight.T + bias`, fused and chunked over tokens.

    hidden [N, D] (or [..., D]) float32/bfloat16/float16; weight [V, D] and bias [V] (or None) in hidden's
    dtype; labels [N] (or hidden's leading shape) int64/int32, each in [0, V) or `ignore_index` (no loss).
    reduction "mean" (over non-ignored tokens; nan when all are ignored, as F.cross_entropy) or "sum".
    chunk_size: tokens per chunk (default: about 2**25 logits per chunk). Returns a float32 scalar.
    """
    _check(hidden, weight, labels, bias, ignore_index, reduction, chunk_size)
    D, V = weight.shape[1], weight.shape[0]
    hidden_ND = hidden.reshape(-1, D)
    labels_N = labels.reshape(-1)
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // V)
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if differentiable:
        return _LinearCrossEntropy.apply(hidden_ND, weight, bias, labels_N, ignore_index, reduction, chunk)
    loss, count, _, _ = _chunked(hidden_ND, weight, bias, labels_N, ignore_index, chunk, want_grads=False)
    return loss * _scale(reduction, count)


def _scale(reduction: str, count: int) -> float:
    """The factor from the summed loss to the reduced one (nan for a mean over no token, as F.cross_entropy)."""
    if reduction == "sum":
        return 1.0
    return 1.0 / count if count else float("nan")


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_ND, weight, bias, labels_N, ignore_index, reduction, chunk):
        loss, count, grads, folded = _chunked(hidden_ND, weight, bias, labels_N, ignore_index, chunk,
                                              want_grads=True, reduction=reduction)
        scale = _scale(reduction, count)
        ctx.residual_scale = 1.0 if folded else scale  # what the saved gradients still lack of the reduction
        ctx.count = count
        ctx.save_for_backward(*grads)
        ctx.has_bias = bias is not None
        ctx.dtype = weight.dtype
        return loss * scale

    @staticmethod
    def backward(ctx, grad_loss):
        d_hidden, d_weight, d_bias = ctx.saved_tensors
        if not ctx.count:  # no token: zero gradients
            s = torch.zeros_like(grad_loss)
        elif ctx.residual_scale == 1.0 and grad_loss.device.type == "cpu" and float(grad_loss) == 1.0:
            s = None  # the saved gradients are the answer: no pass over them
        else:
            s = grad_loss * ctx.residual_scale
        if s is not None:
            d_hidden = (d_hidden * s).to(ctx.dtype)
            d_weight = (d_weight * s).to(ctx.dtype)
            d_bias = d_bias * s
        d_bias = d_bias.to(ctx.dtype) if ctx.has_bias else None
        return d_hidden, d_weight, d_bias, None, None, None, None


def _fused_rows(hidden_ND, bias) -> bool:
    """Whether the chunks' softmax-cross-entropy runs in the fused CPU row kernel (ops/cross_entropy.py) rather
    than as torch passes: CPU, float32/bfloat16/float16, no bias (the bias gradient sums the unrounded
    gradient's columns, which the kernel does not keep)."""
    return hidden_ND.device.type == "cpu" and hidden_ND.dtype in _KERNEL_DTYPES and bias is None


def _chunked(hidden_ND, weight, bias, labels_N, ignore_index: int, chunk: int, want_grads: bool,
             reduction: str = "sum"):
    """(summed loss fp32, count of loss-carrying tokens, (d_hidden [N, D] and d_weight [V, D] in hidden's dtype,
    d_bias [V] fp32) or None without want_grads, folded). The gradients are of the summed loss or, when folded,
    of the reduced one (the kernel path folds the reduction's scale into the logits' gradient, except in
    float16, whose range would flush softmax / count to zero)."""
    N, D = hidden_ND.shape
    V = weight.shape[0]
    keep = (labels_N != ignore_index).nonzero().squeeze(1)
    count = keep.numel()
    all_kept = count == N
    h = hidden_ND if all_kept else hidden_ND.index_select(0, keep)
    targets = (labels_N if all_kept else labels_N.index_select(0, keep)).long()
    loss = torch.zeros((), dtype=torch.float64 if weight.dtype == torch.float64 else torch.float32,
                       device=hidden_ND.device)
    fused = _fused_rows(hidden_ND, bias)
    folded = fused and want_grads and count > 0 and weight.dtype != torch.float16
    grad_scale = _scale(reduction, count) if folded else 1.0
    grads = None
    if want_grads:
        d_h = torch.empty(count, D, dtype=hidden_ND.dtype, device=hidden_ND.device)
        # Accumulated in place in the weights' dtype (a GEMM accumulates in fp32 and rounds once per chunk): a
        # product in bf16 summed into an fp32 buffer would cost a [V, D] pass per chunk.
        d_w = (torch.empty if count else torch.zeros)(V, D, dtype=weight.dtype, device=weight.device)
        d_b = torch.zeros(V, dtype=torch.float32, device=weight.device) if bias is not None else None
    w_t = weight.t()
    wide = torch.float64 if weight.dtype == torch.float64 else torch.float32
    # One logits buffer for every chunk: a fresh one would be mapped and page-faulted in again each time.
    logits_buf = torch.empty(min(chunk, count), V, dtype=weight.dtype, device=weight.device) if fused else None
    for start in range(0, count, chunk):
        h_c = h[start : start + chunk]
        t_c = targets[start : start + chunk]
        if fused:
            # the logits become d(grad_scale * summed loss)/d(logits) = (softmax - one-hot) * grad_scale, in place
            g = torch.mm(h_c, w_t, out=logits_buf[: t_c.numel()])
            loss += cross_entropy_rows(g, t_c, ignore_index, grad_scale).sum()
        else:
            rows = torch.arange(t_c.numel(), device=t_c.device)
            logits = torch.mm(h_c, w_t) if bias is None else torch.addmm(bias, h_c, w_t)
            z = torch.log_softmax(logits, dim=1, dtype=wide)  # as F.cross_entropy(logits.float())
            loss -= z[rows, t_c].sum()
            if not want_grads:
                continue
            # z becomes d(summed loss)/d(logits) = softmax - one-hot, in place.
            z.exp_()
            z[rows, t_c] -= 1.0
            g = z.to(weight.dtype)
            if d_b is not None:
                d_b += z.sum(0)
        if not want_grads:
            continue
        torch.mm(g, weight, out=d_h[start : start + chunk])
        if start == 0:
            torch.mm(g.t(), h_c, out=d_w)
        else:
            d_w.addmm_(g.t(), h_c)
    if want_grads:
        if all_kept:
            d_hidden = d_h
        else:
            d_hidden = torch.zeros_like(hidden_ND).index_copy_(0, keep, d_h)
        grads = (d_hidden, d_w, d_b if d_b is not None else d_w.new_empty(0))
    return loss, count, grads, folded


def _check(hidden, weight, labels, bias, ignore_index, reduction, chunk_size) -> None:
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_cross_entropy: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not hidden.is_floating_point():
        raise TypeError(f"linear_cross_entropy: hidden must be a float tensor, got {hidden.dtype}")
    if weight.dim() != 2 or hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: weight must be [vocab, D] with D = hidden's last dim; got hidden "
                         f"{tuple(hidden.shape)}, weight {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"linear_cross_entropy: weight ({weight.dtype}) must have hidden's dtype ({hidden.dtype})")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != weight.shape[:1] or bias.dtype != hidden.dtype:
            raise ValueError(f"linear_cross_entropy: bias must be [vocab] = [{weight.shape[0]}] in {hidden.dtype}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"linear_cross_entropy: labels must be int64 or int32, got {labels.dtype}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"linear_cross_entropy: labels {tuple(labels.shape)} must match hidden's leading shape "
                         f"{tuple(hidden.shape[:-1])}")
    if len({hidden.device, weight.device, labels.device}) != 1:
        raise ValueError("linear_cross_entropy: hidden, weight and labels must be on one device")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"linear_cross_entropy: chunk_size must be a positive int, got {chunk_size!r}")
    # Reading labels costs a host sync on GPU, so only host-resident labels are range-checked (eager mode).
    if labels.device.type == "cpu" and labels.numel() and not torch.compiler.is_compiling():
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= weight.shape[0]))
        if bool(bad.any()):
            raise ValueError(f"linear_cross_entropy: labels must lie in [0, {weight.shape[0]}) or equal ignore_index "
                             f"({ignore_index}); got {int(labels[bad][0])}")

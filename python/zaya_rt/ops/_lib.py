"""The `zaya_rt` torch.library namespace and the tensor -> `_C` argument helpers shared by every op module.

Hot ops are registered straight into a `torch.library.Library` (`define` + `impl`), which costs about a
microsecond per call, instead of through `torch.library.custom_op` (SPEC section 10).
"""

from __future__ import annotations

import threading

import torch

from zaya_rt import _C

lib = torch.library.Library("zaya_rt", "DEF")

# Must match zaya_rt::DType in csrc/include/zaya_rt/common.h.
DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.int32: 3,
    torch.int64: 4,
    torch.float64: 5,
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# CPU workspaces up to this size are kept per thread and reused (see `workspace`).
SCRATCH_MAX_BYTES = 32 << 20
_scratch = threading.local()


def workspace(nbytes: int, device: torch.device, reuse_max_bytes: int = SCRATCH_MAX_BYTES) -> torch.Tensor:
    """A uint8 scratch tensor of at least max(nbytes, 64) bytes for one kernel call on `device`.

    CPU kernels run synchronously, so each thread reuses one growing buffer for calls of up to reuse_max_bytes
    (default SCRATCH_MAX_BYTES): a fresh allocation of a few MB costs an mmap/munmap pair per call (tens of
    microseconds on a small VM), and one past glibc's 32 MB mmap threshold page faults on every call. A kernel
    whose training-size workspace is larger may raise the cap (the buffer then stays that large). Larger CPU
    workspaces and device workspaces (stream-ordered by the caching allocator) are allocated per call.
    """
    nbytes = max(int(nbytes), 64)
    if device.type != "cpu" or nbytes > reuse_max_bytes:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < nbytes:
        buf = _scratch.buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf


def set_workspace(p, ws: torch.Tensor):
    """Points the params object p's workspace fields at the uint8 tensor ws (kept alive by the caller until the
    kernel returns) and returns p."""
    p.workspace, p.workspace_bytes = ws.data_ptr(), ws.numel()
    return p


def run_kernel(entry, workspace_bytes, p, t: torch.Tensor) -> None:
    """Runs the `_C` entry point `entry(p, device)` on t's device, with the workspace `workspace_bytes(p, device
    type)` asks for (e.g. run_kernel(_C.grouped_gemm, _C.grouped_gemm_workspace, p, a))."""
    dev = device_args(t)
    ws = workspace(workspace_bytes(p, dev[0]), t.device)
    entry(set_workspace(p, ws), *dev)


def device_args(t: torch.Tensor) -> tuple[int, int, int]:
    """(device type code, device index, stream address) for the `_C` call on t's device."""
    if t.device.type == "cpu":
        return 0, 0, 0
    return 1, t.device.index or 0, torch.cuda.current_stream(t.device).cuda_stream


def row_stride(t2d: torch.Tensor) -> int:
    return t2d.stride(0) if t2d.shape[0] > 1 else t2d.shape[1]


def as_rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """A [rows, dim] view of t with unit inner stride (copies only when no such view exists)."""
    t2 = t if t.dim() == 2 else t.reshape(-1, dim)
    if dim > 1 and t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2


def check_tensor(op: str, name: str, t, *, dtypes=FLOAT_DTYPES, ndim: int | None = None) -> None:
    """Raises TypeError/ValueError naming the op and argument when t is not a usable tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"zaya_rt.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"zaya_rt.{op}: {name} has dtype {str(t.dtype).removeprefix('torch.')}, expected one of {allowed}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"zaya_rt.{op}: {name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"zaya_rt.{op}: {name} is on unsupported device {t.device}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"zaya_rt.{op}: all tensors must be on one device, got {listing}")


def check_eps(op: str, eps: float) -> None:
    if not isinstance(eps, (int, float)) or not (eps >= 0.0) or eps == float("inf"):
        raise ValueError(f"zaya_rt.{op}: eps must be a finite non-negative number, got {eps!r}")


def register_kernels(name: str, impl, fake, autograd: tuple | None = None) -> None:
    """Registers `impl` as the CPU and CUDA kernel of `zaya_rt::name` (it calls _C, which picks the backend
    from the tensors' device), `fake` as its meta kernel and, when given, autograd = (setup_context, backward)
    through register_autograd."""
    for key in ("CPU", "CUDA"):
        lib.impl(name, impl, key)
    torch.library.register_fake(f"zaya_rt::{name}", fake, lib=lib)
    if autograd is not None:
        register_autograd(name, *autograd)


# Tensor types a direct kernel call accepts: plain tensors (nn.Parameter adds no dispatch behaviour).
_PLAIN_ARG_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))


def call_op(op, args: tuple, cpu_impl=None):
    """op(*args) for an op whose Autograd kernel comes from `register_autograd`.

    When no tensor argument needs a gradient (inference) the call enters the dispatcher once, below autograd,
    instead of twice. With `cpu_impl` (the op's CPU kernel) it skips the dispatcher altogether when nothing it
    provides is in play: eager mode, no TorchFunction/TorchDispatch mode, no functorch transform, plain CPU
    tensors. Each dispatcher trip costs tens of microseconds on a small VM, a large share of a decode-sized
    call. Under torch.compile the call is traced as it is.
    """
    if torch.compiler.is_compiling():
        return op(*args)
    grad = torch.is_grad_enabled()
    direct = cpu_impl is not None
    for a in args:  # one pass: does any input need a gradient, are all tensors plain?
        if isinstance(a, torch.Tensor):
            if grad and a.requires_grad:
                return op(*args)
            if type(a) not in _PLAIN_ARG_TYPES:
                direct = False
    if (direct and isinstance(args[0], torch.Tensor) and args[0].is_cpu
            and not torch._C._len_torch_dispatch_stack() and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active()):
        return cpu_impl(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def register_autograd(name: str, setup_context, backward) -> None:
    """Registers an Autograd-key kernel for `zaya_rt::name`, like `torch.library.register_autograd`, but
    calls straight below autograd when no input needs a gradient (the inference hot path), which saves
    about 15 us a call on the development machine.

    setup_context(ctx, inputs, output) and backward(ctx, *grads) have register_autograd's meaning.
    """
    op = getattr(torch.ops.zaya_rt, name).default

    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f"{name}_autograd", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
    })

    def autograd_kernel(*args):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    lib.impl(name, autograd_kernel, "Autograd")

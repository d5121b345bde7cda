"""A sandboxed subprocess for code rewards: a Python program runs in a fresh interpreter (isolated mode, empty
environment, a temporary working folder, its own session) under `resource` limits set in the child: CPU time,
address space, size of what it writes (stdout and stderr go to files capped by RLIMIT_FSIZE) and no core
files; a wall-clock deadline is kept from outside and kills the whole process group. This bounds runaway
programs; it is not a security boundary against hostile code (no network or filesystem namespace).
"""

from __future__ import annotations

import numbers
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxResult:
    """ok: exited with status 0 within every limit; reason: "ok", "exit <code>", "timeout", "signal <name>"
    (killed: CPU limit SIGXCPU, output limit SIGXFSZ, ...), or "memory" (a MemoryError under the address-space
    limit); stdout/stderr: what it wrote (decoded, replacement characters for bad UTF-8)."""

    ok: bool
    reason: str
    stdout: str
    stderr: str


def _positive(name: str, value) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"run_sandboxed: {name} must be a positive number, got {value!r}")
    return float(value)


def run_sandboxed(code: str, *, stdin: str = "", time_limit: float = 5.0, memory_mb: int = 512,
                  output_bytes: int = 1 << 20) -> SandboxResult:
    """Runs Python source `code` with `stdin` as its input under the limits: time_limit seconds of wall clock
    (CPU time is capped at the same), memory_mb of address space, output_bytes per output stream."""
    if not isinstance(code, str):
        raise TypeError(f"run_sandboxed: code must be a str, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"run_sandboxed: stdin must be a str, got {type(stdin).__name__}")
    wall = _positive("time_limit", time_limit)
    memory = int(_positive("memory_mb", memory_mb) * (1 << 20))
    output = int(_positive("output_bytes", output_bytes))
    cpu = max(1, int(wall + 0.999))

    def limit() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="zaya-sandbox-") as work:
        program = os.path.join(work, "main.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        out_path, err_path = os.path.join(work, "stdout"), os.path.join(work, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", program], stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"}, preexec_fn=limit,
                start_new_session=True)
            timed_out = False
            try:
                proc.communicate(stdin.encode("utf-8"), timeout=wall)
            except subprocess.TimeoutExpired:
                timed_out = True
            except BrokenPipeError:  # it exited (or was killed) before reading all of stdin
                pass
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it started
                except ProcessLookupError:
                    pass
                proc.wait()
        stdout = _read(out_path, output)
        stderr = _read(err_path, output)
    code_ = proc.returncode
    if timed_out:
        return SandboxResult(False, "timeout", stdout, stderr)
    if code_ == 0:
        return SandboxResult(True, "ok", stdout, stderr)
    if code_ < 0:
        return SandboxResult(False, f"signal {signal.Signals(-code_).name}", stdout, stderr)
    if "MemoryError" in stderr:
        return SandboxResult(False, "memory", stdout, stderr)
    return SandboxResult(False, f"exit {code_}", stdout, stderr)


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")

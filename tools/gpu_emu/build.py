"""Builds the host emulation of GPU kernel headers (see tools/gpu_emu/cuda/compat.h) as a shared library.

  python tools/gpu_emu/build.py OUT_DIR [--warp 32|64]  ->  OUT_DIR/libzaya_gpu_emu_w{warp}.so

The kernel headers are copied with two rewrites g++ needs: `extern __shared__ float smem[];` becomes the
emulator's per-block buffer, and `kernel<<<grid, block, smem, stream>>>(args)` becomes
`::emu::launch(grid, block, smem, stream, [=] { kernel(args); })`.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADERS = ("cuda/attention_kernels.cuh", "cuda/attention_tc.cuh", "hip/attention_mfma.h", "cuda/attention_sm90.cuh",
           "cuda/cca_kernels.cuh", "cuda/runtime_kernels.cuh")


def _matching(text: str, start: int, open_c: str, close_c: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_c:
            depth += 1
        elif text[i] == close_c:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced")


def rewrite_launches(src: str) -> str:
    src = src.replace("extern __shared__ float smem[];", "float* smem = ::emu::dyn_smem();")
    out, pos = [], 0
    while (i := src.find("<<<", pos)) >= 0:
        j = src.find(">>>", i)
        # kernel name: identifier with an optional template argument list just before <<<
        k = i
        if src[k - 1] == ">":
            depth = 0
            while True:
                k -= 1
                depth += {">": 1, "<": -1}.get(src[k], 0)
                if depth == 0:
                    break
        while k > 0 and (src[k - 1].isalnum() or src[k - 1] == "_"):
            k -= 1
        args_open = j + 3
        args_close = _matching(src, args_open, "(", ")")
        name, cfg, args = src[k:i], src[i + 3 : j], src[args_open + 1 : args_close]
        out.append(src[pos:k])
        out.append(f"::emu::launch({cfg}, [=] {{ {name}({args}); }})")
        pos = args_close + 1
    out.append(src[pos:])
    return "".join(out)


def main() -> None:
    out_dir = pathlib.Path(sys.argv[1])
    warp = int(sys.argv[sys.argv.index("--warp") + 1]) if "--warp" in sys.argv else 32
    gen = out_dir / f"gen_w{warp}"
    for sub in ("cuda", "hip"):
        (gen / sub).mkdir(parents=True, exist_ok=True)
    for h in HEADERS:
        (gen / h).write_text(rewrite_launches((ROOT / h).read_text()))
    lib = out_dir / f"libzaya_gpu_emu_w{warp}.so"
    cmd = ["g++", "-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", f"-DZAYA_RT_EMU_WARP={warp}",
           f"-I{ROOT / 'tools/gpu_emu'}", f"-I{gen}", f"-I{ROOT / 'csrc/include'}", f"-I{ROOT}",
           str(ROOT / "tools/gpu_emu/emu_lib.cpp"), "-o", str(lib)]
    subprocess.run(cmd, check=True)
    print(lib)


if __name__ == "__main__":
    main()

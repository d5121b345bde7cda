"""Builds the host emulation of GPU kernel headers (see tools/gpu_emu/cuda/compat.h) as a shared library.

  python tools/gpu_emu/build.py OUT_DIR [--warp 32|64] [--source emu_lib|emu_moe_norms|emu_router]
                                [--sanitize address,undefined]
      ->  OUT_DIR/libzaya_gpu_emu_w{warp}.so (emu_lib.cpp: attention, CCA forward and backward, runtime)
          OUT_DIR/libzaya_gpu_emu_moe_norms_w{warp}.so (emu_moe_norms.cpp: MoE, norms)
          OUT_DIR/libzaya_gpu_emu_router_w{warp}.so (emu_router.cpp: the router bodies of cuda/router_body.cuh,
          phase by phase with no threads; --sanitize builds at -O1 with the sanitizers, no recovery)

The kernel headers are copied with the rewrites g++ needs: `extern __shared__ T name[];` becomes the
emulator's per-block dynamic buffer, a static `__shared__ T name[N];` a per-block object
(`auto& name = ::emu::block_shared<T[N]>([] {});`), and `kernel<<<grid, block, smem, stream>>>(args)` becomes
`::emu::launch(grid, block, smem, stream, [=] { kernel(args); })`.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADERS = ("cuda/attention_kernels.cuh", "cuda/attention_tc.cuh", "hip/attention_mfma.h", "cuda/attention_sm90.cuh",
           "cuda/cca_kernels.cuh", "cuda/cca_bwd_kernels.cuh", "cuda/runtime_kernels.cuh", "cuda/norms_kernels.cuh", "cuda/moe_kernels.cuh",
           "cuda/moe_common.cuh", "cuda/moe_dispatch.cuh", "cuda/moe_gemm_common.cuh", "cuda/moe_gemm_simt.cuh",
           "cuda/moe_gemm_launch.cuh", "cuda/moe_experts.cuh")


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


_DYNAMIC_SHARED = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")
_STATIC_SHARED = re.compile(r"__shared__\s+(?:__align__\(\d+\)\s+)?(.+?)\s+(\w+)\s*((?:\[[^\]\n]*\])*)\s*;")


def rewrite_shared(src: str) -> str:
    src = _DYNAMIC_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(::emu::dyn_smem());", src)
    return _STATIC_SHARED.sub(r"auto& \2 = ::emu::block_shared<\1\3>([] {});", src)


def rewrite_launches(src: str) -> str:
    src = rewrite_shared(src)
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
    source = sys.argv[sys.argv.index("--source") + 1] if "--source" in sys.argv else "emu_lib"
    gen = out_dir / f"gen_w{warp}"
    for sub in ("cuda", "hip"):
        (gen / sub).mkdir(parents=True, exist_ok=True)
    for h in HEADERS:
        (gen / h).write_text(rewrite_launches((ROOT / h).read_text()))
    suffix = "" if source == "emu_lib" else "_" + source.removeprefix("emu_")
    lib = out_dir / f"libzaya_gpu_emu{suffix}_w{warp}.so"
    sanitize = sys.argv[sys.argv.index("--sanitize") + 1] if "--sanitize" in sys.argv else ""
    opts = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-O1"] if sanitize else ["-O2"]
    cmd = ["g++", "-std=c++20", *opts, "-fPIC", "-shared", "-pthread", f"-DZAYA_RT_EMU_WARP={warp}",
           f"-I{ROOT / 'tools/gpu_emu'}", f"-I{gen}", f"-I{ROOT / 'csrc/include'}", f"-I{ROOT}",
           str(ROOT / f"tools/gpu_emu/{source}.cpp"), "-o", str(lib)]
    subprocess.run(cmd, check=True)
    print(lib)


if __name__ == "__main__":
    main()

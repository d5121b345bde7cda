#!/usr/bin/env bash
# CI compile check of the GPU backends (no GPU needed): builds the whole _C extension once with
# -DZAYA_RT_CUDA=ON (nvcc, sm_80 + sm_90a, and the sm_90a CUTLASS grouped GEMM, which must build:
# -DZAYA_RT_CUTLASS=ON) and once with -DZAYA_RT_HIP=ON (clang -x hip for gfx940 and gfx942; a ROCm that lacks
# gfx942's device library gets one written by cmake/hip_device_libs.cmake),
# in throwaway build folders, and shows what device code each holds. For CUDA it also disassembles the sm_90a
# code and requires wgmma (HGMMA) instructions in the CUTLASS kernels and in the attention forward
# (cuda/attention_sm90.cuh), and none in the sm_80 code; for HIP it disassembles the gfx94x attention code and
# requires MFMA instructions in the matrix-core prefill kernels.
# Exits non-zero when either build fails or lacks a target.
#
#   bash tools/check_gpu_compile.sh            # both
#   bash tools/check_gpu_compile.sh cuda|hip   # one
# Needs for CUDA: the nvidia-cutlass wheel (pip install nvidia-cutlass==4.2.0) or CUTLASS_DIR, and cuobjdump +
# nvdisasm (on PATH, next to nvcc, or from pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm).
# Environment: NVCC (default /usr/local/bin/nvcc), CUTLASS_DIR (CUTLASS include folder), HIP_CLANG (clang++-19),
# HIP_ARCH (gfx940;gfx942: MI300X and the one whose device library ROCm 5.2 has), JOBS (2), KEEP_BUILD=1 to keep the build folders.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHICH=${1:-all}
JOBS=${JOBS:-2}
NVCC=${NVCC:-/usr/local/bin/nvcc}
HIP_CLANG=${HIP_CLANG:-clang++-19}
HIP_ARCH=${HIP_ARCH:-gfx940;gfx942}
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
PYBIND11_DIR=$("$PYTHON" -m pybind11 --cmakedir)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zaya_rt_gpu_check.XXXXXX")
if [[ "${KEEP_BUILD:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)

common_args=(-DPython_EXECUTABLE="$PYTHON" -Dpybind11_DIR="$PYBIND11_DIR" -DCMAKE_BUILD_TYPE=Release "${GENERATOR[@]}")

# Imports the built module (no GPU needed to load it): catches unresolved symbols, which a Python
# extension module only reports at load time, and a missing GPU runtime library.
import_check() {
  local dir=$1 want=$2
  "$PYTHON" - "$dir" "$want" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
try:
    import _C
except ImportError as e:
    print(f"  FAIL: the built _C does not load: {e}")
    sys.exit(1)
cutlass = getattr(_C, "cutlass_sm90", None)
attn = getattr(_C, "sm90_attention", None)
print(f"  import _C: ok, gpu_backend = {_C.gpu_backend!r}, cutlass_sm90 = {cutlass}, sm90_attention = {attn}")
cuda = sys.argv[2] == "cuda"
sys.exit(0 if _C.gpu_backend == sys.argv[2] and cutlass == cuda and attn == cuda else 1)
PY
}

# Lists the device code objects in a CUDA fat binary (the .nv_fatbin section of an ELF file).
list_cuda_fatbin() {
  "$PYTHON" - "$1" <<'PY'
import re, struct, subprocess, sys, tempfile, os
so = sys.argv[1]
with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "fatbin")
    objcopy = next(t for t in ("llvm-objcopy-19", "llvm-objcopy", "objcopy")
                   if subprocess.run(["which", t], capture_output=True).returncode == 0)
    subprocess.run([objcopy, "--dump-section=.nv_fatbin=" + out, so], check=True)
    blob = open(out, "rb").read()
found, off = [], 0
while off + 16 <= len(blob):
    magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", blob, off)
    if magic != 0xBA55ED50:
        break
    e, end = off + hsize, off + hsize + fsize
    while e < end:
        kind, _u, ehsize, psize = struct.unpack_from("<HHIQ", blob, e)
        arch = struct.unpack_from("<I", blob, e + 28)[0]
        payload = blob[e + ehsize : e + ehsize + psize]
        if kind == 2:
            names = sorted(set(m.decode() for m in re.findall(rb"sm_\d+a?", payload))) or [f"sm_{arch}"]
            found.append(f"ELF (SASS) for {', '.join(names)}")
        elif kind == 1:
            flags = struct.unpack_from("<I", blob, e + 40)[0]
            found.append(f"PTX for compute_{arch}{'a' if flags & 0x100000 else ''}")
        e += ehsize + psize
    off = end
for f in found:
    print("  cuda fatbin:", f)
sys.exit(0 if found else 1)
PY
}

# A CUDA binary tool ($1: cuobjdump or nvdisasm): on PATH, next to nvcc, or from the nvidia-cuda-* wheels.
cuda_tool() {
  local t
  t=$(command -v "$1" || true)
  [[ -z "$t" && -x "$(dirname "$NVCC")/$1" ]] && t="$(dirname "$NVCC")/$1"
  [[ -z "$t" ]] && t=$("$PYTHON" -c "import glob, site, sys; print(next(iter(sorted(f for p in site.getsitepackages() + [site.getusersitepackages()] for f in glob.glob(p + '/nvidia/cu*/bin/$1'))), ''))")
  echo "$t"
}

# The sm_90a SASS of $1 holds wgmma (HGMMA) instructions, in the CUTLASS kernels and in the attention forward;
# the sm_80 SASS none.
check_wgmma() {
  local so=$1 cuobjdump nvdisasm
  cuobjdump=$(cuda_tool cuobjdump)
  nvdisasm=$(cuda_tool nvdisasm)
  if [[ -z "$cuobjdump" || -z "$nvdisasm" ]]; then
    echo "  FAIL: no cuobjdump/nvdisasm to check the sm_90a SASS (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"
    return 1
  fi
  chmod +x "$cuobjdump" "$nvdisasm" 2>/dev/null || true
  local sass90 sass80
  sass90=$(PATH="$(dirname "$nvdisasm"):$PATH" "$cuobjdump" -sass -arch sm_90a "$so") || { echo "  FAIL: cuobjdump -sass"; return 1; }
  sass80=$(PATH="$(dirname "$nvdisasm"):$PATH" "$cuobjdump" -sass -arch sm_80 "$so" 2>/dev/null || true)
  local hgmma kinds fn80
  hgmma=$(grep -cE "HGMMA" <<<"$sass90" || true)
  kinds=$(grep -oE "HGMMA\.[A-Za-z0-9x.]+" <<<"$sass90" | sort | uniq -c | tr -s ' ' | tr '\n' ';' || true)
  echo "  sm_90a SASS: $hgmma HGMMA (wgmma) instructions [$kinds], $(grep -cE "UTMALDG" <<<"$sass90" || true) TMA loads, $(grep -cE "UTMASTG" <<<"$sass90" || true) TMA stores"
  awk '/Function :/ {f=$3} /HGMMA/ {n[f]++} END {for (k in n) printf "    %4d HGMMA in %.110s\n", n[k], k}' <<<"$sass90"
  fn80=$(grep -cE "HGMMA" <<<"$sass80" || true)
  echo "  sm_80 SASS: $fn80 HGMMA instructions (must be 0)"
  [[ "$hgmma" -gt 0 && "$fn80" == 0 ]] || { echo "  FAIL: expected wgmma in the sm_90a code only"; return 1; }
  local attn
  attn=$(awk '/Function :/ {f=$3} /HGMMA/ && f ~ /varlen_fwd_sm90_kernel/ {n++} END {print n + 0}' <<<"$sass90")
  echo "  sm_90a SASS: $attn HGMMA in the attention forward (varlen_fwd_sm90_kernel; must be > 0)"
  [[ "$attn" -gt 0 ]] || { echo "  FAIL: no wgmma in the sm_90a attention forward"; return 1; }
}

check_cuda() {
  echo "=== CUDA: configure + build _C with ZAYA_RT_CUDA=ON ZAYA_RT_CUTLASS=ON ($NVCC)"
  "$NVCC" --version | tail -1
  local b="$WORK/cuda"
  local cutlass_args=(-DZAYA_RT_CUTLASS=ON)
  [[ -n "${CUTLASS_DIR:-}" ]] && cutlass_args+=(-DZAYA_RT_CUTLASS_DIR="$CUTLASS_DIR")
  cmake -S "$ROOT" -B "$b" "${common_args[@]}" -DZAYA_RT_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" "${cutlass_args[@]}" \
        -DCMAKE_CUDA_ARCHITECTURES="80;90a" -DCMAKE_CUDA_FLAGS="--threads=$JOBS" >"$b.configure.log" 2>&1 || { cat "$b.configure.log"; return 1; }
  grep -E "zaya_rt:" "$b.configure.log" || true
  cmake --build "$b" --target _C -j "$JOBS" -v >"$b.build.log" 2>&1 || { tail -n 80 "$b.build.log"; return 1; }
  # The nvcc command line(s), cut to the code generation flags.
  grep -E "nvcc .* -c .*\.cu" "$b.build.log" | grep -oE "(nvcc|--generate-code=[^ ]+|-c [^ ]+\.cu)" | tr '\n' ' ' | sed 's/^/  /'; echo
  local so
  so=$(ls "$b"/_C*.so)
  echo "  built $(basename "$so") ($(du -h "$so" | cut -f1))"
  local listing
  listing=$(list_cuda_fatbin "$so") || { echo "no CUDA fat binary in $so"; return 1; }
  echo "$listing"
  for sm in sm_80 sm_90a; do
    grep -q "ELF (SASS) for .*\b$sm\b" <<<"$listing" || { echo "FAIL: no $sm device code in $so"; return 1; }
  done
  # Compile time of each CUDA object (ninja's log: start and end in ms).
  [[ -f "$b/.ninja_log" ]] && awk -F'\t' '$4 ~ /\.cu\.o$/ {n=split($4, p, "/"); printf "  compiled %-28s in %5.1f s\n", p[n], ($2 - $1) / 1000}' "$b/.ninja_log"
  check_wgmma "$so" || return 1
  import_check "$b" cuda || return 1
  echo "CUDA OK"
}

# The gfx94x code objects of the HIP attention object ($1) hold the MFMA prefill forward, with v_mfma
# instructions in each of its instantiations (bf16/fp16 x head dim 32/64/128/256): a build where the builtins
# silently lowered to something else, or the kernel vanished, fails here.
check_mfma() {
  local obj=$1 objdump bundler target co listing fns bad
  objdump=$(command -v llvm-objdump-19 || command -v llvm-objdump) || { echo "  FAIL: no llvm-objdump"; return 1; }
  bundler=$(command -v clang-offload-bundler-19 || command -v clang-offload-bundler)
  while read -r target; do
    [[ "$target" == *amdgcn-amd-amdhsa--gfx94* ]] || continue
    co="$obj.${target##*--}.co"
    "$bundler" --unbundle --type=o --targets="$target" --input="$obj.fatbin" --output="$co"
    # "COUNT <function>:" for each varlen_fwd_mfma_kernel function of the disassembly.
    listing=$("$objdump" -d "$co" | awk '
      /^[0-9a-f]+ <.*>:$/ { f = ($2 ~ /varlen_fwd_mfma_kernel/) ? $2 : ""; if (f != "") n[f] += 0 }
      /v_mfma_f32_16x16x16/ && f != "" { n[f]++ }
      END { for (k in n) printf "%d %s\n", n[k], k }' | sort -k2)
    fns=$(grep -c . <<<"$listing" || true)
    bad=$(awk '$1 == 0' <<<"$listing" | grep -c . || true)
    echo "  ${target##*--} attention: $fns MFMA forward kernels," \
         "v_mfma_f32_16x16x16 per kernel: $(awk '{printf "%s ", $1}' <<<"$listing")"
    if [[ "$fns" -lt 8 || "$bad" != 0 ]]; then
      echo "  FAIL: expected v_mfma in all 8 varlen_fwd_mfma_kernel instantiations"
      return 1
    fi
  done < <("$bundler" --list --type=o --input="$obj.fatbin")
}

check_hip() {
  echo "=== HIP: configure + build _C with ZAYA_RT_HIP=ON ($HIP_CLANG)"
  "$HIP_CLANG" --version | head -1
  local b="$WORK/hip"
  cmake -S "$ROOT" -B "$b" "${common_args[@]}" -DZAYA_RT_HIP=ON -DZAYA_RT_HIP_CLANG="$HIP_CLANG" \
        -DZAYA_RT_HIP_ARCH="$HIP_ARCH" >"$b.configure.log" 2>&1 || { cat "$b.configure.log"; return 1; }
  grep -E -A1 "zaya_rt:" "$b.configure.log" | grep -E "zaya_rt:|^  " || true
  cmake --build "$b" --target _C -j "$JOBS" -v >"$b.build.log" 2>&1 || { tail -n 80 "$b.build.log"; return 1; }
  grep -E -- "-x hip .* -c .*\.hip" "$b.build.log" | grep -oE "(clang\+\+[-0-9]*|--offload-arch=[a-z0-9]+|-c [^ ]+\.hip)" | tr '\n' ' ' | sed 's/^/  /'; echo
  local so
  so=$(ls "$b"/_C*.so)
  echo "  built $(basename "$so") ($(du -h "$so" | cut -f1)); links $(ldd "$so" | grep -oE 'libamdhip64[^ ]*' | head -1 || echo 'NO libamdhip64')"
  local objcopy bundler ok=0
  objcopy=$(command -v llvm-objcopy-19 || command -v llvm-objcopy)
  bundler=$(command -v clang-offload-bundler-19 || command -v clang-offload-bundler)
  for obj in "$b"/zaya_rt_hip/*.o; do
    "$objcopy" --dump-section=.hip_fatbin="$obj.fatbin" "$obj"
    local targets
    targets=$("$bundler" --list --type=o --input="$obj.fatbin")
    echo "  $(basename "$obj") offload bundles: $(grep -oE 'gfx[0-9a-z]+' <<<"$targets" | tr '\n' ' ')"
    # Every requested architecture has its code object in every HIP object (none left out at configure).
    local arch
    for arch in ${HIP_ARCH//;/ }; do
      grep -q -- "--$arch\$" <<<"$targets" || { echo "  FAIL: no $arch code object in $(basename "$obj")"; return 1; }
    done
    ok=1
  done
  [[ $ok == 1 ]] || { echo "FAIL: no gfx94x code object in the HIP objects"; return 1; }
  check_mfma "$b/zaya_rt_hip/attention.o" || return 1
  import_check "$b" hip || return 1
  echo "HIP OK"
}

status=0
start=$SECONDS
case "$WHICH" in
  all) check_cuda || status=1; check_hip || status=1 ;;
  cuda) check_cuda || status=1 ;;
  hip) check_hip || status=1 ;;
  *) echo "usage: $0 [all|cuda|hip]"; exit 2 ;;
esac
echo "=== GPU compile check: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status

#!/usr/bin/env bash
# In-tree developer build: compiles zaya_rt._C (CPU backend, plus CUDA/HIP when asked) into build/dev and links it
# into python/zaya_rt/, so `PYTHONPATH=python python -m pytest` runs against this checkout without installing.
#
#   bash tools/dev_build.sh [extra cmake -D options]      e.g. -DZAYA_RT_CUDA=ON (compile only on a CPU machine)
# Remove any installed zaya_rt first (`pip uninstall zaya_rt`): an editable install takes precedence over PYTHONPATH.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
BUILD=${ZAYA_RT_BUILD_DIR:-$ROOT/build/dev}
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$PYTHON" -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" "$@" >/dev/null
nice ninja -C "$BUILD" -j "${ZAYA_RT_BUILD_JOBS:-2}"
so=$(ls "$BUILD"/_C*.so)
ln -sf "$so" "$ROOT/python/zaya_rt/$(basename "$so")"
echo "built $so -> python/zaya_rt/"

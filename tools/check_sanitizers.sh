#!/usr/bin/env bash
# Builds zaya_rt._C with AddressSanitizer + UndefinedBehaviorSanitizer (CPU backend) into a throwaway folder and
# runs the CPU kernel tests against it (SPEC section 9). Any sanitizer report fails the run.
#
#   bash tools/check_sanitizers.sh [pytest args]     (default: the norms, MoE, router, attention and packed-linear kernel tests)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zaya_rt_sanitize.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"

echo "== building _C with: $FLAGS"
"$PYTHON" -m pip install -q --no-build-isolation --no-deps --target "$WORK/site" \
  --config-settings=build-dir="$WORK/build" \
  --config-settings=cmake.define.CMAKE_CXX_FLAGS="$FLAGS" \
  --config-settings=cmake.define.CMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  --config-settings=cmake.define.CMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  "$ROOT"

ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "== running the CPU kernel tests under ASan/UBSan ($ASAN_LIB)"
cd "$WORK"
loaded=$(PYTHONPATH="$WORK/site" "$PYTHON" -c "import zaya_rt._C as c; print(c.__file__)")
if [[ "$loaded" != "$WORK/site/"* ]]; then
  echo "FAIL: python imports zaya_rt from $loaded, not the sanitized build (an editable install takes"
  echo "precedence over PYTHONPATH); run this from an environment with a regular install."
  exit 1
fi
# Leak checking is off: CPython and PyTorch keep allocations alive until exit by design.
PYTHONPATH="$WORK/site:$ROOT/tests" "$PYTHON" -m pytest -q -p no:cacheprovider -x \
  "$ROOT/tests/test_norms.py" "$ROOT/tests/test_norms_contract.py" "$ROOT/tests/test_moe.py" \
  "$ROOT/tests/test_moe_contract.py" "$ROOT/tests/test_router.py" "$ROOT/tests/test_attention.py" \
  "$ROOT/tests/test_attention_contract.py" "$ROOT/tests/test_packed_linear.py" -k "not compile" "$@"

#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer and runs
# the CPU test suites against it. Usage: scripts/sanitize.sh [pytest args...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-/tmp/attnkit-asan}
PKG=$BUILD/pkg
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DATTNKIT_BUILD_PYTHON=ON -DATTNKIT_CUDA=OFF -DATTNKIT_BENCH=OFF \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTNKIT_SANITIZE=address,undefined \
      -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$BUILD" --target _core
rm -rf "$PKG" && mkdir -p "$PKG" && cp -r "$ROOT/python/attnkit" "$PKG/"
rm -f "$PKG"/attnkit/_core*.so && cp "$BUILD"/_core*.so "$PKG/attnkit/"
cd /tmp
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
PYTHONPATH="$PKG" python -m pytest -q -p no:cacheprovider "${@:-$ROOT/tests}"

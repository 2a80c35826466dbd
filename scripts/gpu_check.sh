#!/usr/bin/env bash
# attnkit GPU check: build with CUDA on all cores, run the GPU tests, a
# compute-sanitizer memcheck of small cases, and `attnkit bench --device cuda`
# (attnkit next to torch SDPA's flash and cuDNN backends in the same run); write
# JSON results and a log into OUTDIR. Meant for a lent H100/H200 machine with
# torch (CUDA), nanobind, scikit-build-core, cmake and ninja but no package
# registry; about 8-10 minutes in all, the build included. OUTDIR gets at most
# 8 files (what the device tool returns): log.txt build.txt info.json tests.txt
# memcheck.txt bench.json bench_pp.json summary.json.
#
#   scripts/gpu_check.sh OUTDIR
#
# Before (on a machine with PyPI; the wheel folder is git-ignored and travels as
# a carried path):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 -d .whl nvidia-cutlass==4.2.0.0
# From the device tool:
#   run(command="AK_COMMIT=<short sha> bash scripts/gpu_check.sh $OUT/gpu", carry=[".whl"], timeout_s=600)
# Environment knobs: ATTNKIT_KERNELS (default all), AK_ARCHS (default 90a),
# AK_SKIP_SANITIZER=1, AK_BENCH_ARGS (extra `attnkit bench` arguments).
# Afterwards, commit OUTDIR/bench.json as bench/results/<date>-<gpu>.json.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG="$OUT/log.txt"
if [ -z "${AK_GPU_CHECK_LOGGED:-}" ]; then  # re-run under tee; the pipeline waits for tee to flush
  AK_GPU_CHECK_LOGGED=1 bash "$ROOT/scripts/gpu_check.sh" "$OUT" 2>&1 | tee "$LOG"
  exit "${PIPESTATUS[0]}"
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
start=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*"; }
status=0
step() {  # step NAME CMD...: runs, records the exit code, keeps going
  local name=$1; shift
  stamp "$name"
  "$@"; local rc=$?
  echo "step: $name rc=$rc t=$(( $(date +%s) - start ))s"
  [ $rc -eq 0 ] || { status=1; stamp "$name FAILED (rc=$rc)"; }
  return $rc
}

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
nvcc --version | tail -2
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
COMMIT=${AK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "commit $COMMIT"

# CUTLASS headers from the carried wheel (nothing can be downloaded here).
SITE=/tmp/ak-site
if ! "$PY" -c "import importlib.util as u; assert u.find_spec('cutlass_library')" 2>/dev/null; then
  step "install nvidia-cutlass from .whl" "$PY" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --target "$SITE" "$ROOT"/.whl/nvidia_cutlass-*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export CUTLASS_DIR="$SITE/cutlass_library/source"
fi

export ATTNKIT_CUDA=ON ATTNKIT_CUDA_ARCHS=${AK_ARCHS:-90a} ATTNKIT_KERNELS=${ATTNKIT_KERNELS:-all}
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
step "build + install (ATTNKIT_CUDA_ARCHS=$ATTNKIT_CUDA_ARCHS ATTNKIT_KERNELS=$ATTNKIT_KERNELS, $(nproc) jobs)" \
  "$PY" -m pip install -v --no-index --no-deps --no-build-isolation -Ccmake.define.ATTNKIT_CUDA_VERBOSE=ON \
  -Cbuild.verbose=true "$ROOT" > "$OUT/build.txt" 2>&1 || { tail -50 "$OUT/build.txt"; exit 1; }
echo "ptxas: kernels with spills:"; grep -E "spill" "$OUT/build.txt" | grep -v " 0 bytes spill stores" | sort | uniq -c || true
stamp "built in $(( $(date +%s) - start ))s"

cd /tmp  # the installed package, not the source tree
"$PY" -m attnkit info --json > "$OUT/info.json"
"$PY" -m attnkit info

# A kernel that hangs must not eat the whole lease: pytest-timeout (in the CUDA
# image) ends the run after 300 s of one test.
TIMEOUT_ARGS=""
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_ARGS="--timeout=300 --timeout-method=thread"
step "GPU tests" timeout 420 "$PY" -m pytest -q -p no:cacheprovider -rs $TIMEOUT_ARGS \
  "$ROOT/tests/test_cuda.py" "$ROOT/tests/test_cuda_host.py" > "$OUT/tests.txt" 2>&1
tail -40 "$OUT/tests.txt"

if [ "${AK_SKIP_SANITIZER:-0}" != 1 ] && command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer memcheck (small cases)" timeout 300 compute-sanitizer --tool memcheck \
    --error-exitcode 3 --print-limit 20 "$PY" "$ROOT/scripts/cuda_smoke.py" > "$OUT/memcheck.txt" 2>&1
  tail -5 "$OUT/memcheck.txt"
fi

step "attnkit bench --device cuda" timeout 300 "$PY" -m attnkit bench --device cuda --family fmha \
  --dtype bfloat16 --repeat 10 --no-progress --json "$OUT/bench.json" ${AK_BENCH_ARGS:-}
if grep -q "tma-wgmma-pp" "$OUT/info.json"; then
  step "attnkit bench --device cuda (ATTNKIT_CUDA_VARIANT=tma-wgmma-pp)" env ATTNKIT_CUDA_VARIANT=tma-wgmma-pp \
    timeout 300 "$PY" -m attnkit bench --device cuda --family fmha --dtype bfloat16 --direction fwd \
    --repeat 10 --no-progress --json "$OUT/bench_pp.json" ${AK_BENCH_ARGS:-}
fi

step "summary vs the issue's targets" "$PY" "$ROOT/scripts/gpu_summary.py" "$OUT" --commit "$COMMIT"
stamp "done (status $status)"
exit $status

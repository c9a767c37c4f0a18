#!/usr/bin/env bash
# Validate Deers on an NVIDIA GPU in one call: compile, tests, numerics, launch counts, benchmarks.
#
#   OUT=./cuda-results BUDGET=420 bash benchmarks/cuda_all.sh
#
# Runs on the machine as it is: python3 with CuPy, PyTorch, NumPy, ml-dtypes, pytest (and
# pytest-timeout, when present) already installed; nothing is installed, nothing is downloaded;
# the checkout is put on PYTHONPATH. Everything it writes goes to the folder $OUT (default
# ./cuda-results): summary.txt (one line per step: status, seconds, step, log file) and one log per
# step, 7 files in all. The steps share a total budget of $BUDGET seconds (default 420); each step's
# timeout is clamped to what is left, so a hang in one step still leaves the others' results.
# Without a usable GPU it writes that into summary.txt and exits with status 2 within seconds.
# Exit status 0: every step passed; 1: some step failed or timed out. docs/cuda.md explains the
# output.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-./cuda-results}"
BUDGET="${BUDGET:-420}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$REPO"
START=$SECONDS
FAILED=0
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LOG WANTED_SECONDS COMMAND...: run COMMAND with its output appended to $OUT/LOG, for at
# most WANTED_SECONDS or what is left of the budget; one summary line: PASS / FAIL (exit N) / TIMEOUT.
step() {
    local name=$1 log=$2 wanted=$3
    shift 3
    local left=$((BUDGET - (SECONDS - START)))
    local limit=$((wanted < left ? wanted : left))
    if [ "$limit" -lt 5 ]; then
        note "SKIPPED   0s  $name (budget spent)  $log"
        FAILED=1
        return 0
    fi
    echo "\$ $* (timeout ${limit}s)" >> "$OUT/$log"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/$log" 2>&1
    local status=$?
    local took=$((SECONDS - began))
    if [ "$status" -eq 0 ]; then
        note "PASS    ${took}s  $name  $log"
    elif [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        note "TIMEOUT ${took}s  $name (limit ${limit}s)  $log"
        FAILED=1
    else
        note "FAIL    ${took}s  $name (exit $status)  $log"
        FAILED=1
    fi
    echo "[exit $status after ${took}s]" >> "$OUT/$log"
    return 0
}

note "# Deers CUDA validation $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${BUDGET}s"

# ---- 0. is there a GPU? (a few seconds either way) ---------------------------------------------------
PROBE='import cupy, numpy, torch
n = cupy.cuda.runtime.getDeviceCount()
props = cupy.cuda.runtime.getDeviceProperties(0)
x = cupy.arange(8, dtype=cupy.float32)
assert float((x @ x).get()) == 140.0
print("gpu", props["name"].decode(), "x", n, "| cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "NVRTC", cupy.cuda.nvrtc.getVersion(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.is_available(), "| numpy", numpy.__version__)'
{ nvidia-smi 2>&1 || true; } > "$OUT/env.log"
if ! timeout 60 python3 -c "$PROBE" >> "$OUT/env.log" 2>&1; then
    note "NO GPU: python3 with CuPy found no usable CUDA GPU here (see env.log); nothing else ran"
    exit 2
fi
note "$(tail -n 1 "$OUT/env.log")"

# ---- 1. NVRTC compile of every kernel, registers / threads per block ---------------------------------
step "nvrtc compile + registers" compile.log 60 python3 benchmarks/cuda_checks.py compile

# ---- 2. the CUDA tests on the GPU (the emulated halves are left to the CPU machines) ------------------
TIMEOUT_FLAG=""
if python3 -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_FLAG="--timeout=60"; fi
step "pytest cuda (gpu)" tests.log 100 bash -c "python3 -m pytest -q -rs -p no:cacheprovider $TIMEOUT_FLAG \
    tests/test_backend_cuda.py && python3 -m pytest -q -rs -p no:cacheprovider --maxfail=20 $TIMEOUT_FLAG -k gpu \
    tests/test_cuda_kernels.py tests/test_cuda_fused.py tests/test_cuda_models.py tests/test_backend_contract.py \
    tests/test_muon.py"

# ---- 3. numerics only a GPU shows: GEMMs vs f64, > 2^31 elements, atomics, run-to-run bits ------------
step "correctness sweep" sweep.log 45 python3 benchmarks/cuda_checks.py sweep

# ---- 4. launches, GEMMs and syncs per training step (the counting runtime, no GPU needed) -------------
step "launch/sync counts" launches.log 30 bash -c \
    "python3 benchmarks/cuda_launches.py --config headline --detail && python3 benchmarks/cuda_launches.py --config gpt2-124m"

# ---- 5. full training steps against PyTorch ------------------------------------------------------------
for run in "headline f32 3 1 40" "headline bf16 3 1 40" "gpt2-124m f32 3 1 50" "gpt2-124m bf16 3 1 50"; do
    set -- $run
    step "gpt_step $1 $2 vs torch" bench.log "$5" python3 benchmarks/gpt_step.py --device cuda --compare torch \
        --no-memory --config "$1" --dtype "$2" --steps "$3" --warmup "$4"
done

note "# $((SECONDS - START))s in all; $([ "$FAILED" -eq 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
exit "$FAILED"

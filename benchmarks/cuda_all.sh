#!/usr/bin/env bash
# Check Deers on an NVIDIA GPU in one go: install, the CUDA test suite, the GPU benchmarks.
#
#   bash benchmarks/cuda_all.sh [RESULTS_FILE]
#
# Installs the package with its CUDA 12 extra and PyTorch (the benchmarks compare against it),
# adds the CUDA component wheels when CuPy cannot find NVRTC/cuBLAS on the machine, runs the CUDA
# tests (then the whole suite), then benchmarks/gpt_step.py on cuda against torch for the
# headline and gpt2-124m configs in f32 and bf16. Every command and its output go to RESULTS_FILE
# (default benchmarks/results/cuda-<host>-<time>.txt). A failing step is recorded and the script
# goes on; it exits non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS=${1:-benchmarks/results/cuda-$(hostname)-$(date +%Y%m%d-%H%M%S).txt}
mkdir -p "$(dirname "$RESULTS")"
: > "$RESULTS"
FAILED=0

log() { echo "$*" | tee -a "$RESULTS"; }

step() {  # run a command, tee its output into the results, remember a failure
    log ""
    log "\$ $*"
    "$@" 2>&1 | tee -a "$RESULTS"
    local status=${PIPESTATUS[0]}
    log "[exit $status]"
    if [ "$status" -ne 0 ]; then FAILED=1; fi
    return 0
}

log "# Deers CUDA run, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
step nvidia-smi

# ---- install -------------------------------------------------------------------------------------
step python -m pip install -e '.[dev,cuda12,bf16]' torch
CUPY_PROBE='import cupy
kernel = cupy.RawKernel(r"""extern "C" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }""", "twice")
x = cupy.ones(32, cupy.float32)
kernel((1,), (32,), (x,))
assert float((x @ x).get()) == 128.0'
if ! python -c "$CUPY_PROBE" >/dev/null 2>&1; then
    log "CuPy cannot compile a kernel or run cuBLAS here: adding the CUDA component wheels"
    step python -m pip install 'cupy-cuda12x[ctk]'
fi
step python -c "$CUPY_PROBE"
step python -c "import cupy, deers, torch
print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), 'NVRTC', cupy.cuda.nvrtc.getVersion())
print('device', cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())
print(deers.randn(2, 3, device='cuda').sum().item())"

# ---- tests -----------------------------------------------------------------------------------------
step python -m pytest -q -rs tests/test_backend_cuda.py tests/test_cuda_compile.py tests/test_cuda_kernels.py \
    tests/test_cuda_fused.py tests/test_cuda_models.py
step python -m pytest -q -rs tests

# ---- benchmarks ----------------------------------------------------------------------------------
if [ -f benchmarks/gpt_step.py ]; then
    for config in headline gpt2-124m; do
        for dtype in f32 bf16; do
            step python benchmarks/gpt_step.py --device cuda --compare torch --config "$config" --dtype "$dtype"
        done
    done
else
    log "benchmarks/gpt_step.py is not in this checkout: no benchmark ran"
    FAILED=1
fi

log ""
log "# results in $RESULTS; $([ "$FAILED" -eq 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
exit "$FAILED"

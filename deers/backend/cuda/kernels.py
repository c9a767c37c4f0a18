"""Everything the CUDA backend asks of CuPy: device memory, host transfer, strided views, cuBLAS
GEMMs (cublasGemmStridedBatchedEx, or cublas<S|D>gemmBatched with pointer arrays, on CuPy's own
handle, public CuPy modules only), and the
hand-written kernels of this folder's .cu files (compiled by NVRTC through `cupy.RawModule` on
first use, then cached on disk by CuPy).

The backend (backend.py) talks to a *runtime* object with this small interface only, so the same
backend code runs with another runtime in the tests (tests/cuda_emulator.py runs the .cu kernels
on the CPU). Importing this module needs CuPy; creating a `CupyRuntime` needs a usable GPU.
"""
from __future__ import annotations

import hashlib
import os

import cupy
import numpy as np
from cupy.cuda import cublas

from ...errors import BackendUnavailable
from .gemm import BatchedGemm, Gemm, pointer_table
from .plan import Kernel

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
COMPILE_OPTIONS = ("--std=c++17",)
# cudaDataType and cublasComputeType_t values (library_types.h, cublas_api.h): a stable ABI
CUDA_TYPE = {"f16": 2, "bf16": 14, "f32": 0, "f64": 1}  # CUDA_R_16F, CUDA_R_16BF, CUDA_R_32F, CUDA_R_64F
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT = -1  # cublasGemmAlgo_t: cuBLAS picks (tensor cores where the types allow)
POINTER_MODE_HOST = 0
DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3  # cublasMath_t (cublas_api.h); the low bits are the mode


def compile_options() -> tuple[str, ...]:
    """NVRTC options: C++17, this folder on the include path for common.cuh, and the header's hash
    as a define, so CuPy's on-disk cache (keyed by source and options) never serves a kernel built
    against an older common.cuh."""
    with open(os.path.join(KERNEL_DIR, "common.cuh"), "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:16]
    return COMPILE_OPTIONS + (f"-I{KERNEL_DIR}", f"-DDEERS_COMMON_CUH_SHA1=0x{digest}")


def read_kernel_source(file: str) -> str:
    with open(os.path.join(KERNEL_DIR, file), encoding="utf-8") as f:
        return f.read()


class CupyRuntime:
    """Memory, transfers, views, GEMM and kernel launches on one GPU through CuPy."""

    def __init__(self, index: int):
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
            raise BackendUnavailable(
                f"device cuda:{index}: CuPy is installed but no usable CUDA GPU or driver was found ({exc})") from exc
        if not 0 <= index < count:
            raise BackendUnavailable(f"device cuda:{index}: this machine has {count} CUDA GPU(s)")
        try:
            cupy.cuda.nvrtc.getVersion()  # the kernels are compiled at run time by NVRTC
        except Exception as exc:
            raise BackendUnavailable(
                f"device cuda:{index}: CuPy cannot load NVRTC, the CUDA run-time compiler; install the CUDA "
                f"toolkit or the CUDA wheels: pip install 'cupy-cuda12x[ctk]' ({exc})") from exc
        self.device = cupy.cuda.Device(index)
        self._options = compile_options()
        self._modules: dict[str, cupy.RawModule] = {}
        self._functions: dict[str, object] = {}
        self._meta: dict[tuple[int, ...], cupy.ndarray] = {}
        self._one = {np.float32: np.ones(1, np.float32), np.float64: np.ones(1, np.float64)}  # alpha
        self._zero = {np.float32: np.zeros(1, np.float32), np.float64: np.zeros(1, np.float64)}  # beta

    # ---- memory and transfers ----------------------------------------------------------------
    def empty(self, numel: int, dtype: np.dtype) -> cupy.ndarray:
        with self.device:
            return cupy.empty(numel, dtype)

    def upload(self, array: np.ndarray) -> cupy.ndarray:
        """A flat device copy of a contiguous host array."""
        with self.device:
            return cupy.asarray(np.ascontiguousarray(array).reshape(-1))

    def download(self, buf: cupy.ndarray) -> np.ndarray:
        with self.device:
            return cupy.asnumpy(buf)

    def address(self, buf: cupy.ndarray) -> int:
        """The device address of a buffer's first element (multi-tensor kernels read arrays by address)."""
        return buf.data.ptr

    def view(self, buf: cupy.ndarray, shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> cupy.ndarray:
        """A zero-copy strided view of a flat buffer (strides and offset in elements)."""
        item = buf.itemsize
        return cupy.ndarray(shape, buf.dtype, memptr=buf.data + offset * item, strides=tuple(s * item for s in strides))

    def synchronize(self) -> None:
        with self.device:
            cupy.cuda.get_current_stream().synchronize()

    # ---- GEMM ------------------------------------------------------------------------------------
    def gemm(self, call: Gemm, a: cupy.ndarray, b: cupy.ndarray, out: cupy.ndarray, sfx: str,
             allow_tf32: bool, accumulate: bool = False) -> None:
        """out (contiguous) = a @ b (accumulate: out += a @ b) as planned by gemm.plan_gemm: one
        cublasGemmStridedBatchedEx on CuPy's cuBLAS handle (CuPy sets its current stream on it).
        f16/bf16 and f32 compute in f32 (TF32 when allowed), f64 in f64; alpha = 1 and beta = 0
        (1 to accumulate) are host scalars."""
        data_type = CUDA_TYPE[sfx]
        if sfx == "f64":
            compute, scalar = COMPUTE_64F, np.float64
        else:
            compute, scalar = (COMPUTE_32F_FAST_TF32 if allow_tf32 and sfx == "f32" else COMPUTE_32F), np.float32
        item = a.itemsize
        first, second = call.first, call.second  # Deers' b, then a (see gemm.py)
        with self.device:
            handle = cupy.cuda.device.get_cublas_handle()
            cublas.setPointerMode(handle, POINTER_MODE_HOST)
            cublas.gemmStridedBatchedEx(
                handle, first.op, second.op, call.m, call.n, call.k, self._one[scalar].ctypes.data,
                b.data.ptr + first.offset * item, data_type, first.ld, first.batch_stride,
                a.data.ptr + second.offset * item, data_type, second.ld, second.batch_stride,
                (self._one if accumulate else self._zero)[scalar].ctypes.data, out.data.ptr + call.c_offset * item,
                data_type, call.ldc, call.stride_c,
                call.batch, compute, GEMM_DEFAULT)

    def gemm_batched(self, call: BatchedGemm, a: cupy.ndarray, b: cupy.ndarray, out: cupy.ndarray, sfx: str,
                     allow_tf32: bool, accumulate: bool = False) -> None:
        """out (contiguous) = a @ b as planned by gemm.plan_gemm for operands whose batch dims do not
        collapse: one cublasSgemmBatched / cublasDgemmBatched (CuPy's public binding has no
        gemmBatchedEx, so only f32 and f64 come here) with one device pointer per batch entry.

        The three pointer arrays are one int64 array of `meta`'s cache, keyed by the pointers: a
        hit (every training step after the first, as CuPy's pool hands back the same addresses)
        costs no transfer; a miss costs one small host-to-device copy of 24 bytes per entry (CuPy
        stages it through pinned memory and does not wait for the device) and one cache entry.
        TF32 is the handle's math mode for the duration of the call, then restored. accumulate:
        beta = 1 (out += a @ b)."""
        item = a.itemsize
        beta = self._one if accumulate else self._zero
        with self.device:
            pointers = self.meta(pointer_table(call, a.data.ptr, b.data.ptr, out.data.ptr, item))
            first, second, c = (pointers.data.ptr + 8 * call.batch * i for i in range(3))
            handle = cupy.cuda.device.get_cublas_handle()
            cublas.setPointerMode(handle, POINTER_MODE_HOST)
            args = (handle, call.first.op, call.second.op, call.m, call.n, call.k)
            if sfx == "f64":
                cublas.dgemmBatched(*args, self._one[np.float64].ctypes.data, first, call.first.ld, second,
                                    call.second.ld, beta[np.float64].ctypes.data, c, call.ldc, call.batch)
                return
            mode = cublas.getMathMode(handle)
            want = TF32_TENSOR_OP_MATH if allow_tf32 else DEFAULT_MATH
            if (mode & 0xF) != want:
                cublas.setMathMode(handle, (mode & ~0xF) | want)
            try:
                cublas.sgemmBatched(*args, self._one[np.float32].ctypes.data, first, call.first.ld, second,
                                    call.second.ld, beta[np.float32].ctypes.data, c, call.ldc, call.batch)
            finally:
                if (mode & 0xF) != want:
                    cublas.setMathMode(handle, mode)

    def matmul(self, x: cupy.ndarray, y: cupy.ndarray, out: cupy.ndarray) -> None:
        """out = x @ y for integer arrays (cuBLAS has no integer GEMM): CuPy's own matmul."""
        with self.device:
            cupy.matmul(x, y, out=out)

    # ---- kernels ---------------------------------------------------------------------------------
    def meta(self, values: tuple[int, ...]) -> cupy.ndarray:
        """The int64 device array of a layout's meta, cached: layouts repeat every training step."""
        array = self._meta.get(values)
        if array is None:
            if len(self._meta) >= 4096:
                self._meta.clear()
            with self.device:
                array = cupy.asarray(np.array(values, np.int64))
            self._meta[values] = array
        return array

    def launch(self, k: Kernel, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        """Run kernel `k` with numpy scalars typed exactly as its C parameters."""
        with self.device:
            self._function(k)(grid, block, args)

    def _function(self, k: Kernel):
        function = self._functions.get(k.name)
        if function is None:
            module = self._modules.get(k.file)
            if module is None:
                module = cupy.RawModule(code=read_kernel_source(k.file), options=self._options)
                self._modules[k.file] = module
            function = module.get_function(k.name)
            self._functions[k.name] = function
        return function

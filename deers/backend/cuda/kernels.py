"""Everything the CUDA backend asks of CuPy: device memory, host transfer, strided views, cuBLAS
matmul, and the hand-written kernels of this folder's .cu files (compiled by NVRTC through
`cupy.RawModule` on first use, then cached on disk by CuPy).

The backend (backend.py) talks to a *runtime* object with this small interface only, so the same
backend code runs with another runtime in the tests (tests/cuda_emulator.py runs the .cu kernels
on the CPU). Importing this module needs CuPy; creating a `CupyRuntime` needs a usable GPU.
"""
from __future__ import annotations

import hashlib
import os

import cupy
import numpy as np
from cupy._core import _routines_linalg

from ...errors import BackendUnavailable
from .plan import Kernel

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
COMPILE_OPTIONS = ("--std=c++17",)


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
        self._tf32: bool | None = None
        with self.device:
            self._set_tf32(False)  # explicit, so a CUPY_TF32 environment variable does not decide it

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

    def view(self, buf: cupy.ndarray, shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> cupy.ndarray:
        """A zero-copy strided view of a flat buffer (strides and offset in elements)."""
        item = buf.itemsize
        return cupy.ndarray(shape, buf.dtype, memptr=buf.data + offset * item, strides=tuple(s * item for s in strides))

    def synchronize(self) -> None:
        with self.device:
            cupy.cuda.get_current_stream().synchronize()

    # ---- GEMM ------------------------------------------------------------------------------------
    def matmul(self, x: cupy.ndarray, y: cupy.ndarray, out: cupy.ndarray, allow_tf32: bool) -> None:
        """out = x @ y through cuBLAS. f16/bf16 accumulate in f32 (CuPy's default compute type);
        f32 uses TF32 tensor cores only when allowed."""
        with self.device:
            self._set_tf32(allow_tf32)
            cupy.matmul(x, y, out=out)

    def _set_tf32(self, allow: bool) -> None:
        if allow != self._tf32:
            compute = _routines_linalg.COMPUTE_TYPE_TF32 if allow else _routines_linalg.COMPUTE_TYPE_DEFAULT
            _routines_linalg.set_compute_type(np.float32, compute)
            self._tf32 = allow

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

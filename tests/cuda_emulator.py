"""Run the CUDA backend on the CPU: the .cu kernels compiled by g++ (tests only).

`HostRuntime` has the interface of deers.backend.cuda.kernels.CupyRuntime with NumPy buffers,
so `CUDABackend(0, runtime=HostRuntime())` is the real CUDA backend code path — planning, meta
packing, launch sizes, kernel bodies — with only memory and launches emulated. It is strict where
CuPy is not: every kernel argument must be a NumPy scalar of exactly the C parameter's type or a
flat buffer of exactly the pointed-to dtype (CuPy would silently reinterpret), a kernel must live
in the .cu file plan.KERNELS names, every buffer has guard bytes checked after each launch, and
fresh buffers are filled with garbage so a kernel that skips an output element shows up.

The shared library is built once per source hash in the temp folder (about 5 s of g++ -O0)
from cuda_emulator_shim.h + each .cu file + generated launch trampolines.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from deers.backend.cuda import gemm, plan
from deers.dtype import is_half_numpy

KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deers", "backend", "cuda")
SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emulator_shim.h")
SCALARS = {"int": np.int32, "long long": np.int64, "unsigned int": np.uint32, "unsigned long long": np.uint64,
           "float": np.float32, "double": np.float64}
CTYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.uint32: ctypes.c_uint32,
          np.uint64: ctypes.c_uint64, np.float32: ctypes.c_float, np.float64: ctypes.c_double}
POINTEES = {"f16_t": "float16", "bf16_t": "bfloat16", "float": "float32", "double": "float64",
            "long long": "int64", "unsigned char": "uint8", "bool": "bool"}
GUARD = 64  # bytes before and after every buffer
GUARD_BYTE = 0xA5
GARBAGE_BYTE = 0xCD
_KERNEL_RE = re.compile(r'extern\s+"C"\s+void\s+(\w+)\s*\(([^)]*)\)')


def compiler_available() -> bool:
    return shutil.which("g++") is not None


def parse_params(params: str) -> list[tuple[str, bool]]:
    """'int op, const float* __restrict__ a' -> [("int", False), ("float", True)]."""
    parsed = []
    for param in params.split(","):
        words = param.replace("*", " * ").split()
        pointer = "*" in words
        words = [w for w in words if w not in ("const", "__restrict__", "*")]
        parsed.append((" ".join(words[:-1]), pointer))
    return parsed


def _preprocess(file: str) -> str:
    return subprocess.run(["g++", "-x", "c++", "-E", "-P", "-std=c++17", "-include", SHIM, "-I", KERNEL_DIR,
                           os.path.join(KERNEL_DIR, file)], check=True, capture_output=True, text=True).stdout


def kernel_signatures(file: str) -> dict[str, list[tuple[str, bool]]]:
    """The extern "C" kernels of a .cu file (after macro expansion) and their parameters."""
    return {m.group(1): parse_params(m.group(2)) for m in _KERNEL_RE.finditer(_preprocess(file))}


def _trampolines(file: str, kernels: dict[str, list[tuple[str, bool]]]) -> str:
    lines = [f'#include "{SHIM}"', f'#include "{os.path.join(KERNEL_DIR, file)}"']
    for name, params in kernels.items():
        call_args = ", ".join(f"*({ctype}{'*' if pointer else ''}*)args[{i}]"
                              for i, (ctype, pointer) in enumerate(params))
        lines.append(f"static void body_{name}(void* p) {{ void** args = (void**)p; {name}({call_args}); }}")
        lines.append(f'extern "C" void launch_{name}(const long long* cfg, void** args) '
                     f"{{ emu::launch(cfg, body_{name}, args); }}")
    return "\n".join(lines) + "\n"


def build_library() -> tuple[str, dict[str, dict[str, list[tuple[str, bool]]]]]:
    """Compile (or reuse) the emulation library; returns its path and the kernels of each file."""
    digest = hashlib.sha1()
    for path in sorted([SHIM, __file__] + [os.path.join(KERNEL_DIR, f) for f in os.listdir(KERNEL_DIR)
                                           if f.endswith((".cu", ".cuh"))]):
        with open(path, "rb") as f:
            digest.update(path.encode() + f.read())
    folder = os.path.join(tempfile.gettempdir(), f"deers-cuda-emulator-{digest.hexdigest()[:16]}")
    library = os.path.join(folder, "kernels.so")
    signatures = os.path.join(folder, "signatures.json")
    if os.path.exists(library) and os.path.exists(signatures):
        with open(signatures) as f:
            return library, {file: {name: [tuple(p) for p in params] for name, params in kernels.items()}
                             for file, kernels in json.load(f).items()}
    kernels = {file: kernel_signatures(file) for file in plan.KERNEL_FILES}
    build = os.path.join(folder, f"build-{os.getpid()}")  # a concurrent run builds in its own folder
    os.makedirs(build, exist_ok=True)
    jobs, objects = [], []
    for file in plan.KERNEL_FILES:
        source = os.path.join(build, file.replace(".cu", ".cpp"))
        with open(source, "w") as f:
            f.write(_trampolines(file, kernels[file]))
        objects.append(source.replace(".cpp", ".o"))
        command = ["g++", "-std=c++17", "-O0", "-fPIC", "-w", "-U_FORTIFY_SOURCE", "-c", source, "-o", objects[-1]]
        jobs.append(subprocess.Popen(command, stderr=subprocess.PIPE, text=True))
    for job in jobs:
        _, err = job.communicate()
        if job.returncode:
            raise RuntimeError(f"emulator build failed:\n{err}")
    partial = library + f".{os.getpid()}"
    subprocess.run(["g++", "-shared", "-o", partial] + objects, check=True)
    os.replace(partial, library)  # atomic: a concurrent test run never loads half a library
    with open(signatures + f".{os.getpid()}", "w") as f:
        json.dump(kernels, f)
    os.replace(signatures + f".{os.getpid()}", signatures)
    shutil.rmtree(build, ignore_errors=True)
    return library, kernels


class HostRuntime:
    """The CUDA backend's runtime interface on the CPU (see the module docstring)."""

    def __init__(self):
        path, self.kernels = build_library()
        self.lib = ctypes.CDLL(path)
        self.launches: list[str] = []  # kernel names in launch order, for tests to inspect
        self.gemms: list = []  # the cuBLAS calls (gemm.Gemm or gemm.BatchedGemm), in order
        self.allow_tf32_seen: list[bool] = []

    # ---- memory -----------------------------------------------------------------------------------
    def empty(self, numel: int, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        raw = np.full(numel * dtype.itemsize + 2 * GUARD, GUARD_BYTE, np.uint8)
        raw[GUARD:GUARD + numel * dtype.itemsize] = GARBAGE_BYTE
        return raw[GUARD:GUARD + numel * dtype.itemsize].view(dtype)

    def upload(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array).reshape(-1)
        buf = self.empty(array.size, array.dtype)
        buf[...] = array
        return buf

    def download(self, buf: np.ndarray) -> np.ndarray:
        return np.array(buf, copy=True)

    def address(self, buf: np.ndarray) -> int:
        """A host address stands in for a device address (the emulated kernels run in this process)."""
        return buf.ctypes.data

    def view(self, buf: np.ndarray, shape, strides, offset: int) -> np.ndarray:
        item = buf.itemsize
        return np.ndarray(shape, buf.dtype, buf, offset * item, tuple(s * item for s in strides))

    def synchronize(self) -> None:
        pass

    def matmul(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        """Integer matmul (the backend sends float GEMMs to `gemm`)."""
        if x.dtype.kind == "f":
            raise AssertionError(f"float matmul ({x.dtype}) must go through gemm (cuBLAS)")
        np.matmul(x, y, out=out)

    def gemm(self, call, a: np.ndarray, b: np.ndarray, out: np.ndarray, sfx: str, allow_tf32: bool,
             accumulate: bool = False) -> None:
        """cublasGemmStridedBatchedEx as cuBLAS defines it, on the flat buffers: each operand read
        column-major through its op, leading dimension, batch stride and offset, C written
        column-major with ldc (accumulate: beta = 1, C += the product); every element read or
        written must lie inside its buffer and the leading dimensions must be legal, so a wrong
        plan fails here. f16/bf16 compute in f32."""
        self.allow_tf32_seen.append(allow_tf32)
        self.gemms.append(call)
        m, n, k, batch = call.m, call.n, call.k, call.batch
        wide = np.float64 if sfx == "f64" else np.float32

        def read(buf: np.ndarray, operand, rows: int, cols: int, what: str) -> np.ndarray:
            """op(X) (batch, rows, cols) of the column-major matrix X at operand's place in buf."""
            stored_rows = rows if operand.op == 0 else cols
            if operand.ld < max(1, stored_rows):
                raise AssertionError(f"gemm {what}: ld {operand.ld} < {stored_rows} rows")
            strides = (1, operand.ld) if operand.op == 0 else (operand.ld, 1)
            return self._strided(buf, operand.offset, (batch, rows, cols), (operand.batch_stride,) + strides, what)

        first = read(b, call.first, m, k, "first (B)").astype(wide)
        second = read(a, call.second, k, n, "second (A)").astype(wide)
        if call.ldc < max(1, m):
            raise AssertionError(f"gemm: ldc {call.ldc} < {m}")
        c = self._strided(out, call.c_offset, (batch, m, n), (call.stride_c, 1, call.ldc), "C")
        product = np.matmul(first, second)
        c[...] = (c.astype(wide) + product if accumulate else product).astype(out.dtype)

    def gemm_batched(self, call, a: np.ndarray, b: np.ndarray, out: np.ndarray, sfx: str, allow_tf32: bool,
                     accumulate: bool = False) -> None:
        """cublas<S|D>gemmBatched as cuBLAS defines it: the runtime's pointer arrays (built by
        gemm.pointer_table from the buffers' addresses and uploaded through `meta`, as CupyRuntime
        does) name each entry's matrix; every pointer must be aligned and lie in the buffer of its
        role, each matrix is read column-major through its op and ld with every element
        bounds-checked, and no two C entries may overlap. Only the dtypes CuPy has the call for."""
        if sfx not in gemm.POINTER_ARRAY_DTYPES:
            raise AssertionError(f"gemm_batched: CuPy's cuBLAS binding has no pointer-array GEMM for {sfx}")
        self.allow_tf32_seen.append(allow_tf32)
        self.gemms.append(call)
        m, n, k, batch = call.m, call.n, call.k, call.batch
        wide = np.float64 if sfx == "f64" else np.float32
        table = self.meta(gemm.pointer_table(call, a.ctypes.data, b.ctypes.data, out.ctypes.data, a.itemsize))
        if table.size != 3 * batch:
            raise AssertionError(f"gemm_batched: {table.size} pointers for 3 arrays of {batch}")

        def entry(buf: np.ndarray, address: int, op: int, ld: int, rows: int, cols: int, what: str) -> np.ndarray:
            """op(X) (rows, cols) of the column-major matrix X at `address`, which must lie in buf."""
            delta = int(address) - buf.ctypes.data
            if delta % buf.itemsize:
                raise AssertionError(f"gemm_batched {what}: pointer {address:#x} is not {buf.itemsize}-byte aligned")
            stored_rows = rows if op == 0 else cols
            if ld < max(1, stored_rows):
                raise AssertionError(f"gemm_batched {what}: ld {ld} < {stored_rows} rows")
            strides = (1, ld) if op == 0 else (ld, 1)
            return self._strided(buf, delta // buf.itemsize, (rows, cols), strides, what)

        first = np.stack([entry(b, table[i], call.first.op, call.first.ld, m, k, f"first (B) entry {i}")
                          for i in range(batch)]).astype(wide)
        second = np.stack([entry(a, table[batch + i], call.second.op, call.second.ld, k, n, f"second (A) entry {i}")
                           for i in range(batch)]).astype(wide)
        product = np.matmul(first, second)
        written = np.zeros(out.size, np.int64)
        for i in range(batch):
            c = entry(out, table[2 * batch + i], 0, call.ldc, m, n, f"C entry {i}")
            c[...] = (c.astype(wide) + product[i] if accumulate else product[i]).astype(out.dtype)
            np.add.at(written, (int(table[2 * batch + i]) - out.ctypes.data) // out.itemsize
                      + np.add.outer(np.arange(m), np.arange(n) * call.ldc).reshape(-1), 1)
        if (written > 1).any():
            raise AssertionError("gemm_batched: C entries overlap (cuBLAS leaves such results undefined)")

    @staticmethod
    def _strided(buf: np.ndarray, offset: int, shape, strides, what: str) -> np.ndarray:
        last = offset + sum((size - 1) * abs(stride) for size, stride in zip(shape, strides))
        if offset < 0 or last >= buf.size:
            raise AssertionError(f"gemm {what} reads elements [{offset}, {last}] of a buffer of {buf.size}")
        return np.lib.stride_tricks.as_strided(buf[offset:], shape, tuple(s * buf.itemsize for s in strides))

    def meta(self, values: tuple[int, ...]) -> np.ndarray:
        return self.upload(np.array(values, np.int64))

    # ---- launches ---------------------------------------------------------------------------------
    def launch(self, k: plan.Kernel, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        params = self.kernels[k.file].get(k.name)
        if params is None:
            raise AssertionError(f"kernel {k.name} is not defined in {k.file}")
        if len(args) != len(params):
            raise AssertionError(f"{k.name}: {len(args)} arguments for {len(params)} parameters")
        keep, pointers = [], (ctypes.c_void_p * len(args))()
        buffers = []
        for i, (arg, (ctype, pointer)) in enumerate(zip(args, params)):
            if pointer:
                expected = POINTEES[ctype]
                if not isinstance(arg, np.ndarray) or arg.dtype.name != expected or arg.ndim != 1 \
                        or not arg.flags.c_contiguous:
                    got = f"{type(arg).__name__} {getattr(arg, 'dtype', '')} {getattr(arg, 'shape', '')}"
                    raise AssertionError(f"{k.name} argument {i}: needs a flat {expected} buffer, got {got}")
                value = ctypes.c_void_p(arg.ctypes.data)
                buffers.append(arg)
            else:
                expected = SCALARS[ctype]
                if type(arg) is not expected:
                    raise AssertionError(f"{k.name} argument {i}: needs {expected.__name__} for C {ctype}, "
                                         f"got {type(arg).__name__} {arg!r}")
                value = CTYPES[expected](arg)
            keep.append(value)
            pointers[i] = ctypes.cast(ctypes.pointer(value), ctypes.c_void_p)
        grid3 = tuple(grid) + (1,) * (3 - len(grid))
        block3 = tuple(block) + (1,) * (3 - len(block))
        if any(g < 1 for g in grid3) or any(b < 1 for b in block3) or np.prod(block3) > 1024:
            raise AssertionError(f"{k.name}: bad launch grid {grid3} block {block3}")
        cfg = (ctypes.c_longlong * 6)(*grid3, *block3)
        getattr(self.lib, f"launch_{k.name}")(cfg, pointers)
        self.launches.append(k.name)
        for buf in buffers:
            _check_guards(k.name, buf)


def _check_guards(name: str, buf: np.ndarray) -> None:
    raw = buf.base
    while raw is not None and raw.base is not None:
        raw = raw.base
    if raw is None or raw.dtype != np.uint8 or raw.size != buf.nbytes + 2 * GUARD:
        return  # not allocated by HostRuntime (a test's own array)
    if (raw[:GUARD] != GUARD_BYTE).any() or (raw[GUARD + buf.nbytes:] != GUARD_BYTE).any():
        raise AssertionError(f"{name} wrote outside a buffer of {buf.size} {buf.dtype} elements")


def cuda_backend_fixture(request):
    """Body of the `cuda` fixture of the CUDA test files, parametrized over "emulated" and "gpu".

    "emulated" installs CUDABackend(0, HostRuntime()) as the backend of device cuda:0 for the
    module (so deers.tensor(..., device="cuda") runs the emulated kernels); "gpu" uses the real
    backend and skips unless CuPy sees a GPU. Yields the backend.
    """
    import pytest

    from deers.backend import _instances, backend_for
    from deers.backend.cuda import CUDABackend
    from deers.device import Device
    from devices import DEVICES

    cuda = Device.cuda(0)
    if request.param == "gpu":
        if "cuda" not in DEVICES:
            pytest.skip("no CUDA GPU on this machine")
        yield backend_for(cuda)
        return
    if not compiler_available():
        pytest.skip("g++ is needed to emulate the CUDA kernels on the CPU")
    backend = CUDABackend(0, runtime=HostRuntime())
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(_instances, cuda, backend)
        yield backend

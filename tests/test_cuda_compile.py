"""Every .cu file of the CUDA backend compiles, without a GPU:

- with nvcc (to PTX for sm_90) when nvcc is on PATH, warnings as errors;
- with NVRTC, the compiler CuPy runs on first use, with exactly the backend's options (no host
  headers: NVRTC knows no INFINITY, <cmath> or <cstdint>), when CuPy and an NVRTC library are
  installed (pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12);

and every kernel name the backend may launch (plan.KERNELS) is an entry point of its file's PTX.
The compilers run in parallel once per module (about 20 s on two cores).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from deers.backend.cuda import plan

KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deers", "backend", "cuda")
NVCC = shutil.which("nvcc")
NVCC_ARCH = "sm_90"
NVRTC_ARCH = "compute_80"


def _nvrtc():
    """CuPy's NVRTC binding when CuPy and a loadable NVRTC library are installed, else None."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:  # ImportError, or the library is missing (RuntimeError / OSError from the loader)
        return None


def _entries(ptx: str) -> set[str]:
    return set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))


def _expected(file: str) -> set[str]:
    return {name for name in plan.all_kernel_names() if plan.kernel(*_split(name)).file == file}


def _split(name: str) -> tuple[str, ...]:
    """'copy_bf16_f32' -> ('copy', 'bf16', 'f32'): the family is the longest known prefix."""
    family = max((f for f in plan.KERNELS if name.startswith(f + "_")), key=len)
    return (family,) + tuple(name[len(family) + 1:].split("_"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[tuple[str, str], tuple[bool, str, str]]:
    """(compiler, file) -> (ok, log, ptx): nvcc in background processes while NVRTC runs here."""
    out = tmp_path_factory.mktemp("ptx")
    jobs = {}
    if NVCC is not None:
        for file in plan.KERNEL_FILES:
            ptx = str(out / file.replace(".cu", ".ptx"))
            cmd = [NVCC, "-std=c++17", "--ptx", f"-arch={NVCC_ARCH}", "-Werror", "all-warnings", "-I", KERNEL_DIR,
                   os.path.join(KERNEL_DIR, file), "-o", ptx]
            jobs[file] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), ptx)
    results = {}
    nvrtc = _nvrtc()
    if nvrtc is not None:
        from deers.backend.cuda.kernels import compile_options, read_kernel_source

        for file in plan.KERNEL_FILES:
            program = nvrtc.createProgram(read_kernel_source(file), file, [], [])
            try:
                nvrtc.compileProgram(program, list(compile_options()) + [f"-arch={NVRTC_ARCH}"])
                results["nvrtc", file] = (True, nvrtc.getProgramLog(program), nvrtc.getPTX(program).decode())
            except nvrtc.NVRTCError:
                results["nvrtc", file] = (False, nvrtc.getProgramLog(program), "")
    for file, (process, ptx) in jobs.items():
        log, _ = process.communicate(timeout=600)
        text = open(ptx).read() if process.returncode == 0 else ""
        results["nvcc", file] = (process.returncode == 0, log, text)
    return results


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("file", plan.KERNEL_FILES)
def test_nvcc_compiles_and_defines_every_kernel(compiled, file):
    ok, log, ptx = compiled["nvcc", file]
    assert ok, f"nvcc failed on {file}:\n{log}"
    missing = _expected(file) - _entries(ptx)
    assert not missing, f"{file} lacks kernels the backend launches: {sorted(missing)}"


@pytest.mark.skipif(_nvrtc() is None, reason="needs CuPy and an NVRTC library")
@pytest.mark.parametrize("file", plan.KERNEL_FILES)
def test_nvrtc_compiles_with_the_backend_options(compiled, file):
    ok, log, ptx = compiled["nvrtc", file]
    assert ok, f"NVRTC failed on {file}:\n{log}"
    missing = _expected(file) - _entries(ptx)
    assert not missing, f"{file} lacks kernels the backend launches: {sorted(missing)}"


def test_every_kernel_file_is_planned_and_documented():
    files = sorted(f for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))
    assert files == sorted(plan.KERNEL_FILES)
    for file in files:
        with open(os.path.join(KERNEL_DIR, file)) as f:
            source = f.read()
        assert source.startswith("// "), f"{file} must open with a comment saying what it computes"
        assert '#include "common.cuh"' in source
        lines = source.splitlines()
        for i, line in enumerate(lines):
            match = re.search(r'extern "C" __global__ void (?:MAX_THREADS_1024 )?(\w+)', line)
            if match is None:
                continue
            above, further = lines[i - 1].strip(), lines[i - 2].strip()
            commented = above.startswith("//") or "/*" in above or (above.startswith("#define")
                                                                     and further.startswith("//"))
            assert commented, f"{file}: kernel {match.group(1)} needs a one-line comment saying what it computes"


def test_kernel_name_split_round_trips():
    for name in plan.all_kernel_names():
        assert "_".join(_split(name)) == name
        assert plan.kernel(*_split(name)).name == name

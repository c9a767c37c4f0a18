"""The CUDA backend (device "cuda" / "cuda:i"): CuPy buffers, hand-written CUDA kernels, cuBLAS.

    deers.zeros(3, device="cuda")
    deers.backend.cuda.set_allow_tf32(True)   # float32 matmuls may use TF32 tensor cores

Importing this package does not import CuPy; creating the backend does, and raises
deers.BackendUnavailable when CuPy (pip install 'deers[cuda12]' or 'deers[cuda13]') or a GPU is
missing. See docs/cuda.md.
"""
from .backend import CUDABackend, get_allow_tf32, set_allow_tf32

__all__ = ["CUDABackend", "get_allow_tf32", "set_allow_tf32"]

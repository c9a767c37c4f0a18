"""Shared pieces of the benchmarks: configs, FLOP counts, timers, memory probes, matmul peak.

Benchmarks are not tests: they print measurements. Results go into docs/performance.md.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # for torch_gpt.py, the PyTorch reference model

# name -> (vocab, seq_len, n_layer, n_head, n_embd, mlp_hidden, batch)
CONFIGS = {
    "headline": (50257, 256, 6, 6, 192, 768, 4),
    "small-vocab": (4096, 256, 6, 6, 192, 768, 4),
    "tiny": (512, 64, 2, 4, 64, 256, 8),
    "gpt2-124m": (50257, 1024, 12, 12, 768, 3072, 8),
}


def step_flops(vocab: int, seq: int, n_layer: int, n_head: int, n_embd: int, mlp: int, batch: int) -> float:
    """Matmul FLOPs of one training step: forward (2 per multiply-add) and backward (twice that).

    Per token: qkv 3D^2, proj D^2, MLP 2DH per layer, lm_head DV; attention scores and values
    2 T hd per head and layer (the full T x T, as the causal mask is applied after the GEMM).
    """
    tokens = batch * seq
    dense = n_layer * (4 * n_embd * n_embd + 2 * n_embd * mlp) + n_embd * vocab
    attention = n_layer * 2 * seq * n_embd
    return 3 * 2 * tokens * (dense + attention)


def matmul_peak_gflops(shapes=((2048, 2048, 2048), (1024, 192, 50257))) -> float:
    """The best float32 GEMM rate NumPy's BLAS reaches here, over square and lm_head shapes."""
    best = 0.0
    for m, k, n in shapes:
        a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        np.matmul(a, b, out=out)
        for _ in range(3):
            t = time.perf_counter()
            np.matmul(a, b, out=out)
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM belongs to this process image only; ru_maxrss survives fork + exec, so a child
    started by a big parent would report the parent's peak.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i.get('version', '')} {i.get('architecture', '')} "
                         f"{i['num_threads']} threads" for i in threadpool_info())
    except ImportError:
        pass
    numpy_blas = f"numpy {np.__version__} {blas}".strip()
    return f"{cpu}, {os.cpu_count()} cores; {numpy_blas}; {cpu_kernels()}"


def cpu_kernels() -> str:
    """Which kernels Deers' CPU backend runs here: numba's compiled ones (deers[fast]) or NumPy only."""
    from deers.backend.cpu import compiled_kernels

    if compiled_kernels() is None:
        return "Deers CPU kernels: NumPy only"
    import numba

    return f"Deers CPU kernels: compiled (numba {numba.__version__})"


class PhaseTimer:
    """Accumulates wall time per named phase; `sync` makes device work finish before each stamp."""

    def __init__(self, sync=lambda: None):
        self.sync = sync
        self.totals: dict[str, float] = {}
        self.last = 0.0

    def start(self) -> None:
        self.sync()
        self.last = time.perf_counter()

    def stamp(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now

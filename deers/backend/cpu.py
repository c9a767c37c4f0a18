"""The fast CPU backend: the reference backend (reference.py) with the primitives that pay overridden.

`CPUBackend` inherits every primitive from `ReferenceBackend` (plain NumPy) and overrides only
those where another way measurably pays on a training step; each override says in one line
what it saves. What it adds:

- Threads: one pool (`cpu_threads.RowPool`) splits every large GEMM into one share per thread,
  with OpenBLAS on one thread for it, and runs the fused kernels' row blocks (cpu_kernels.py;
  attention: cpu_attention.py). NumPy ufuncs release the GIL, so the threads use several cores.
- Memory: results of 32 MiB and more are reused across steps (`cpu_kernels.BufferCache`).
- Compiled kernels: with numba installed (pip install 'deers[fast]'), ReLU, sign, RMSNorm and its
  backward, RoPE and AdamW's update run as one compiled loop each on contiguous float32 / float64
  operands (`cpu_compiled`); `CPUBackend(compiled=False)` or DEERS_COMPILED=0 keeps NumPy.
- Process-wide settings, all made in one place, `process_settings` below, when the backend is
  created (backend_for creates it on first use); each has an opt-out environment variable.
"""
from __future__ import annotations

import os
import warnings
from math import prod
from types import ModuleType
from typing import Callable, Sequence

import numpy as np

from ..dtype import DType, is_half_numpy
from ..layout import Layout, contiguous_strides
from . import cpu_attention, cpu_kernels, cpu_threads
from .attention import check_attention
from .reference import ReferenceBackend, check_dense, check_index, check_rope, quiet, view

_UFUNCS = {  # unary names that are one NumPy ufunc, run with out= (no temporary)
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos,
    "tanh": np.tanh, "abs": np.abs, "sign": np.sign, "bitwise_not": np.invert,
}


def process_settings() -> tuple[bool, Callable[[int], None] | None]:
    """The fast backend's process-wide settings, made when a CPUBackend is created (a
    ReferenceBackend makes none). Returns (malloc keeps freed memory, OpenBLAS thread setter).

    1. glibc's malloc keeps freed blocks of up to 32 MiB for reuse (`cpu_kernels.keep_freed_memory`),
       so a step runs in the memory the previous one freed instead of faulting in fresh pages;
       the process's resident memory then does not shrink after a peak.
       Opt out: DEERS_KEEP_FREED_MEMORY=0.
    2. NumPy's OpenBLAS thread count is set per GEMM (`cpu_threads.openblas_setter`): one thread
       while the pool splits a large GEMM, the pool's count for a small one, so no idle BLAS
       thread spins on a core the next op needs. A NumPy GEMM made outside Deers runs on the
       count the last GEMM set. Opt out: DEERS_OWN_BLAS_THREADS=0 (GEMMs on the BLAS's own threads).
    """
    return cpu_kernels.keep_freed_memory(), cpu_threads.openblas_setter()


COMPILED_ENV = "DEERS_COMPILED"  # "0": NumPy kernels only, even with numba installed


def compiled_kernels(wanted: bool | None = None) -> ModuleType | None:
    """The compiled kernels (cpu_compiled) when `wanted` (None: when numba imports and
    DEERS_COMPILED is not "0"), else None. wanted=True without numba is an ImportError."""
    if wanted is False or (wanted is None and os.environ.get(COMPILED_ENV, "1") == "0"):
        return None
    try:
        from . import cpu_compiled
    except ImportError as exc:
        if wanted:
            raise ImportError(f"CPUBackend(compiled=True) needs numba: pip install 'deers[fast]' ({exc})") from exc
        return None
    except Exception as exc:  # numba installed but unusable (e.g. no writable cache folder): NumPy, said aloud
        if wanted:
            raise
        warnings.warn(f"deers: numba's compiled CPU kernels could not load, using NumPy's ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)
        return None
    return cpu_compiled


def _scatter_add(shape: tuple[int, ...], dtype: DType, dim: int, index: np.ndarray, source: np.ndarray) -> np.ndarray:
    """zeros(shape), flat, with every source element added at the position whose `dim` coordinate
    comes from `index` (broadcast over the source grid) and whose other coordinates are its own:
    one np.add.at on flat positions, NumPy's fast path (an n-D add.at is several times slower)."""
    strides = contiguous_strides(shape)
    positions = index * strides[dim]  # already checked to lie in [0, size)
    for d, size in enumerate(source.shape):
        if d != dim:
            positions = positions + np.arange(size).reshape([-1 if k == d else 1 for k in range(source.ndim)]) * strides[d]
    res = np.zeros(prod(shape), dtype.numpy)
    np.add.at(res, np.broadcast_to(positions, source.shape).reshape(-1), np.ascontiguousarray(source).reshape(-1))
    return res


class CPUBackend(ReferenceBackend):
    """The default "cpu" backend: ReferenceBackend plus threads, a buffer cache and compiled loops."""

    def __init__(self, threads: int | None = None, compiled: bool | None = None):
        super().__init__()
        self.compiled = compiled_kernels(compiled)  # None: every primitive on NumPy
        self.pool = cpu_threads.RowPool(threads)  # threads for GEMMs and fused kernels (NumPy releases the GIL)
        self.keeps_freed_memory, self.set_blas_threads = process_settings()
        self.buffers = cpu_kernels.BufferCache()  # large results reused across steps

    def empty(self, numel: int, dtype: DType) -> np.ndarray:
        # saves faulting in fresh pages for a large buffer every step
        return self.buffers.empty(numel, dtype.numpy)

    @quiet
    def unary(self, name: str, a: np.ndarray, la: Layout, out: np.ndarray | None = None) -> np.ndarray:
        # saves the reference's temporary and copy: one compiled loop or one ufunc writing the result
        x = view(a, la)
        res = np.empty(la.numel, a.dtype) if out is None else out
        dst = res.reshape(la.shape)
        if self.compiled is not None and name in self.compiled.UNARY and self.compiled.supports(x, res):
            self.compiled.unary(name, x, res)
        elif name == "relu" and not is_half_numpy(a.dtype):
            np.maximum(x, 0, out=dst)
        elif name == "sigmoid" and not is_half_numpy(a.dtype):  # (1 + tanh(x / 2)) / 2 = 1 / (1 + exp(-x)), in place
            np.multiply(x, 0.5, out=dst)
            np.tanh(dst, out=dst)
            dst *= 0.5
            dst += 0.5
        elif name in _UFUNCS:  # NumPy's f16 / bf16 loops compute in f32 and round once
            _UFUNCS[name](x, out=dst)
        else:
            return super().unary(name, a, la, out)
        return res

    @quiet
    def where(self, c: np.ndarray, lc: Layout, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout) -> np.ndarray:
        # saves np.where's per-element branch (slow on a random mask, as a ReLU's): a bitwise select
        x, y = view(a, la), view(b, lb)
        if x.dtype == y.dtype and x.itemsize in (2, 4, 8):
            return cpu_kernels.select(view(c, lc), x, y).reshape(-1)
        return super().where(c, lc, a, la, b, lb)

    @quiet
    def matmul(self, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout, acc: np.ndarray | None = None) -> np.ndarray:
        # saves idle cores and spinning BLAS threads (the pool's split GEMM), and acc's temporary
        x, y = view(a, la), view(b, lb)
        out_shape = la.shape[:-1] + (lb.shape[-1],)
        if is_half_numpy(a.dtype):  # NumPy has no half GEMM: the reference's f32 product, rounded once
            return super().matmul(a, la, b, lb, acc)
        if acc is not None:
            if acc.size != prod(out_shape) or acc.dtype != a.dtype:
                return super().matmul(a, la, b, lb, acc)  # the reference raises the error
            acc += self._gemm(x, y, np.empty(out_shape, a.dtype)).reshape(-1)
            return acc
        res = self.buffers.empty(prod(out_shape), a.dtype)  # the lm_head logits: reused, not faulted in
        self._gemm(x, y, res.reshape(out_shape))
        return res

    def _gemm(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out[...] = x @ y: a large GEMM split over the pool's threads, a small one on OpenBLAS's
        own (cpu_threads.matmul); any GEMM on the BLAS's own threads when it is not OpenBLAS."""
        return cpu_threads.matmul(self.pool, x, y, out, self.set_blas_threads)

    def index_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: np.ndarray, lidx: Layout,
                  src: np.ndarray, lsrc: Layout) -> np.ndarray:
        # saves the n-D np.add.at's slow path (an embedding's backward): one add.at on flat positions
        if is_half_numpy(dtype.numpy):
            return super().index_add(shape, dtype, dim, idx, lidx, src, lsrc)
        index = view(idx, lidx)
        check_index(index, shape[dim], "index_add")
        grid_index = index.reshape([-1 if d == dim else 1 for d in range(len(shape))])  # (n,) at `dim`
        return _scatter_add(shape, dtype, dim, grid_index, view(src, lsrc))

    def scatter_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: np.ndarray, lidx: Layout,
                    src: np.ndarray, lsrc: Layout) -> np.ndarray:
        # saves the n-D np.add.at's slow path: one add.at on flat positions
        if is_half_numpy(dtype.numpy):
            return super().scatter_add(shape, dtype, dim, idx, lidx, src, lsrc)
        index = view(idx, lidx)
        check_index(index, shape[dim], "scatter_add")
        source = view(src, lsrc)[tuple(slice(0, s) for s in index.shape)]  # only index.shape is read
        return _scatter_add(shape, dtype, dim, index, source)

    @quiet
    def softmax(self, a: np.ndarray, la: Layout, log: bool, causal: bool = False, scale: float = 1.0) -> np.ndarray:
        # saves memory traffic and idle cores: cache-sized row blocks over the threads, in place
        x = view(a, la)
        half = is_half_numpy(a.dtype)
        if half:
            x = x.astype(np.float32)  # also compacts
        if causal:
            if la.ndim < 2:
                raise ValueError(f"softmax: causal needs (..., T, S) scores, got shape {la.shape}")
            res = cpu_kernels.causal_softmax(self.pool, x, log, scale)
        else:
            c = la.shape[-1] if la.shape else 1
            res = cpu_kernels.softmax(self.pool, np.ascontiguousarray(x).reshape(-1, c), log, scale)
        return (res.astype(a.dtype) if half else res).reshape(-1)

    @quiet
    def softmax_backward(self, y: np.ndarray, ly: Layout, g: np.ndarray, lg: Layout, log: bool,
                         causal: bool = False, scale: float = 1.0) -> np.ndarray:
        # saves memory traffic and idle cores: cache-sized row blocks over the threads
        c = ly.shape[-1] if ly.shape else 1
        compute = np.float32 if is_half_numpy(y.dtype) else y.dtype  # f16 / bf16: f32, rounded once
        ys = np.ascontiguousarray(view(y, ly), dtype=compute).reshape(-1, c)
        gs = np.ascontiguousarray(view(g, lg), dtype=compute).reshape(-1, c)
        res = cpu_kernels.softmax_backward(self.pool, ys, gs, log, causal, scale)
        return res.astype(y.dtype, copy=False).reshape(-1)

    @quiet
    def cross_entropy(self, logits: np.ndarray, llogits: Layout, targets: np.ndarray, ltargets: Layout,
                      ignore_index: int, label_smoothing: float,
                      overwrite_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # saves the (N, C) temporaries (the gradient may overwrite the logits) and idle cores
        x = np.ascontiguousarray(view(logits, llogits))  # the buffer itself when already dense
        return cpu_kernels.cross_entropy(self.pool, x, view(targets, ltargets), ignore_index, label_smoothing,
                                         overwrite_logits)

    @quiet
    def rmsnorm(self, x: np.ndarray, lx: Layout, w: np.ndarray, lw: Layout,
                eps: float) -> tuple[np.ndarray, np.ndarray]:
        # saves four of the reference's five passes over x: one compiled loop
        if self.compiled is None or not self.compiled.supports(x, w):  # one f32 / f64 dtype
            return super().rmsnorm(x, lx, w, lw, eps)
        rows, d = prod(lx.shape[:-1]), lx.shape[-1]
        xv = np.ascontiguousarray(view(x, lx)).reshape(rows, d)  # no copy when dense
        y, rstd = self.compiled.rmsnorm(xv, np.ascontiguousarray(view(w, lw)), eps)
        return y.reshape(-1), rstd

    @quiet
    def rmsnorm_backward(self, g: np.ndarray, lg: Layout, x: np.ndarray, lx: Layout, w: np.ndarray, lw: Layout,
                         rstd: np.ndarray, lrstd: Layout) -> tuple[np.ndarray, np.ndarray]:
        # saves the reference's temporaries and passes: one compiled loop
        if self.compiled is None or not self.compiled.supports(g, x, w, rstd):  # one f32 / f64 dtype
            return super().rmsnorm_backward(g, lg, x, lx, w, lw, rstd, lrstd)
        rows, d = prod(lx.shape[:-1]), lx.shape[-1]
        gv, xv = (np.ascontiguousarray(view(b, lay)).reshape(rows, d) for b, lay in ((g, lg), (x, lx)))
        wv, rv = np.ascontiguousarray(view(w, lw)), np.ascontiguousarray(view(rstd, lrstd))
        gx, gw = self.compiled.rmsnorm_backward(gv, xv, wv, rv)
        return gx.reshape(-1), gw

    @quiet
    def rope(self, x: np.ndarray, lx: Layout, cos: np.ndarray, lcos: Layout, sin: np.ndarray, lsin: Layout,
             inverse: bool = False) -> np.ndarray:
        # saves copying a strided x (q, k: views of the qkv product) and the rotate-half temporaries
        check_rope(lx.shape, lcos.shape, lsin.shape)
        c, s = view(cos, lcos), view(sin, lsin)
        if self.compiled is None or not self.compiled.supports(x, c, s) or lx.ndim > 4 or lx.strides[-1] != 1:
            return super().rope(x, lx, cos, lcos, sin, lsin, inverse)
        return self.compiled.rope(x, lx.offset, lx.strides, lx.shape, c, s, inverse)

    @quiet
    def adamw_step(self, params: Sequence[tuple[np.ndarray, Layout]], grads: Sequence[tuple[np.ndarray, Layout]],
                   exp_avgs: Sequence[tuple[np.ndarray, Layout]], exp_avg_sqs: Sequence[tuple[np.ndarray, Layout]],
                   lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int) -> None:
        # saves the reference's temporaries: cache-sized blocks in place over the threads (compiled: one pass each)
        arrays = []
        for (param, lparam), (grad, lgrad), (m, lm), (v, lv) in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            for buf, layout, what in ((param, lparam, "param"), (m, lm, "exp_avg"), (v, lv, "exp_avg_sq")):
                check_dense(buf, layout, what, "adamw_step")
            arrays.append((param, np.ascontiguousarray(view(grad, lgrad)).reshape(-1), m, v))  # no copy when dense
        if any(is_half_numpy(group[0].dtype) or group[2].dtype != group[0].dtype for group in arrays):
            return super().adamw_step(params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps, weight_decay, step)
        fast = self.compiled is not None and all(self.compiled.supports(*group) for group in arrays)
        cpu_kernels.adamw_step(self.pool, arrays, lr, beta1, beta2, eps, weight_decay, step,
                               self.compiled.adamw_block if fast else None)

    @quiet
    def sum_of_squares(self, arrays: Sequence[tuple[np.ndarray, Layout]]) -> np.ndarray:
        # saves the x^2 temporary: each array's dot with itself, one pass
        acc = np.float64 if any(buf.dtype == np.float64 for buf, _ in arrays) else np.float32
        total = acc(0)
        for buf, layout in arrays:
            x = np.ascontiguousarray(view(buf, layout), dtype=np.float32 if is_half_numpy(buf.dtype) else None)
            flat = x.reshape(-1).astype(acc, copy=False)
            total += np.dot(flat, flat)
        return np.array([total], acc)

    @quiet
    def causal_attention(self, q: np.ndarray, lq: Layout, k: np.ndarray, lk: Layout, v: np.ndarray, lv: Layout,
                         scale: float) -> tuple[np.ndarray, np.ndarray]:
        # saves the hidden half of the scores' GEMMs and memory passes: query blocks, one thread per slice group
        check_attention(lq, lk, lv)
        qs, ks, vs = (_slices(b, l) for b, l in ((q, lq), (k, lk), (v, lv)))
        y, p = cpu_attention.causal_attention(self.pool, self.set_blas_threads, qs, ks, vs, scale)
        return y.astype(q.dtype, copy=False).reshape(-1), p.astype(q.dtype, copy=False).reshape(-1)

    @quiet
    def causal_attention_backward(self, q: np.ndarray, lq: Layout, k: np.ndarray, lk: Layout, v: np.ndarray,
                                  lv: Layout, p: np.ndarray, lp: Layout, dy: np.ndarray, ldy: Layout,
                                  scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # saves the GEMMs over blocks the forward never computed
        check_attention(lq, lk, lv)
        slices = [_slices(b, l) for b, l in ((q, lq), (k, lk), (v, lv), (p, lp), (dy, ldy))]
        grads = cpu_attention.causal_attention_backward(self.pool, self.set_blas_threads, *slices, scale)
        return tuple(g.astype(q.dtype, copy=False).reshape(-1) for g in grads)


def _slices(buf: np.ndarray, layout: Layout) -> np.ndarray:
    """The (..., R, C) view as contiguous (n, R, C) slices in its compute dtype (f32 for f16 / bf16);
    no copy when it already is."""
    compute = np.float32 if is_half_numpy(buf.dtype) else buf.dtype
    n = prod(layout.shape[:-2])
    return np.ascontiguousarray(view(buf, layout), dtype=compute).reshape((n,) + layout.shape[-2:])

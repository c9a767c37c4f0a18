"""The CPU backend: the numbered primitives of `deers.backend` on NumPy.

Buffers are flat 1-D NumPy arrays. `_view` turns (buffer, layout) into a strided NumPy view
without copying, so every primitive runs on the layout as it is (permuted, broadcast, narrowed);
matmul goes to BLAS through numpy.matmul, split over the pool's threads. The fused primitives
(14-20, 22) compact an operand only where their loops need rows, and run those loops blocked and
threaded in cpu_kernels.py (attention: cpu_attention.py). f16 / bf16 compute in f32 and round
once (`is_half_numpy`).

Memory: creating the backend asks glibc's malloc to keep freed blocks for reuse
(`cpu_kernels.keep_freed_memory`; DEERS_KEEP_FREED_MEMORY=0 declines), and results of 32 MiB and
more are reused across steps (`BufferCache`): a training step then runs in the memory the
previous one freed instead of faulting fresh pages in.

Threads: the backend's own pool splits every large GEMM into one share per thread, with OpenBLAS
set to one thread for it (`cpu_threads`; DEERS_OWN_BLAS_THREADS=0 declines), so no idle BLAS
thread spins on a core the next op needs; small GEMMs go to OpenBLAS's own threads.

Compiled kernels: with numba installed (pip install 'deers[fast]'), ReLU, sign, RMSNorm and its
backward, RoPE and AdamW's update run as one compiled loop each on contiguous float32 / float64
operands (`cpu_compiled`); `CPUBackend(compiled=False)` or DEERS_COMPILED=0 keeps every primitive on NumPy.
"""
from __future__ import annotations

import os
import warnings
from math import prod
from types import ModuleType
from typing import Sequence

import numpy as np

from ..dtype import DType, is_half_numpy
from ..layout import Layout, contiguous_strides
from . import COMPARISONS, attention, cpu_attention, cpu_kernels, cpu_threads

_UNARY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos,
    "tanh": np.tanh, "abs": np.abs, "sign": np.sign, "bitwise_not": np.invert,  # np.invert(bool) is not
}
_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "floor_divide": np.floor_divide, "remainder": np.remainder,  # both round down, like Python's // and %
    "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
}


def _view(buf: np.ndarray, layout: Layout) -> np.ndarray:
    """A zero-copy strided NumPy view of `buf` under `layout`."""
    if layout.offset == 0 and layout.is_contiguous() and layout.numel == buf.size:
        return buf.reshape(layout.shape)
    if layout.numel == 0:
        return np.empty(layout.shape, buf.dtype)
    item = buf.itemsize
    return np.ndarray(layout.shape, buf.dtype, buf, layout.offset * item, tuple(s * item for s in layout.strides))


def _check_index(idx: np.ndarray, size: int, op: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= size):  # checked, never wrapped
        raise IndexError(f"{op}: index out of range for dimension of size {size} "
                         f"(got values in [{idx.min()}, {idx.max()}])")


def _scatter_add(shape: tuple[int, ...], dtype: DType, dim: int, index: np.ndarray, source: np.ndarray) -> np.ndarray:
    """zeros(shape), flat, with every source element added at the position whose `dim` coordinate
    comes from `index` (broadcast over the source grid) and whose other coordinates are its own.
    One np.add.at on flat positions: NumPy's fast path, several times quicker than a 2-D add.at."""
    strides = contiguous_strides(shape)
    positions = index * strides[dim]  # already checked to lie in [0, size)
    for d, size in enumerate(source.shape):
        if d != dim:
            positions = positions + np.arange(size).reshape([-1 if k == d else 1 for k in range(source.ndim)]) * strides[d]
    res = np.zeros(prod(shape), dtype.numpy)
    np.add.at(res, np.broadcast_to(positions, source.shape).reshape(-1), np.ascontiguousarray(source).reshape(-1))
    return res


def _check_divisor(name: str, divisor, dtype: np.dtype) -> None:
    """Integer floor_divide / remainder by zero raise ZeroDivisionError, as Python and PyTorch's CPU
    backend do (NumPy would quietly give 0)."""
    if name in ("floor_divide", "remainder") and dtype.kind in "iub" and not np.all(divisor):
        raise ZeroDivisionError(f"{name}: integer division by zero ({dtype.name} operands)")


def _quiet(method):
    """Run a primitive with NumPy's floating-point warnings off: log(0) = -inf, x / 0 = inf and
    0 / 0 = nan are the documented results (as in PyTorch), not something to warn about."""
    # errstate used as a decorator (it keeps the name and docstring) costs about half the `with`
    # form per call, and a small GPT step makes ~90 of these calls.
    return np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore")(method)


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


class CPUBackend:
    """NumPy implementation of the backend contract (see deers.backend)."""

    name = "cpu"

    def __init__(self, threads: int | None = None, compiled: bool | None = None):
        self.compiled = compiled_kernels(compiled)  # None: every primitive on NumPy
        self.rng = np.random.default_rng()
        self.pool = cpu_threads.RowPool(threads)  # threads for GEMMs and fused kernels (NumPy releases the GIL)
        self.set_blas_threads = cpu_threads.openblas_setter()  # large GEMMs: OpenBLAS on one thread, split by the pool
        self.buffers = cpu_kernels.BufferCache()  # large results reused across steps
        self.keeps_freed_memory = cpu_kernels.keep_freed_memory()  # glibc: freed arrays reused, not refaulted

    # 1. allocation ---------------------------------------------------------------------------
    def empty(self, numel: int, dtype: DType) -> np.ndarray:
        return self.buffers.empty(numel, dtype.numpy)

    def full(self, numel: int, value, dtype: DType) -> np.ndarray:
        return np.full(numel, value, dtype.numpy)

    # 2. host transfer --------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray, dtype: DType) -> np.ndarray:
        # always a copy: a tensor must not alias the caller's array (in-place updates would leak into it)
        return np.array(array, dtype=dtype.numpy, order="C", copy=True).reshape(-1)

    def to_numpy(self, buf: np.ndarray, layout: Layout) -> np.ndarray:
        return np.array(_view(buf, layout), copy=True)

    # 3. random ---------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def get_rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def randn(self, numel: int, dtype: DType) -> np.ndarray:
        return self.rng.standard_normal(numel, dtype=np.float32 if dtype.itemsize <= 4 else np.float64).astype(
            dtype.numpy, copy=False)

    def rand(self, numel: int, dtype: DType) -> np.ndarray:
        return self.rng.random(numel, dtype=np.float32 if dtype.itemsize <= 4 else np.float64).astype(
            dtype.numpy, copy=False)

    def randint(self, numel: int, low: int, high: int) -> np.ndarray:
        return self.rng.integers(low, high, numel, dtype=np.int64)

    # 4-8. element-wise -------------------------------------------------------------------------
    @_quiet
    def unary(self, name: str, a: np.ndarray, la: Layout, out: np.ndarray | None = None) -> np.ndarray:
        x = _view(a, la)
        res = np.empty(la.numel, a.dtype) if out is None else out
        dst = res.reshape(la.shape)
        if self.compiled is not None and name in self.compiled.UNARY and self.compiled.supports(x, res):
            self.compiled.unary(name, x, res)
        elif name == "relu":
            np.maximum(x, 0, out=dst)
        elif name == "sigmoid":  # 1 / (1 + exp(-x)), written via tanh so it never overflows
            np.multiply(x, 0.5, out=dst)
            np.tanh(dst, out=dst)
            dst *= 0.5
            dst += 0.5
        else:
            _UNARY[name](x, out=dst)
        return res

    @_quiet
    def binary(self, name: str, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout,
               out: np.ndarray | None = None) -> np.ndarray:
        res = np.empty(la.numel, bool if name in COMPARISONS else a.dtype) if out is None else out
        x, y = _view(a, la), _view(b, lb)
        _check_divisor(name, y, a.dtype)
        _BINARY[name](x, y, out=res.reshape(la.shape))
        return res

    @_quiet
    def scalar(self, name: str, a: np.ndarray, la: Layout, value, reverse: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
        res = np.empty(la.numel, bool if name in COMPARISONS else a.dtype) if out is None else out
        x = _view(a, la)
        value = a.dtype.type(value) if name not in COMPARISONS else value
        _check_divisor(name, x if reverse else value, a.dtype)
        if reverse:
            _BINARY[name](value, x, out=res.reshape(la.shape))
        else:
            _BINARY[name](x, value, out=res.reshape(la.shape))
        return res

    @_quiet
    def where(self, c: np.ndarray, lc: Layout, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout) -> np.ndarray:
        x, y = _view(a, la), _view(b, lb)
        if x.dtype == y.dtype and x.itemsize in (2, 4, 8):  # bitwise select: no per-element branch
            return cpu_kernels.select(_view(c, lc), x, y).reshape(-1)
        return np.where(_view(c, lc), x, y).reshape(-1)

    @_quiet
    def cast(self, a: np.ndarray, la: Layout, dtype: DType) -> np.ndarray:
        return _view(a, la).astype(dtype.numpy, order="C").reshape(-1)  # one copy, row-major

    # 9. reductions -----------------------------------------------------------------------------
    @_quiet
    def reduce(self, name: str, a: np.ndarray, la: Layout, axes: tuple[int, ...]) -> np.ndarray:
        x = _view(a, la)
        if name == "sum" and is_half_numpy(a.dtype):
            # f16 / bf16: accumulate in f32 like PyTorch, round once at the end
            res = np.sum(x, axis=axes, keepdims=True, dtype=np.float32).astype(a.dtype)
        elif name == "sum":
            res = np.add.reduce(x, axis=axes, keepdims=True, dtype=a.dtype if a.dtype.kind == "f" else np.int64)
        elif name == "max":
            res = np.maximum.reduce(x, axis=axes, keepdims=True)
        elif name == "min":
            res = np.minimum.reduce(x, axis=axes, keepdims=True)
        elif name == "argmax":
            (axis,) = axes
            res = np.argmax(x, axis=axis, keepdims=True).astype(np.int64)
        else:
            raise ValueError(f"unknown reduction {name!r}")
        return np.ascontiguousarray(res).reshape(-1)

    # 10. matmul --------------------------------------------------------------------------------
    @_quiet
    def matmul(self, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout, acc: np.ndarray | None = None) -> np.ndarray:
        x, y = _view(a, la), _view(b, lb)
        out_shape = la.shape[:-1] + (lb.shape[-1],)
        if acc is not None:  # acc += x @ y (f16 / bf16: the sum in f32, rounded once)
            _check_acc(acc, prod(out_shape), a.dtype)
            wide = np.float32 if is_half_numpy(a.dtype) else a.dtype
            product = self._gemm(x.astype(wide, copy=False), y.astype(wide, copy=False),
                                 np.empty(out_shape, wide)).reshape(-1)
            if wide == a.dtype:
                acc += product
            else:
                acc[...] = (acc.astype(wide) + product).astype(a.dtype)
            return acc
        if is_half_numpy(a.dtype):  # f16 / bf16: NumPy has no half GEMM; compute in f32, round once
            wide = self._gemm(x.astype(np.float32), y.astype(np.float32), np.empty(out_shape, np.float32))
            return wide.astype(a.dtype).reshape(-1)
        res = self.buffers.empty(prod(out_shape), a.dtype)  # the lm_head logits: reused, not faulted in
        self._gemm(x, y, res.reshape(out_shape))
        return res

    def _gemm(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out[...] = x @ y: a large GEMM split over the pool's threads, a small one on OpenBLAS's
        own (cpu_threads.matmul); any GEMM on the BLAS's own threads when it is not OpenBLAS."""
        return cpu_threads.matmul(self.pool, x, y, out, self.set_blas_threads)

    # 11-12. indexing ---------------------------------------------------------------------------
    def index_select(self, a: np.ndarray, la: Layout, dim: int, idx: np.ndarray, lidx: Layout) -> np.ndarray:
        index = _view(idx, lidx)
        _check_index(index, la.shape[dim], "index_select")
        return np.ascontiguousarray(np.take(_view(a, la), index, axis=dim)).reshape(-1)

    def index_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: np.ndarray, lidx: Layout,
                  src: np.ndarray, lsrc: Layout) -> np.ndarray:
        index = _view(idx, lidx)
        _check_index(index, shape[dim], "index_add")
        grid_index = index.reshape([-1 if d == dim else 1 for d in range(len(shape))])  # (n,) at `dim`
        return _scatter_add(shape, dtype, dim, grid_index, _view(src, lsrc))

    def gather(self, a: np.ndarray, la: Layout, dim: int, idx: np.ndarray, lidx: Layout) -> np.ndarray:
        index = _view(idx, lidx)
        _check_index(index, la.shape[dim], "gather")
        # like torch.gather, the index may be smaller than the input along the other dims
        x = _view(a, la)[tuple(slice(None) if d == dim else slice(0, s) for d, s in enumerate(lidx.shape))]
        return np.ascontiguousarray(np.take_along_axis(x, index, axis=dim)).reshape(-1)

    def scatter_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: np.ndarray, lidx: Layout,
                    src: np.ndarray, lsrc: Layout) -> np.ndarray:
        index = _view(idx, lidx)
        _check_index(index, shape[dim], "scatter_add")
        source = _view(src, lsrc)[tuple(slice(0, s) for s in index.shape)]  # only index.shape is read
        return _scatter_add(shape, dtype, dim, index, source)

    # 13. copy ----------------------------------------------------------------------------------
    def copy(self, src: np.ndarray, lsrc: Layout, dst: np.ndarray, ldst: Layout) -> None:
        _view(dst, ldst)[...] = _view(src, lsrc)

    # 14-18. fused primitives -----------------------------------------------------------------
    @_quiet
    def softmax(self, a: np.ndarray, la: Layout, log: bool, causal: bool = False, scale: float = 1.0) -> np.ndarray:
        """Of scale * a over the last dim of any layout; causal: la is (..., T, S) and row t sees
        s <= t + S - T (cpu_kernels.causal_softmax skips what no row sees). f16 / bf16 computed in
        f32, rounded once."""
        x = _view(a, la)
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

    @_quiet
    def softmax_backward(self, y: np.ndarray, ly: Layout, g: np.ndarray, lg: Layout, log: bool,
                         causal: bool = False, scale: float = 1.0) -> np.ndarray:
        """dx from y = (log-)softmax(scale * x) and dy = g (causal: y came from a causal softmax)."""
        c = ly.shape[-1] if ly.shape else 1
        compute = np.float32 if is_half_numpy(y.dtype) else y.dtype  # f16 / bf16: f32, rounded once
        ys = np.ascontiguousarray(_view(y, ly), dtype=compute).reshape(-1, c)
        gs = np.ascontiguousarray(_view(g, lg), dtype=compute).reshape(-1, c)
        res = cpu_kernels.softmax_backward(self.pool, ys, gs, log, causal, scale)
        return res.astype(y.dtype, copy=False).reshape(-1)

    @_quiet
    def cross_entropy(self, logits: np.ndarray, llogits: Layout, targets: np.ndarray, ltargets: Layout,
                      ignore_index: int, label_smoothing: float,
                      overwrite_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loss_sum, count, dlogits / count) of logits (N, C) in any layout (compacted first)."""
        x = np.ascontiguousarray(_view(logits, llogits))  # the buffer itself when already dense
        return cpu_kernels.cross_entropy(self.pool, x, _view(targets, ltargets), ignore_index, label_smoothing,
                                         overwrite_logits)

    @_quiet
    def rmsnorm(self, x: np.ndarray, lx: Layout, w: np.ndarray, lw: Layout, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """y = x rstd w over the last dim, rstd = 1/sqrt(mean(x^2) + eps) per row (kept for the backward).
        f16 / bf16 (einsum has no bf16) computed in f32: y rounded once, rstd kept in f32."""
        half = is_half_numpy(x.dtype)
        compute = np.float32 if half else x.dtype
        rows, d = prod(lx.shape[:-1]), lx.shape[-1]
        xv = np.ascontiguousarray(_view(x, lx), dtype=compute).reshape(rows, d)
        wv = _view(w, lw)
        if self.compiled is not None and self.compiled.supports(xv, wv):
            y, rstd = self.compiled.rmsnorm(xv, wv, eps)
            return y.reshape(-1), rstd
        rstd = (1.0 / np.sqrt(np.einsum("ij,ij->i", xv, xv) / d + eps)).astype(compute, copy=False)  # (rows,)
        y = xv * rstd[:, None]
        y *= wv.astype(compute, copy=False)
        return (y.astype(x.dtype) if half else y).reshape(-1), rstd

    @_quiet
    def rmsnorm_backward(self, g: np.ndarray, lg: Layout, x: np.ndarray, lx: Layout, w: np.ndarray, lw: Layout,
                         rstd: np.ndarray, lrstd: Layout) -> tuple[np.ndarray, np.ndarray]:
        """(dx, dw) of y = xhat w with xhat = x rstd; f16 / bf16 computed in f32, rounded once."""
        compute = np.float32 if is_half_numpy(x.dtype) else x.dtype
        rows, d = prod(lx.shape[:-1]), lx.shape[-1]
        gv = np.ascontiguousarray(_view(g, lg), dtype=compute).reshape(rows, d)
        xv, wv, rv = np.ascontiguousarray(_view(x, lx), dtype=compute).reshape(rows, d), _view(w, lw), _view(rstd, lrstd)
        if self.compiled is not None and self.compiled.supports(gv, xv, wv, rv):
            gx, gw = self.compiled.rmsnorm_backward(gv, xv, wv, rv)
            return gx.reshape(-1), gw
        r = rv.astype(compute, copy=False)[:, None]  # (rows, 1)
        xhat = xv * r
        gw = np.einsum("ij,ij->j", gv, xhat)  # dw = sum over rows of g xhat
        gx = gv * wv.astype(compute, copy=False)  # gxhat, turned into dx in place below
        # dx = rstd (gxhat - xhat mean(gxhat xhat)): d rstd/dx = -rstd^3 x / D folds into the projection
        proj = (np.einsum("ij,ij->i", gx, xhat) / d).astype(compute, copy=False)
        xhat *= proj[:, None]  # xhat is spent: the in-place passes save three (rows, D) temporaries
        gx -= xhat
        gx *= r
        return gx.astype(x.dtype, copy=False).reshape(-1), gw.astype(w.dtype, copy=False)

    @_quiet
    def rope(self, x: np.ndarray, lx: Layout, cos: np.ndarray, lcos: Layout, sin: np.ndarray, lsin: Layout,
             inverse: bool = False) -> np.ndarray:
        """Rotate x (..., T, hd) by the (T, hd) tables: y = x cos + rotate_half(x) sin (inverse: - sin).
        f16 / bf16 computed in f32, rounded once."""
        _check_rope(lx, lcos, lsin)
        compute = np.float32 if is_half_numpy(x.dtype) else x.dtype
        xv, c, s = (_view(b, lay).astype(compute, copy=False) for b, lay in ((x, lx), (cos, lcos), (sin, lsin)))
        if self.compiled is not None and self.compiled.supports(x, c, s) and lx.ndim <= 4 and lx.strides[-1] == 1:
            # rows of unit stride, read in place from x's buffer
            return self.compiled.rope(x, lx.offset, lx.strides, lx.shape, c, s, inverse)
        return cpu_kernels.rope(xv, c, s, inverse).astype(x.dtype, copy=False).reshape(-1)

    @_quiet
    def adamw_step(self, params: Sequence[tuple[np.ndarray, Layout]], grads: Sequence[tuple[np.ndarray, Layout]],
                   exp_avgs: Sequence[tuple[np.ndarray, Layout]], exp_avg_sqs: Sequence[tuple[np.ndarray, Layout]],
                   lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int) -> None:
        """In place on each dense param, m and v; a grad may be any layout of its param's shape.
        All arrays go to one kernel run, so their blocks share the threads."""
        arrays = []
        for (param, lparam), (grad, lgrad), (m, lm), (v, lv) in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            for buf, layout, what in ((param, lparam, "param"), (m, lm, "exp_avg"), (v, lv, "exp_avg_sq")):
                _check_dense(buf, layout, what)
            arrays.append((param, np.ascontiguousarray(_view(grad, lgrad)).reshape(-1), m, v))  # no copy when dense
        fast = self.compiled is not None and all(self.compiled.supports(*group) for group in arrays)
        cpu_kernels.adamw_step(self.pool, arrays, lr, beta1, beta2, eps, weight_decay, step,
                               self.compiled.adamw_block if fast else None)

    # 19-20. gradient clipping over many arrays ------------------------------------------------------
    @_quiet
    def sum_of_squares(self, arrays: Sequence[tuple[np.ndarray, Layout]]) -> np.ndarray:
        """sum(x^2) over all arrays: each array's dot with itself (f16/bf16 widened to f32), added in
        order, in f32 (f64 when any array is f64)."""
        acc = np.float64 if any(buf.dtype == np.float64 for buf, _ in arrays) else np.float32
        total = acc(0)
        for buf, layout in arrays:
            x = np.ascontiguousarray(_view(buf, layout), dtype=np.float32 if is_half_numpy(buf.dtype) else None)
            flat = x.reshape(-1).astype(acc, copy=False)
            total += np.dot(flat, flat)
        return np.array([total], acc)

    @_quiet
    def scale_(self, arrays: Sequence[tuple[np.ndarray, Layout]], factor: np.ndarray) -> None:
        """Each dense array *= factor[0], in place (f16/bf16 in f32, rounded once)."""
        for buf, layout in arrays:
            _check_dense(buf, layout, "array", "scale_")
            if is_half_numpy(buf.dtype):
                buf[...] = (buf.astype(np.float32) * np.float32(factor[0])).astype(buf.dtype)
            else:
                buf *= buf.dtype.type(factor[0])

    # 21. synchronize ---------------------------------------------------------------------------
    def synchronize(self) -> None:
        """NumPy is synchronous: nothing is ever queued."""

    # 22. causal attention ----------------------------------------------------------------------
    @_quiet
    def causal_attention(self, q: np.ndarray, lq: Layout, k: np.ndarray, lk: Layout, v: np.ndarray, lv: Layout,
                         scale: float) -> tuple[np.ndarray, np.ndarray]:
        """(y, p) by query blocks that stop at the last key they see (cpu_attention.py); f16 / bf16
        computed in f32, y and p rounded once."""
        attention.check_attention(lq, lk, lv)
        qs, ks, vs = (_slices(b, l) for b, l in ((q, lq), (k, lk), (v, lv)))
        y, p = cpu_attention.causal_attention(self.pool, self.set_blas_threads, qs, ks, vs, scale)
        return y.astype(q.dtype, copy=False).reshape(-1), p.astype(q.dtype, copy=False).reshape(-1)

    @_quiet
    def causal_attention_backward(self, q: np.ndarray, lq: Layout, k: np.ndarray, lk: Layout, v: np.ndarray,
                                  lv: Layout, p: np.ndarray, lp: Layout, dy: np.ndarray, ldy: Layout,
                                  scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dq, dk, dv), the GEMMs over the blocks the forward computed only."""
        attention.check_attention(lq, lk, lv)
        slices = [_slices(b, l) for b, l in ((q, lq), (k, lk), (v, lv), (p, lp), (dy, ldy))]
        grads = cpu_attention.causal_attention_backward(self.pool, self.set_blas_threads, *slices, scale)
        return tuple(g.astype(q.dtype, copy=False).reshape(-1) for g in grads)


def _slices(buf: np.ndarray, layout: Layout) -> np.ndarray:
    """The (..., R, C) view as contiguous (n, R, C) slices in its compute dtype (f32 for f16 / bf16);
    no copy when it already is."""
    compute = np.float32 if is_half_numpy(buf.dtype) else buf.dtype
    n = prod(layout.shape[:-2])
    return np.ascontiguousarray(_view(buf, layout), dtype=compute).reshape((n,) + layout.shape[-2:])


def _check_acc(acc: np.ndarray, numel: int, dtype: np.dtype) -> None:
    """matmul's acc: a flat buffer of exactly the result's elements, in the operands' dtype."""
    if acc.size != numel or acc.dtype != dtype:
        raise ValueError(f"matmul: acc must be a buffer of {numel} {dtype} elements, got {acc.size} {acc.dtype}")


def _check_rope(lx: Layout, lcos: Layout, lsin: Layout) -> None:
    """rope's shapes: x (..., T, hd) with hd even, tables (T, hd)."""
    if lx.ndim < 2 or lx.shape[-1] % 2 or lcos.shape != lx.shape[-2:] or lsin.shape != lx.shape[-2:]:
        raise ValueError(f"rope: x of shape {lx.shape} needs an even last dim and cos/sin tables of shape "
                         f"{lx.shape[-2:]}, got {lcos.shape} and {lsin.shape}")


def _check_dense(buf: np.ndarray, layout: Layout, what: str, op: str = "adamw_step") -> None:
    """adamw_step and scale_ update whole buffers in place: each must be read by a dense layout covering it."""
    if layout.offset != 0 or not layout.is_contiguous() or layout.numel != buf.size:
        raise ValueError(f"{op}: {what} must be dense (offset 0, contiguous, covering its buffer of "
                         f"{buf.size} elements), got {layout}")

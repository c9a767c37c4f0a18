"""The fast CPU backend's fused kernels, written for speed on NumPy: softmax (causal too),
cross-entropy and AdamW. reference.py has the same math as plain expressions.

Two habits make them fast. (1) Work in blocks small enough to stay in cache, so the several
NumPy passes a formula needs read cache, not memory. (2) Split the blocks across threads: NumPy
ufuncs release the GIL, so two threads really run on two cores (`cpu_threads.RowPool`).
Also here: how the backend keeps memory for reuse (`keep_freed_memory`, `BufferCache`).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import numpy as np

from .cpu_threads import MIN_SHARE_ELEMENTS, RowPool, rows_per_share

BLOCK_BYTES = 1 << 19  # 512 KiB of one operand per AdamW block: in cache, yet few NumPy calls
ROW_BLOCK_BYTES = 1 << 20  # cross-entropy rows per block: ~1 MiB (fewer, longer NumPy calls per thread)
EINSUM_ROW_MAX = 4096  # row_sums: einsum up to this many columns, the pairwise sum beyond
CAUSAL_CHUNK_BYTES = 1 << 19  # (T, S) score slices per chunk of the causal softmax: ~512 KiB


# glibc malloc parameters (malloc.h), and the values keep_freed_memory sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BELOW = 32 << 20  # blocks up to this size come from the heap (glibc's largest mmap threshold)
TRIM_ABOVE = 1 << 30  # the heap is given back to the system only past 1 GiB of free space at its top
KEEP_FREED_ENV = "DEERS_KEEP_FREED_MEMORY"  # "0": leave the allocator as it is


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB in the process for reuse; True if set.

    By default glibc gives big freed blocks back to the system (mmap'd blocks at once, the heap's
    top when more than a few MiB are free), so the next step's arrays of the same sizes come back
    as fresh pages that fault in and are zeroed one 4 KiB page at a time, thousands of faults per
    training step. With these two settings the step reuses the memory the previous one freed (as
    PyTorch's caching allocators do); the cost is that the process's resident memory does not
    shrink after a peak. Process-wide: cpu.process_settings applies it when the fast backend is
    created, and DEERS_KEEP_FREED_MEMORY=0 declines it. Elsewhere than glibc (macOS, musl) nothing
    changes. Blocks over 32 MiB are BufferCache's.
    """
    if os.environ.get(KEEP_FREED_ENV, "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))


class BufferCache:
    """Large result buffers kept for reuse, so a step does not fault in fresh pages each time.

    glibc returns blocks over 32 MiB to the kernel when they are freed, so a buffer that big made
    anew every step (a GPT's logits, its lm_head gradient) is zeroed page by page on first touch
    every step, which costs about as much again as writing it. The cache holds up to `max_bytes` of such buffers and hands one out again only when
    nothing but the cache refers to it (its reference count says so), so a live array's buffer is
    never reused. Smaller requests go straight to np.empty (glibc's heap already reuses them).
    """

    MIN_BYTES = 32 << 20

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, numel: int, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if numel * dtype.itemsize < self.MIN_BYTES:
            return np.empty(numel, dtype)
        with self._lock:
            for buf in self._buffers:
                # references: the list, `buf`, getrefcount's argument; any more is a live array or view
                if buf.size == numel and buf.dtype == dtype and sys.getrefcount(buf) == 3:
                    return buf
            buf = np.empty(numel, dtype)
            if sum(b.nbytes for b in self._buffers) + buf.nbytes > self.max_bytes:
                self._buffers = [b for b in self._buffers if sys.getrefcount(b) > 3]  # drop the unused ones
            if sum(b.nbytes for b in self._buffers) + buf.nbytes <= self.max_bytes:
                self._buffers.append(buf)
            return buf


def row_sums(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=-1, keepdims=True) for floats. Rows up to EINSUM_ROW_MAX go through einsum's sum
    of products, several times faster than NumPy's reduction on short rows (attention's) and pure
    NumPy, so it never depends on how many threads OpenBLAS was last set to. einsum adds in
    sequence within its SIMD lanes, whose rounding error grows with the row, so longer rows (a
    vocabulary-wide softmax) keep NumPy's more accurate pairwise sum."""
    if a.shape[-1] > EINSUM_ROW_MAX:
        return a.sum(axis=-1, keepdims=True)
    return np.einsum("...j->...", a)[..., None]


def select(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.where(c, a, b) for a and b of one dtype, by bits: out = b ^ ((a ^ b) & mask), mask all
    ones where c. NumPy's where branches per element, which a random mask (as a ReLU's) makes
    mispredict; these four branch-free passes are several times faster. Exact for any values,
    NaN payloads included."""
    bits = np.dtype(f"u{a.itemsize}")
    out = np.empty(np.broadcast_shapes(c.shape, a.shape, b.shape), a.dtype)
    mask = c.astype(bits)  # 0 or 1
    np.negative(mask, out=mask)  # 0 or all ones
    result = out.view(bits)
    np.bitwise_xor(a.view(bits), b.view(bits), out=result)
    result &= mask
    result ^= b.view(bits)
    return out


def cross_entropy(pool: RowPool, x: np.ndarray, targets: np.ndarray, ignore_index: int,
                  label_smoothing: float, overwrite_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss sum, counted rows and dlogits / count for contiguous logits x (N, C) and targets (N,).

    The loss sum is a 1-element buffer (f64 for f64 logits, else f32; summed in f64), the count a
    1-element i64 buffer, the gradient flat in x's dtype. With overwrite_logits the gradient is
    written over x (no fresh (N, C) buffer to fault in).

    loss_i = logsumexp(x_i) - (1 - s) x_i[t_i] - s mean(x_i);
    dloss_i/dx_i = softmax(x_i) - (1 - s) one_hot(t_i) - s / C (zero for ignored rows).
    """
    n, c = x.shape
    valid = targets != ignore_index
    count = int(valid.sum())
    safe = np.where(valid, targets, 0)
    if count and (safe.min() < 0 or safe.max() >= c):
        raise IndexError(f"cross_entropy: target out of range for {c} classes "
                         f"(got values in [{targets[valid].min()}, {targets[valid].max()}])")
    scale = 1.0 / max(count, 1)
    grad = x if overwrite_logits else np.empty((n, c), x.dtype)
    row_loss = np.zeros(n, np.float64)
    block = max(1, ROW_BLOCK_BYTES // (c * x.itemsize))

    def rows(start: int, stop: int) -> None:
        for r0 in range(start, stop, block):
            r1 = min(r0 + block, stop)
            xs, g = x[r0:r1], grad[r0:r1]  # g may be xs itself: read x before it is overwritten
            picked = xs[np.arange(r1 - r0), safe[r0:r1]].astype(np.float64)
            loss = -(1.0 - label_smoothing) * picked
            if label_smoothing:
                loss -= label_smoothing * xs.mean(axis=1, dtype=np.float64)
            peak = xs.max(axis=1, keepdims=True)  # (b, 1)
            np.subtract(xs, peak, out=g)
            np.exp(g, out=g)
            sums = g.sum(axis=1, keepdims=True).astype(np.float64)  # (b, 1)
            row_loss[r0:r1] = loss + np.log(sums[:, 0]) + peak[:, 0]
            g *= (scale / sums).astype(g.dtype)  # softmax / count
            g[np.arange(r1 - r0), safe[r0:r1]] -= (1.0 - label_smoothing) * scale
            if label_smoothing:
                g -= label_smoothing * scale / c
            ignored = ~valid[r0:r1]
            if ignored.any():
                g[ignored] = 0

    pool.run(n, rows, min_per_thread=rows_per_share(c))
    loss_dtype = np.float64 if x.dtype == np.float64 else np.float32
    return (np.array([row_loss[valid].sum()], loss_dtype), np.array([count], np.int64), grad.reshape(-1))


def adamw_step(pool: RowPool, arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float, step: int, compiled_block=None) -> None:
    """In-place AdamW on flat (param, grad, m, v) buffers of one dtype, all of them in one run: the
    arrays are cut into cache-sized blocks and the blocks dealt out over the threads, so a model's
    many small weights share the threads as well as its big ones (one hand-off per step).
    `compiled_block` (cpu_compiled.adamw_block) does a block's update in one pass instead of the
    thirteen below.

    p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """
    if not arrays:
        return
    itemsize = arrays[0][0].itemsize
    dtype = arrays[0][0].dtype.type  # the scalars below in the arrays' dtype, so nothing promotes
    decay = dtype(1.0 - lr * weight_decay)  # exactly 1 when weight_decay is 0
    b1, b2 = dtype(beta1), dtype(beta2)
    inv_sqrt_bias2 = dtype(1.0 / np.sqrt(1.0 - beta2 ** step))
    step_size = dtype(lr / (1.0 - beta1 ** step))
    epsilon = dtype(eps)
    block = max(1024, BLOCK_BYTES // itemsize)
    blocks = [(k, i, min(i + block, arr[0].size)) for k, arr in enumerate(arrays) for i in range(0, arr[0].size, block)]

    def work(first: int, last: int) -> None:
        if compiled_block is not None:  # it always multiplies by the decay: 1 when there is none
            for k, i, j in blocks[first:last]:
                param, grad, m, v = arrays[k]
                compiled_block(param[i:j], grad[i:j], m[i:j], v[i:j], decay, b1, b2, inv_sqrt_bias2, step_size,
                               epsilon)
            return
        scratch = np.empty(block, dtype)
        for k, i, j in blocks[first:last]:
            param, grad, m, v = arrays[k]
            p, g, mm, vv, t = param[i:j], grad[i:j], m[i:j], v[i:j], scratch[:j - i]
            mm -= g  # m = b1 (m - g) + g = b1 m + (1 - b1) g
            mm *= b1
            mm += g
            np.multiply(g, g, out=t)  # v = b2 (v - g^2) + g^2
            vv -= t
            vv *= b2
            vv += t
            np.sqrt(vv, out=t)  # denominator sqrt(v_hat) + eps
            t *= inv_sqrt_bias2
            t += epsilon
            np.divide(mm, t, out=t)
            t *= step_size
            if weight_decay:
                p *= decay
            p -= t

    # Threads by elements, not blocks: a small model's many small weights are many blocks but few
    # elements, cheaper on one thread than handed off.
    total = sum(arr[0].size for arr in arrays)
    pool.run(len(blocks), work, min_per_thread=-(-len(blocks) * MIN_SHARE_ELEMENTS // max(total, 1)))


def _normalize(o: np.ndarray, log: bool) -> None:
    """o = z - max(z) per row, in place to log_softmax(z) = o - log(sum(exp(o))) or softmax(z) =
    exp(o) / sum(exp(o)) (the max subtracted keeps exp finite)."""
    if log:
        o -= np.log(row_sums(np.exp(o)))
    else:
        np.exp(o, out=o)
        o /= row_sums(o)


def softmax(pool: RowPool, x: np.ndarray, log: bool, scale: float = 1.0) -> np.ndarray:
    """(log-)softmax over the last dim of scale * x, x a 2-D array (rows, C), in row blocks over the threads."""
    rows_total, c = x.shape
    out = np.empty_like(x)
    block = max(1, ROW_BLOCK_BYTES // max(c * x.itemsize, 1))

    def rows(start: int, stop: int) -> None:
        for r0 in range(start, stop, block):
            xs, o = x[r0:min(r0 + block, stop)], out[r0:min(r0 + block, stop)]
            if scale != 1.0:
                np.multiply(xs, x.dtype.type(scale), out=o)
                xs = o
            np.subtract(xs, xs.max(axis=1, keepdims=True), out=o)
            _normalize(o, log)

    pool.run(rows_total, rows, min_per_thread=rows_per_share(c))
    return out


def causal_softmax(pool: RowPool, x: np.ndarray, log: bool, scale: float = 1.0) -> np.ndarray:
    """(log-)softmax over the last dim of scale * x, x attention scores (..., T, S) (any strides),
    where query row t sees key columns s <= t + S - T only; the others get exactly 0 (log: -inf).

    One masked pass over whole (T, S) slices: a (T, S) table of 0 / -inf is added before the
    max and the exp, and the slices go in chunks of about CAUSAL_CHUNK_BYTES over the threads.
    Every element is computed, the hidden half too, but each pass over a contiguous chunk is
    one long loop: faster in NumPy than skipping the hidden columns in row blocks, whose passes
    run row by row. A row that sees no column (t < T - S) is all 0 (log: -inf).
    """
    t_rows, s_cols = x.shape[-2], x.shape[-1]
    offset = s_cols - t_rows  # row t sees columns s <= t + offset
    first = max(0, -offset)  # rows before `first` see nothing
    slices = np.ascontiguousarray(x).reshape(-1, t_rows, s_cols)  # (..., T, S) -> (n, T, S)
    out = np.empty(slices.shape, x.dtype)
    visible = np.arange(s_cols)[None, :] <= np.arange(t_rows)[:, None] + offset  # (T, S)
    mask = np.where(visible, 0.0, -np.inf).astype(x.dtype)  # broadcast over the slices
    factor = x.dtype.type(scale)
    per_chunk = max(1, CAUSAL_CHUNK_BYTES // max(t_rows * s_cols * x.itemsize, 1))

    def chunks(start: int, stop: int) -> None:
        for i in range(start, stop, per_chunk):
            j = min(i + per_chunk, stop)
            o = out[i:j]
            np.multiply(slices[i:j], factor, out=o)
            o += mask
            o -= o.max(axis=-1, keepdims=True)
            _normalize(o, log)

    pool.run(slices.shape[0], chunks, min_per_thread=max(per_chunk, rows_per_share(t_rows * s_cols)))
    if first:  # rows that see nothing: their -inf - (-inf) made NaN above
        out[:, :first, :] = -np.inf if log else 0.0
    return out.reshape(x.shape)


def softmax_backward(pool: RowPool, y: np.ndarray, g: np.ndarray, log: bool, causal: bool = False,
                     scale: float = 1.0) -> np.ndarray:
    """Gradient through y = (log-)softmax(scale * x) over the last dim of 2-D arrays, from its output y.

    softmax: dx = scale y (g - sum(g y)) (masked entries have y = 0, so causal needs nothing more);
    log_softmax: dx = scale (g - exp(y) sum(g)); causal: masked entries (y = -inf) get no
    gradient and their g is left out of the sum.
    """
    rows_total, c = y.shape
    out = np.empty_like(y)
    block = max(1, ROW_BLOCK_BYTES // max(c * y.itemsize, 1))

    def rows(start: int, stop: int) -> None:
        for r0 in range(start, stop, block):
            r1 = min(r0 + block, stop)
            ys, gs, o = y[r0:r1], g[r0:r1], out[r0:r1]
            if log:
                if causal:
                    gs = np.where(np.isneginf(ys), 0, gs)
                np.exp(ys, out=o)
                o *= row_sums(gs)
                np.subtract(gs, o, out=o)
            else:
                np.multiply(gs, ys, out=o)
                total = row_sums(o)
                np.subtract(gs, total, out=o)
                o *= ys
            if scale != 1.0:
                o *= y.dtype.type(scale)

    pool.run(rows_total, rows, min_per_thread=rows_per_share(c))
    return out

"""The CPU backend's threads: one pool runs everything parallel, GEMMs included.

NumPy ufuncs and matmul release the GIL, so Python threads really run on several cores.
`RowPool.run(n, fn)` calls `fn(start, stop)` on contiguous ranges of [0, n), one per thread, and
waits for all of them; the fused kernels (cpu_kernels.py) and the GEMMs (`matmul` below) use it.

Why GEMMs too: NumPy's OpenBLAS keeps threads of its own, and after each GEMM they spin for a
while (`sched_yield` in a loop) waiting for the next one. The next op of a training step, say a
softmax on the pool's threads, would then share its cores with a spinning thread and run much
slower. So for each large GEMM the backend sets OpenBLAS to one thread (`openblas_setter`; a
cheap call) and splits the GEMM into one share per pool thread itself: as fast as OpenBLAS's own
threads on a training step's shapes, and nothing spins after it. A small GEMM (under
MIN_SPLIT_FLOPS) is not worth the pool's hand-off (waking a thread costs tens of microseconds);
it goes to OpenBLAS's own threads instead, whose spinning workers start it sooner.

So does a forward GEMM of few rows: x row-major (activations, not a gradient's transpose) with
fewer than MIN_SPLIT_ROWS rows, all batch dims counted. That is a model's forward pass over one
prompt or one new token (generation), where every GEMM has the same few rows. Sending the
large ones of those to the pool and the small ones to OpenBLAS would alternate the two teams,
and each pool GEMM would share a core with OpenBLAS's still-spinning worker (half speed); one
team for all of them avoids that, and OpenBLAS's spinning workers also read a one-row GEMM's
weights (memory-bound) faster than a woken pool thread. A training step's GEMMs have a batch of
tokens as rows, or (the weight gradients G^T X) a transposed x: they stay with the pool.
"""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from math import prod

import numpy as np

from .reference import quiet  # NumPy's warnings off: kept per thread, so each share is wrapped

OWN_BLAS_ENV = "DEERS_OWN_BLAS_THREADS"  # "0": leave NumPy's BLAS threads as they are
# Handing a range to another thread and waiting for it costs tens of microseconds (waking an idle
# core), so work is split only where each thread gets several times that:
MIN_SHARE_ELEMENTS = 1 << 18  # element-wise work per thread at least (a few NumPy passes over 256k elements)
MIN_SPLIT_FLOPS = 1 << 26  # GEMMs under ~67 MFLOP go to OpenBLAS's own threads
MIN_SPLIT_ROWS = 256  # and so do forward GEMMs of fewer rows (generation's forward passes)
MIN_SHARE = 16  # rows (or columns) per thread at least, when a GEMM is split along M (or N)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def rows_per_share(row_elements: int) -> int:
    """The fewest rows of `row_elements` elements worth giving a thread (MIN_SHARE_ELEMENTS)."""
    return max(1, MIN_SHARE_ELEMENTS // max(row_elements, 1))


class RowPool:
    """Runs a function over contiguous ranges of [0, n) on `threads` threads (inline for one)."""

    def __init__(self, threads: int | None = None):
        self.threads = max(1, threads or usable_cores())
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()  # the process whose threads the executor has

    def run(self, n: int, fn, min_per_thread: int = 1) -> None:
        parts = min(self.threads, max(1, n // max(min_per_thread, 1)))
        run = quiet(fn)  # the kernels' infinities and NaNs are documented results, not warnings
        if parts == 1:
            run(0, n)
            return
        if self._executor is None or self._pid != os.getpid():  # a forked child has none of its threads
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="deers-cpu")
            self._pid = os.getpid()
        bounds = [n * i // parts for i in range(parts + 1)]
        futures = [self._executor.submit(run, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        run(bounds[0], bounds[1])  # this thread takes the first range
        for future in futures:
            future.result()


def openblas_thread_api():
    """(get, set) of the thread count of the OpenBLAS NumPy loaded, through ctypes; None when NumPy's
    BLAS is something else (MKL, Accelerate) or cannot be found."""
    paths = []
    try:
        with open("/proc/self/maps") as maps:  # Linux: the shared libraries this process has loaded
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        pass
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded: this only looks the handle up
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    return get, put
    return None


def openblas_setter():
    """The function that sets NumPy's OpenBLAS thread count, for the backend to set per GEMM; None
    when DEERS_OWN_BLAS_THREADS=0 declines or NumPy's BLAS is not OpenBLAS (MKL, Accelerate), and
    then the backend's GEMMs are left to the BLAS's own threads.

    Process-wide (like torch.set_num_threads): a NumPy GEMM made outside Deers runs on the thread
    count the backend's last GEMM set, one thread after a large one.
    """
    if os.environ.get(OWN_BLAS_ENV, "1") == "0":
        return None
    api = openblas_thread_api()
    return None if api is None else api[1]


def _share(a: np.ndarray, ndim: int, axis: int, start: int, stop: int) -> np.ndarray:
    """a[start:stop] along `axis` of a seen with `ndim` dims (leading 1s added); a view. A dim of
    size 1 there broadcasts, so it is left whole."""
    a = a.reshape((1,) * (ndim - a.ndim) + a.shape)
    if a.shape[axis] == 1:
        return a
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def matmul(pool: RowPool, x: np.ndarray, y: np.ndarray, out: np.ndarray, set_blas_threads=None) -> np.ndarray:
    """out[...] = x @ y (NumPy broadcasting; out of the result's shape). With `set_blas_threads`
    (openblas_setter), a GEMM of MIN_SPLIT_FLOPS or more runs as one single-threaded GEMM per pool
    thread: split along the leading batch dim when it has a share for every thread (attention's
    (B, heads, T, T) products), else along M when x is the larger operand (m >= n: each thread
    then reads only its rows of x, as in the lm_head's dW = dY^T x) and along N otherwise (y's
    columns: the lm_head's x W^T). Every share is a view, each GEMM writes its part of out in
    place (a column share of out is still a BLAS-ready matrix: unit column stride, full row
    stride). A smaller GEMM runs on OpenBLAS's own threads, as many as the pool has; so does one
    of fewer than MIN_SPLIT_ROWS row-major rows of x."""
    m, k, n = x.shape[-2], x.shape[-1], y.shape[-1]
    if set_blas_threads is None:
        return np.matmul(x, y, out=out)
    batch = prod(out.shape[:-2])
    few_rows = batch * m < MIN_SPLIT_ROWS and x.flags.c_contiguous  # a forward pass over a few tokens
    if pool.threads == 1 or 2 * batch * m * k * n < MIN_SPLIT_FLOPS or few_rows:
        set_blas_threads(pool.threads)
        return np.matmul(x, y, out=out)
    set_blas_threads(1)
    ndim = out.ndim
    if ndim > 2 and out.shape[0] >= pool.threads:
        def share(start: int, stop: int) -> None:
            np.matmul(_share(x, ndim, 0, start, stop), _share(y, ndim, 0, start, stop), out=out[start:stop])
        pool.run(out.shape[0], share)
    elif m >= n:  # x's rows are the larger share (m k >= k n)
        def share(start: int, stop: int) -> None:  # rows of x and out
            np.matmul(x[..., start:stop, :], y, out=out[..., start:stop, :])
        pool.run(m, share, min_per_thread=MIN_SHARE)
    else:
        def share(start: int, stop: int) -> None:  # columns of y and out
            np.matmul(x, y[..., start:stop], out=out[..., start:stop])
        pool.run(n, share, min_per_thread=MIN_SHARE)
    return out

"""The CPU backend's causal attention (contract item 22): y = p v with p = causal_softmax(scale q k^T),
and its backward, for q (n, T, hd), k (n, S, hd), v (n, S, hv) where query row t sees the keys
s <= t + S - T.

Written from items 10 and 14 (backend/attention.py) the same attention is three GEMMs and a
softmax over whole (n, T, S) arrays: every score is computed, the half no query sees included,
and each pass streams the (n, T, S) scores through memory. Here instead:

- **Query blocks.** The queries go in blocks of ~BLOCK_ROWS rows; a block [r0, r1) sees the keys
  [0, r1 + S - T) only, so its GEMMs stop there. With T = S = 256 in 4 blocks the score and
  value GEMMs do 10/16 of the full products' work.
- **One thread, its own slices, start to end.** The n (batch x head) slices are split over the
  pool's threads once; each thread runs single-threaded GEMMs, the softmax and the output GEMM on
  its slices while their scores are still in its cache, and no other thread waits on it.
- **The backward by key blocks.** dq of a query block reads its row of ds; dk and dv of a key
  block read a column of ds and p, which only the query blocks at and below it fill. Key block j
  is aligned with query block j, so those rows are exactly the ones computed.
- **No row max when the scores are small.** Where a bound on every score (the largest |q_t|
  times the largest |k_s|) says exp cannot overflow, the softmax skips subtracting the row max,
  its slowest pass. Larger scores take the usual max-subtracted path.

p is returned whole (n, T, S) for the backward, with exact zeros where a query sees no key.
The reference backend's attention (reference.py: softmax(scale q k^T + mask) v over whole
arrays) is the definition this kernel is tested against.
"""
from __future__ import annotations

import numpy as np

from .cpu_kernels import row_sums
from .cpu_threads import RowPool, rows_per_share

BLOCK_ROWS = 64  # query rows per block: fewer blocks compute more hidden scores, more blocks make smaller GEMMs
EXP_SAFE = 60.0  # scores within +-60 need no max subtracted before exp (scores_are_small)


def query_blocks(t_rows: int, s_cols: int) -> list[tuple[int, int, int]]:
    """(r0, r1, e): query rows [r0, r1) see the key columns [0, e) only, e = r1 + S - T."""
    parts = max(1, round(t_rows / BLOCK_ROWS))
    bounds = [t_rows * i // parts for i in range(parts + 1)]
    offset = s_cols - t_rows
    return [(bounds[i], bounds[i + 1], bounds[i + 1] + offset) for i in range(parts) if bounds[i + 1] > bounds[i]]


def key_blocks(t_rows: int, s_cols: int) -> list[tuple[int, int, int]]:
    """(c0, c1, r0): key columns [c0, c1) are seen by query rows r0 and later only; block j of
    these is query block j shifted by S - T (the first also takes the S - T cached columns)."""
    blocks = query_blocks(t_rows, s_cols)
    return [(0 if j == 0 else r0 + s_cols - t_rows, e, r0) for j, (r0, _, e) in enumerate(blocks)]


def _diagonal_mask(t: int, dtype: np.dtype) -> np.ndarray:
    """(t, t) of 0 on and below the diagonal, -inf above: the last t visible columns of a block."""
    return np.where(np.tri(t, dtype=bool), 0.0, -np.inf).astype(dtype)


def scores_are_small(qs: np.ndarray, k: np.ndarray) -> bool:
    """Whether every score qs_t . k_s is within +-EXP_SAFE, by Cauchy-Schwarz: |qs_t . k_s| <=
    max |qs_t| max |k_s|. Then exp(s) neither overflows nor underflows to 0 (exp(60) ~ 1e26, and
    S of them sum far below the f32 maximum, 3e38), so the softmax needs no row max subtracted:
    two passes over the scores fewer (the row max is the slowest pass on short rows). Scaled
    attention scores are this small in practice; NaN or inf says False."""
    if not qs.size or not k.size:
        return True
    q_norm = np.sqrt(np.einsum("...i,...i->...", qs, qs).max())  # (m, T) squared norms, then the largest
    k_norm = np.sqrt(np.einsum("...i,...i->...", k, k).max())
    return bool(q_norm * k_norm <= EXP_SAFE)


def _run(pool: RowPool, set_blas_threads, n: int, slice_elements: int, work) -> None:
    """work(start, stop) over the n slices of `slice_elements` scores each: one share per pool
    thread, with single-threaded GEMMs, where each thread gets MIN_SHARE_ELEMENTS or more (a
    tiny GPT's attention is not worth the hand-off: inline on one thread); inline on the BLAS's
    own threads when NumPy's BLAS is not OpenBLAS (its thread count cannot be set)."""
    if set_blas_threads is None:
        work(0, n)
        return
    set_blas_threads(1)
    pool.run(n, work, min_per_thread=rows_per_share(slice_elements))


def causal_attention(pool: RowPool, set_blas_threads, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                     scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(y (n, T, hv), p (n, T, S)) for contiguous float q (n, T, hd), k (n, S, hd), v (n, S, hv)."""
    n, t_rows, _ = q.shape
    s_cols, hv = k.shape[1], v.shape[2]
    blocks = query_blocks(t_rows, s_cols)
    masks = {r1 - r0: _diagonal_mask(r1 - r0, q.dtype) for r0, r1, _ in blocks}
    y = np.empty((n, t_rows, hv), q.dtype)
    p = np.empty((n, t_rows, s_cols), q.dtype)

    def work(a: int, b: int) -> None:
        qs = q[a:b] * q.dtype.type(scale)  # (m, T, hd): the scale on q, not on the T x S scores
        shift = not scores_are_small(qs, k[a:b])
        for r0, r1, e in blocks:
            o = p[a:b, r0:r1, :e]  # (m, rows, e): this block's scores, then probabilities, in place
            np.matmul(qs[:, r0:r1], k[a:b, :e].transpose(0, 2, 1), out=o)
            o[:, :, e - (r1 - r0):] += masks[r1 - r0]  # the last `rows` columns hold the causal edge
            if shift:  # softmax(s) = softmax(s - max s): exp then never overflows
                o -= o.max(axis=-1, keepdims=True)
            np.exp(o, out=o)
            o /= row_sums(o)
            p[a:b, r0:r1, e:] = 0  # keys this block never sees
            np.matmul(o, v[a:b, :e], out=y[a:b, r0:r1])

    _run(pool, set_blas_threads, n, t_rows * s_cols, work)
    return y, p


def causal_attention_backward(pool: RowPool, set_blas_threads, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                              p: np.ndarray, dy: np.ndarray, scale: float
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) from the forward's inputs, its p and dy (n, T, hv), all contiguous, one float dtype."""
    n, t_rows, _ = q.shape
    s_cols = k.shape[1]
    rows, columns = query_blocks(t_rows, s_cols), key_blocks(t_rows, s_cols)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    if not rows:  # no queries (T = 0): no key gets a gradient
        dk.fill(0)
        dv.fill(0)
    factor = q.dtype.type(scale)

    def work(a: int, b: int) -> None:
        ds = np.empty((b - a, t_rows, s_cols), q.dtype)  # d(scale q k^T); only the computed blocks are read
        for r0, r1, e in rows:
            d = ds[:, r0:r1, :e]  # (m, rows, e)
            pb = p[a:b, r0:r1, :e]
            np.matmul(dy[a:b, r0:r1], v[a:b, :e].transpose(0, 2, 1), out=d)  # dp = dy v^T
            d -= np.einsum("...j,...j->...", d, pb)[..., None]  # softmax backward: p (dp - sum(dp p))
            d *= pb
            np.matmul(d, k[a:b, :e], out=dq[a:b, r0:r1])
        dq[a:b] *= factor  # s = scale q k^T: dq = scale ds k
        qs = q[a:b] * factor
        for c0, c1, r0 in columns:  # dk = scale ds^T q, dv = p^T dy, over the rows that see the block
            np.matmul(ds[:, r0:, c0:c1].transpose(0, 2, 1), qs[:, r0:], out=dk[a:b, c0:c1])
            np.matmul(p[a:b, r0:, c0:c1].transpose(0, 2, 1), dy[a:b, r0:], out=dv[a:b, c0:c1])

    _run(pool, set_blas_threads, n, t_rows * s_cols, work)
    return dq, dk, dv

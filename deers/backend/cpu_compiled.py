"""The CPU backend's compiled kernels: one pass where NumPy needs several (optional: pip install 'deers[fast]').

NumPy runs an element-wise formula as one pass over memory per operation, and a few of its loops
are slow (np.maximum(x, 0) and np.sign are several times slower than an add). Numba compiles each
kernel below to one loop over the elements, vectorised by LLVM, so RMSNorm's forward is one read
and one write instead of five passes and a ReLU one pass at an add's speed. The reference backend
(reference.py) stays the readable definition: the fast backend calls these only when numba
imports (and DEERS_COMPILED is not "0"), only for contiguous float32 / float64 operands, and
tests/test_backend_contract.py runs every item with and without them.

Each kernel is compiled on its first call for its dtypes (a fraction of a second) and cached on disk
(`cache=True`: next to this file, or numba's user cache when the package is read-only), so later
processes load it in milliseconds. `nogil=True` lets the backend's pool threads run one at once.
Floating-point: reductions may be reassociated (`reassoc`, so sums use SIMD lanes, as NumPy's do)
and products fused into FMAs (`contract`); nothing assumes the absence of NaN or infinity.
"""
from __future__ import annotations

import numba
import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_FAST = {"reassoc", "contract"}  # not "nnan" / "ninf": NaN and inf must propagate as in NumPy
_jit = numba.njit(nogil=True, cache=True, fastmath=_FAST, error_model="numpy")  # x / 0 is inf or NaN, as in NumPy


def supports(*arrays: np.ndarray) -> bool:
    """Whether the compiled kernels take these operands: one float32 / float64 dtype, C-contiguous."""
    dtype = arrays[0].dtype
    return dtype in FLOATS and all(a.dtype == dtype and a.flags.c_contiguous for a in arrays)


# ---- unary (contract item 4): y = f(x) over flat arrays ------------------------------------------
@_jit
def _relu(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 or v != v else 0.0  # NaN passes through and -0 becomes 0, as in np.maximum(x, 0)


@_jit
def _sign(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = 1.0 if v > 0 else (-1.0 if v < 0 else (v if v != v else 0.0))  # as np.sign: NaN, and 0 for -0


UNARY = {"relu": _relu, "sign": _sign}


def unary(name: str, x: np.ndarray, out: np.ndarray) -> None:
    """out = name(x) for flat contiguous arrays of one float dtype (a name in UNARY)."""
    UNARY[name](x.reshape(-1), out.reshape(-1))


# ---- RMSNorm (contract item 16) ----------------------------------------------------------------------
@_jit
def _rmsnorm(x, w, eps, y, rstd):
    rows, d = x.shape
    for i in range(rows):
        total = 0.0  # float64: the sum of squares of one row
        for j in range(d):
            total += x[i, j] * x[i, j]
        r = x.dtype.type(1.0 / np.sqrt(total / d + eps))  # in x's dtype, so the row's products stay in it
        rstd[i] = r
        for j in range(d):
            y[i, j] = x[i, j] * r * w[j]


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, rstd) for contiguous x (rows, D), w (D,): y = x rstd w, rstd = 1/sqrt(mean(x^2) + eps)."""
    y, rstd = np.empty_like(x), np.empty(x.shape[0], x.dtype)
    _rmsnorm(x, w, eps, y, rstd)
    return y, rstd


@_jit
def _rmsnorm_backward(g, x, w, rstd, dx, dw):
    rows, d = x.shape
    for i in range(rows):
        r = rstd[i]
        total = 0.0  # float64: sum over the row of (g w) xhat
        for j in range(d):
            xhat = x[i, j] * r
            total += g[i, j] * w[j] * xhat
            dw[j] += g[i, j] * xhat  # dw = sum over rows of g xhat
        mean = x.dtype.type(total / d)
        for j in range(d):  # dx = rstd (g w - xhat mean(g w xhat))
            dx[i, j] = r * (g[i, j] * w[j] - x[i, j] * r * mean)


def rmsnorm_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dw) of y = x rstd w for contiguous g, x (rows, D), w (D,) and the forward's rstd (rows,)."""
    dx, dw = np.empty_like(x), np.zeros(x.shape[1], np.float64)  # dw summed over rows in float64
    if x.shape[1]:
        _rmsnorm_backward(g, x, w, rstd, dx, dw)
    return dx, dw.astype(w.dtype)


# ---- rotary embedding (contract item 17) -------------------------------------------------------------
@_jit
def _rope(buf, offset, strides, shape, cos, sin, sign, out):
    # x[a, b, t, c] = buf[offset + a s0 + b s1 + t s2 + c]: rows of unit stride anywhere in buf (q and
    # k are strided views of the qkv product), read in place; out is (A, B, T, hd) contiguous
    s0, s1, s2 = strides
    n0, n1, t, hd = shape
    half = hd // 2
    for a in range(n0):
        for b in range(n1):
            for r in range(t):
                start = offset + a * s0 + b * s1 + r * s2
                row, y, cs, sn = buf[start:start + hd], out[a, b, r], cos[r], sin[r]  # 1-D contiguous: vectorised
                for c in range(half):  # y = x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1]
                    x1, x2 = row[c], row[c + half]
                    y[c] = x1 * cs[c] - sign * x2 * sn[c]
                    y[c + half] = x2 * cs[c + half] + sign * x1 * sn[c + half]


def rope(buf: np.ndarray, offset: int, strides: tuple[int, ...], shape: tuple[int, ...], cos: np.ndarray,
         sin: np.ndarray, inverse: bool) -> np.ndarray:
    """x cos + rotate_half(x) sin (inverse: - sin), flat and contiguous, for x (..., T, hd) of at
    most 4 dims read from the flat `buf` at `offset` with element `strides` (the last one 1) and
    contiguous tables (T, hd)."""
    pad = 4 - len(shape)  # leading dims of 1 make every x 4-D: one compiled loop nest
    shape4, strides4 = (1,) * pad + tuple(shape), (0,) * pad + tuple(strides)
    out = np.empty(shape4, buf.dtype)
    _rope(buf, offset, strides4[:3], shape4, cos, sin, buf.dtype.type(-1.0 if inverse else 1.0), out)
    return out.reshape(-1)


# ---- AdamW (contract item 18) ------------------------------------------------------------------------
@_jit
def adamw_block(p, g, m, v, decay, b1, b2, inv_sqrt_bias2, step_size, eps):
    """One block of cpu_kernels.adamw_step's update, in place, in one pass (the same formulas, in
    the arrays' dtype: the scalars come in it)."""
    for i in range(p.size):
        gi = g[i]
        mi = b1 * (m[i] - gi) + gi  # m = b1 m + (1 - b1) g
        vi = b2 * (v[i] - gi * gi) + gi * gi  # v = b2 v + (1 - b2) g^2
        m[i], v[i] = mi, vi
        p[i] = p[i] * decay - step_size * (mi / (np.sqrt(vi) * inv_sqrt_bias2 + eps))

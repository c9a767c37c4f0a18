"""The reference backend: every primitive of the contract (deers.backend) as plain NumPy.

Each primitive is the obvious NumPy expression of its math, the fused ones (14-22) as the plain
composition: softmax with a causal mask, cross-entropy from log-softmax, RMSNorm, RoPE, AdamW,
attention as softmax(scale q k^T + mask) v. No threads, caches, compiled kernels, allocator or
BLAS settings: constructing one changes nothing outside it. It is the oracle every other backend
is tested against (tests/test_backend_contract.py), and a learner can run any model on it:
`deers.backend.use_backend("cpu", ReferenceBackend())`. The fast CPU backend (cpu.py) is a
subclass that overrides single primitives where that pays.

Buffers are flat 1-D NumPy arrays; `view` reads one under a `Layout` (shape, strides, offset)
without copying, so a primitive sees a permuted, narrowed or broadcast operand as it is.
f16 / bf16 data is computed in f32 and rounded once (`wide`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..dtype import DType, is_half_numpy
from ..errors import ShapeError
from ..layout import Layout
from . import COMPARISONS
from .attention import check_attention

# NumPy's warnings about log(0) = -inf, x / 0 = inf and 0 / 0 = nan are off: those are the
# documented results (as in PyTorch). A decorator (it keeps a primitive's name and docstring);
# NumPy keeps the setting per thread, so work run on other threads is wrapped too (cpu_threads).
quiet = np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore")

UNARY = {  # item 4: y = f(x)
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos,
    "tanh": np.tanh, "abs": np.abs, "sign": np.sign,
    "bitwise_not": np.invert,  # ~x on integers, `not x` on bool
    "relu": lambda x: np.maximum(x, 0),  # max(x, 0)
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),  # exp(-x) = inf gives exactly 0
    "softplus": lambda x: np.logaddexp(0, x),  # log(1 + exp(x)), without overflow
}
BINARY = {  # items 5-6: y = f(a, b)
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "floor_divide": np.floor_divide, "remainder": np.remainder,  # both round down, like Python's // and %
    "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
}


# ---- helpers --------------------------------------------------------------------------------------
def view(buf: np.ndarray, layout: Layout) -> np.ndarray:
    """A zero-copy strided NumPy view of the flat `buf` under `layout` (strides in elements)."""
    if layout.offset == 0 and layout.is_contiguous() and layout.numel == buf.size:
        return buf.reshape(layout.shape)
    if layout.numel == 0:
        return np.empty(layout.shape, buf.dtype)
    item = buf.itemsize
    return np.ndarray(layout.shape, buf.dtype, buf, layout.offset * item, tuple(s * item for s in layout.strides))


def wide(x: np.ndarray) -> np.ndarray:
    """x in the dtype it is computed in: f32 for f16 / bf16 (NumPy has no half GEMM or sums), else x."""
    return x.astype(np.float32) if is_half_numpy(x.dtype) else x


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype `wide` computes a dtype in."""
    return np.dtype(np.float32) if is_half_numpy(dtype) else dtype


def flat(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A result computed here (never a view of an input) as a contiguous flat buffer of `dtype`,
    rounded once when it was computed wider; copied only when its dtype or layout must change."""
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1)


def check_index(idx: np.ndarray, size: int, op: str) -> None:
    """Indices outside [0, size) raise IndexError, a negative one included: nothing wraps."""
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise IndexError(f"{op}: index out of range for dimension of size {size} "
                         f"(got values in [{idx.min()}, {idx.max()}])")


def check_divisor(name: str, divisor, dtype: np.dtype) -> None:
    """Integer floor_divide / remainder by zero raise ZeroDivisionError, as Python and PyTorch's CPU
    backend do (NumPy would quietly give 0)."""
    if name in ("floor_divide", "remainder") and dtype.kind in "iub" and not np.all(divisor):
        raise ZeroDivisionError(f"{name}: integer division by zero ({dtype.name} operands)")


def check_dense(buf: np.ndarray, layout: Layout, what: str, op: str) -> None:
    """adamw_step and scale_ update whole buffers in place: each must be read by a dense layout covering it."""
    if layout.offset != 0 or not layout.is_contiguous() or layout.numel != buf.size:
        raise ValueError(f"{op}: {what} must be dense (offset 0, contiguous, covering its buffer of "
                         f"{buf.size} elements), got {layout}")


def check_rope(x_shape: tuple[int, ...], cos_shape: tuple[int, ...], sin_shape: tuple[int, ...]) -> None:
    """rope's shapes: x (..., T, hd) with hd even, tables cos and sin (T, hd). The fused op checks
    its tensors with this too (deers/fused/attention.py)."""
    if len(x_shape) < 2 or x_shape[-1] % 2 or tuple(cos_shape) != x_shape[-2:] or tuple(sin_shape) != x_shape[-2:]:
        raise ShapeError(f"rope: x of shape {tuple(x_shape)} needs an even last dim and cos/sin tables of shape "
                         f"{tuple(x_shape[-2:])}, got {tuple(cos_shape)} and {tuple(sin_shape)}")


def causal_mask(t: int, s: int) -> np.ndarray:
    """(T, S) bool, True where query row t sees key column s: s <= t + S - T."""
    return np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)


def log_softmax_rows(z: np.ndarray) -> np.ndarray:
    """log softmax over the last dim: z - max - log(sum(exp(z - max))) (the max keeps exp finite)."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def masked_softmax(z: np.ndarray, log: bool, causal: bool) -> np.ndarray:
    """(log-)softmax over the last dim of z; causal: hidden entries are exactly 0 (log: -inf), and a
    row that sees no column is all 0 (all -inf)."""
    if not causal:
        out = log_softmax_rows(z)
        return out if log else np.exp(out)
    visible = causal_mask(*z.shape[-2:])
    out = log_softmax_rows(np.where(visible, z, -np.inf))  # a row of only -inf gives NaN here...
    out = np.where(visible, out, -np.inf)  # ...and is replaced by -inf
    return out if log else np.exp(out)


class ReferenceBackend:
    """The backend contract of deers.backend in plain NumPy: the oracle, read in one sitting."""

    name = "cpu"
    unary_names = frozenset(UNARY)  # every name of UnaryFn (tests/test_backend_contract.py checks it)

    def __init__(self) -> None:
        self.rng = np.random.default_rng()

    # 1. allocation -------------------------------------------------------------------------------
    def empty(self, numel: int, dtype: DType) -> np.ndarray:
        """An uninitialised flat buffer."""
        return np.empty(numel, dtype.numpy)

    def full(self, numel: int, value: float, dtype: DType) -> np.ndarray:
        """A flat buffer with every element `value`."""
        return np.full(numel, value, dtype.numpy)

    # 2. host transfer ----------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray, dtype: DType) -> np.ndarray:
        """A copy: a tensor never aliases the caller's array (in-place updates would leak into it)."""
        return np.array(array, dtype=dtype.numpy, order="C", copy=True).reshape(-1)

    def to_numpy(self, buf: np.ndarray, layout: Layout) -> np.ndarray:
        """A fresh host array of the layout's shape."""
        return np.array(view(buf, layout), copy=True)

    # 3. random numbers ---------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Restart the generator (NumPy's PCG64) from `seed`."""
        self.rng = np.random.default_rng(seed)

    def get_rng_state(self) -> dict:
        """The generator's state, for set_rng_state."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Put the generator back where get_rng_state saw it."""
        self.rng.bit_generator.state = state

    def randn(self, numel: int, dtype: DType) -> np.ndarray:
        """Standard normal samples (drawn in f32 for dtypes of 4 bytes or less, else f64)."""
        return self.rng.standard_normal(numel, dtype=np.float32 if dtype.itemsize <= 4 else np.float64).astype(
            dtype.numpy, copy=False)

    def rand(self, numel: int, dtype: DType) -> np.ndarray:
        """Uniform samples in [0, 1)."""
        return self.rng.random(numel, dtype=np.float32 if dtype.itemsize <= 4 else np.float64).astype(
            dtype.numpy, copy=False)

    def randint(self, numel: int, low: int, high: int) -> np.ndarray:
        """Uniform i64 integers in [low, high)."""
        return self.rng.integers(low, high, numel, dtype=np.int64)

    # 4-8. element-wise ---------------------------------------------------------------------------
    @quiet
    def unary(self, name: str, a: np.ndarray, la: Layout, out: np.ndarray | None = None) -> np.ndarray:
        """y = f(a) for f = UNARY[name], in a's dtype. A float function of integer data (exp of
        an i64) raises TypeError: nothing silently changes dtype."""
        y = UNARY[name](wide(view(a, la)))
        if y.dtype.kind == "f" and a.dtype.kind in "biu":
            raise TypeError(f"unary: {name} needs floating-point data, got {a.dtype}")
        res = np.empty(la.numel, a.dtype) if out is None else out
        np.copyto(res.reshape(la.shape), y, casting="same_kind")
        return res

    @quiet
    def binary(self, name: str, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout,
               out: np.ndarray | None = None) -> np.ndarray:
        """y = f(a, b) for f = BINARY[name]: a's dtype, bool for comparisons (NumPy's f16 / bf16
        loops compute each element in f32 and round once)."""
        x, y = view(a, la), view(b, lb)
        check_divisor(name, y, a.dtype)
        res = np.empty(la.numel, bool if name in COMPARISONS else a.dtype) if out is None else out
        BINARY[name](x, y, out=res.reshape(la.shape))
        return res

    @quiet
    def scalar(self, name: str, a: np.ndarray, la: Layout, value: float, reverse: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
        """y = f(a, value), or f(value, a) with reverse, the number taken in a's dtype."""
        x = view(a, la)
        value = a.dtype.type(value) if name not in COMPARISONS else value
        check_divisor(name, x if reverse else value, a.dtype)
        res = np.empty(la.numel, bool if name in COMPARISONS else a.dtype) if out is None else out
        BINARY[name](*((value, x) if reverse else (x, value)), out=res.reshape(la.shape))
        return res

    @quiet
    def where(self, c: np.ndarray, lc: Layout, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout) -> np.ndarray:
        """c ? a : b element-wise."""
        return np.where(view(c, lc), view(a, la), view(b, lb)).reshape(-1)

    @quiet
    def cast(self, a: np.ndarray, la: Layout, dtype: DType) -> np.ndarray:
        """The elements converted to `dtype` (one copy, row-major)."""
        return view(a, la).astype(dtype.numpy, order="C").reshape(-1)

    # 9. reductions -------------------------------------------------------------------------------
    @quiet
    def reduce(self, name: str, a: np.ndarray, la: Layout, axes: tuple[int, ...]) -> np.ndarray:
        """sum / max / min over `axes` (kept as size 1), or argmax over one axis (i64). Sums of
        integers or bool are i64; of f16 / bf16 summed in f32 and rounded once."""
        x = view(a, la)
        if name == "sum" and a.dtype.kind in "biu":
            return flat(np.sum(x, axis=axes, keepdims=True, dtype=np.int64), np.int64)
        if name == "sum":
            return flat(np.sum(x, axis=axes, keepdims=True, dtype=compute_dtype(a.dtype)), a.dtype)
        if name == "max":
            return flat(np.max(x, axis=axes, keepdims=True), a.dtype)
        if name == "min":
            return flat(np.min(x, axis=axes, keepdims=True), a.dtype)
        if name == "argmax":
            (axis,) = axes
            return flat(np.argmax(x, axis=axis, keepdims=True), np.int64)
        raise ValueError(f"unknown reduction {name!r}")

    # 10. matmul ----------------------------------------------------------------------------------
    @quiet
    def matmul(self, a: np.ndarray, la: Layout, b: np.ndarray, lb: Layout, acc: np.ndarray | None = None) -> np.ndarray:
        """a @ b over the last two dims (batch dims broadcast); with acc: acc += a @ b, in place."""
        product = np.matmul(wide(view(a, la)), wide(view(b, lb)))
        if acc is None:
            return flat(product, a.dtype)
        if acc.size != product.size or acc.dtype != a.dtype:
            raise ValueError(f"matmul: acc must be a buffer of {product.size} {a.dtype} elements, "
                             f"got {acc.size} {acc.dtype}")
        acc[...] = wide(acc) + product.reshape(-1)
        return acc

    # 11-12. indexing -----------------------------------------------------------------------------
    def index_select(self, a: np.ndarray, la: Layout, dim: int, idx: np.ndarray, lidx: Layout) -> np.ndarray:
        """a's slices at positions idx along dim."""
        index = view(idx, lidx)
        check_index(index, la.shape[dim], "index_select")
        return flat(np.take(view(a, la), index, axis=dim), a.dtype)

    def index_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: np.ndarray, lidx: Layout,
                  src: np.ndarray, lsrc: Layout) -> np.ndarray:
        """zeros(shape) with src's i-th slice along dim added at position idx[i] (repeats add up)."""
        index = view(idx, lidx)
        check_index(index, shape[dim], "index_add")
        res = np.zeros(shape, compute_dtype(dtype.numpy))
        np.add.at(res, (slice(None),) * dim + (index,), wide(view(src, lsrc)))
        return flat(res, dtype.numpy)

    def gather(self, a: np.ndarray, la: Layout, dim: int, idx: np.ndarray, lidx: Layout) -> np.ndarray:
        """out[i][j] = a[idx[i][j]][j] for dim 0 (any dim alike); idx may be smaller than a along the other dims."""
        index = view(idx, lidx)
        check_index(index, la.shape[dim], "gather")
        x = view(a, la)[tuple(slice(None) if d == dim else slice(0, s) for d, s in enumerate(lidx.shape))]
        return flat(np.take_along_axis(x, index, axis=dim), a.dtype)

    def scatter_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: np.ndarray, lidx: Layout,
                    src: np.ndarray, lsrc: Layout) -> np.ndarray:
        """zeros(shape) with res[idx[i][j]][j] += src[i][j] for dim 0 (any dim alike)."""
        index = view(idx, lidx)
        check_index(index, shape[dim], "scatter_add")
        position = list(np.indices(index.shape, sparse=True))  # every element's own coordinates...
        position[dim] = index  # ...but along dim the index's
        res = np.zeros(shape, compute_dtype(dtype.numpy))
        np.add.at(res, tuple(position), wide(view(src, lsrc)[tuple(slice(0, s) for s in index.shape)]))
        return flat(res, dtype.numpy)

    # 13. copy ------------------------------------------------------------------------------------
    def copy(self, src: np.ndarray, lsrc: Layout, dst: np.ndarray, ldst: Layout) -> None:
        """dst[...] = src, through both layouts (src broadcast to dst's shape)."""
        view(dst, ldst)[...] = view(src, lsrc)

    # 14-22. fused primitives ---------------------------------------------------------------------
    @quiet
    def softmax(self, a: np.ndarray, la: Layout, log: bool, causal: bool = False, scale: float = 1.0) -> np.ndarray:
        """y = softmax(scale a) = exp(z) / sum(exp(z)) over the last dim, z = scale a (log: z -
        log(sum(exp(z)))). causal: a is (..., T, S) and row t sees columns s <= t + S - T only."""
        if causal and la.ndim < 2:
            raise ValueError(f"softmax: causal needs (..., T, S) scores, got shape {la.shape}")
        return flat(masked_softmax(scale * wide(view(a, la)), log, causal), a.dtype)

    @quiet
    def softmax_backward(self, y: np.ndarray, ly: Layout, g: np.ndarray, lg: Layout, log: bool,
                         causal: bool = False, scale: float = 1.0) -> np.ndarray:
        """dx from y and dy = g: softmax dx = scale y (g - sum(g y)); log_softmax dx = scale (g -
        exp(y) sum(g)), where causal leaves the hidden entries (y = -inf) out of sum(g)."""
        yw, gw = wide(view(y, ly)), wide(view(g, lg))
        if log:
            if causal:
                gw = np.where(np.isneginf(yw), 0, gw)
            dx = gw - np.exp(yw) * gw.sum(axis=-1, keepdims=True)
        else:
            dx = yw * (gw - (gw * yw).sum(axis=-1, keepdims=True))
        return flat(scale * dx, y.dtype)

    @quiet
    def cross_entropy(self, logits: np.ndarray, llogits: Layout, targets: np.ndarray, ltargets: Layout,
                      ignore_index: int, label_smoothing: float,
                      overwrite_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """With logp = log_softmax(x) and s = label_smoothing, each counted row i (t_i != ignore_index):
        loss_i = -(1 - s) logp_i[t_i] - s mean(logp_i), dloss_i/dx_i = softmax(x_i) - (1 - s) one_hot(t_i) - s / C.
        Returns (sum of loss_i, count, gradient / max(count, 1)); ignored rows get gradient 0.
        overwrite_logits is a memory hint this backend does not need."""
        x, t = wide(view(logits, llogits)), view(targets, ltargets)
        n, c = x.shape
        valid = t != ignore_index
        check_index(t[valid], c, "cross_entropy")  # a target outside [0, C)
        rows, safe = np.arange(n), np.where(valid, t, 0)
        logp = log_softmax_rows(x)
        loss = -(1 - label_smoothing) * logp[rows, safe] - label_smoothing * logp.mean(axis=1)
        count = int(valid.sum())
        grad = np.exp(logp) - label_smoothing / c
        grad[rows, safe] -= 1 - label_smoothing
        grad = np.where(valid[:, None], grad, 0) / max(count, 1)
        loss_dtype = np.float64 if logits.dtype == np.float64 else np.float32
        return (np.array([loss[valid].sum(dtype=np.float64)], loss_dtype), np.array([count], np.int64),
                flat(grad, logits.dtype))

    @quiet
    def rmsnorm(self, x: np.ndarray, lx: Layout, w: np.ndarray, lw: Layout,
                eps: float) -> tuple[np.ndarray, np.ndarray]:
        """y = x rstd w over the last dim, rstd = 1 / sqrt(mean(x^2) + eps) per row (kept for the backward)."""
        xw = wide(view(x, lx))
        rstd = 1 / np.sqrt((xw * xw).sum(axis=-1, keepdims=True) / lx.shape[-1] + eps)  # mean over the last dim
        return flat(xw * rstd * wide(view(w, lw)), x.dtype), flat(rstd, xw.dtype)

    @quiet
    def rmsnorm_backward(self, g: np.ndarray, lg: Layout, x: np.ndarray, lx: Layout, w: np.ndarray, lw: Layout,
                         rstd: np.ndarray, lrstd: Layout) -> tuple[np.ndarray, np.ndarray]:
        """With xhat = x rstd and y = xhat w: dw = sum over rows of g xhat; dx = rstd (g w - xhat
        mean(g w xhat)) (d rstd/dx = -rstd^3 x / D gives the second term)."""
        gw, xw, ww = wide(view(g, lg)), wide(view(x, lx)), wide(view(w, lw))
        r = view(rstd, lrstd).reshape(lx.shape[:-1] + (1,))  # (..., 1)
        xhat = xw * r
        dw = (gw * xhat).sum(axis=tuple(range(lx.ndim - 1)))  # over every row
        gxhat = gw * ww
        dx = r * (gxhat - xhat * (gxhat * xhat).sum(axis=-1, keepdims=True) / lx.shape[-1])
        return flat(dx, x.dtype), flat(dw, w.dtype)

    @quiet
    def rope(self, x: np.ndarray, lx: Layout, cos: np.ndarray, lcos: Layout, sin: np.ndarray, lsin: Layout,
             inverse: bool = False) -> np.ndarray:
        """y = x cos + rotate_half(x) sin with rotate_half(x) = [-x2, x1] (x1, x2 the halves of the
        last dim); inverse: y = x cos - rotate_half(x) sin."""
        check_rope(lx.shape, lcos.shape, lsin.shape)
        xw, c, s = wide(view(x, lx)), wide(view(cos, lcos)), wide(view(sin, lsin))
        half = lx.shape[-1] // 2
        rotated = np.concatenate([-xw[..., half:], xw[..., :half]], axis=-1)
        return flat(xw * c - rotated * s if inverse else xw * c + rotated * s, x.dtype)

    @quiet
    def adamw_step(self, params: Sequence[tuple[np.ndarray, Layout]], grads: Sequence[tuple[np.ndarray, Layout]],
                   exp_avgs: Sequence[tuple[np.ndarray, Layout]], exp_avg_sqs: Sequence[tuple[np.ndarray, Layout]],
                   lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int) -> None:
        """In place, for each parameter p with gradient g and moments m, v at step t:
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
        p = p (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)."""
        for (p, lp), (g, lg), (m, lm), (v, lv) in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            for buf, layout, what in ((p, lp, "param"), (m, lm, "exp_avg"), (v, lv, "exp_avg_sq")):
                check_dense(buf, layout, what, "adamw_step")
            gw = wide(view(g, lg)).reshape(-1)
            m[...] = beta1 * wide(m) + (1 - beta1) * gw
            v[...] = beta2 * wide(v) + (1 - beta2) * gw * gw
            update = lr / (1 - beta1 ** step) * wide(m) / (np.sqrt(wide(v) / (1 - beta2 ** step)) + eps)
            p[...] = wide(p) * (1 - lr * weight_decay) - update

    @quiet
    def sum_of_squares(self, arrays: Sequence[tuple[np.ndarray, Layout]]) -> np.ndarray:
        """sum(x^2) over every element of every array, in f64 when any array is f64, else f32."""
        acc = np.float64 if any(buf.dtype == np.float64 for buf, _ in arrays) else np.float32
        total = acc(0)
        for buf, layout in arrays:
            total += np.square(view(buf, layout), dtype=acc).sum()
        return np.array([total], acc)

    @quiet
    def scale_(self, arrays: Sequence[tuple[np.ndarray, Layout]], factor: np.ndarray) -> None:
        """Each dense array *= factor[0], in place."""
        for buf, layout in arrays:
            check_dense(buf, layout, "array", "scale_")
            if is_half_numpy(buf.dtype):
                buf[...] = wide(buf) * np.float32(factor[0])  # in f32, rounded once
            else:
                buf *= buf.dtype.type(factor[0])

    def synchronize(self) -> None:
        """NumPy is synchronous: nothing is ever queued."""

    @quiet
    def causal_attention(self, q: np.ndarray, lq: Layout, k: np.ndarray, lk: Layout, v: np.ndarray, lv: Layout,
                         scale: float) -> tuple[np.ndarray, np.ndarray]:
        """p = softmax(scale q k^T + mask), the mask -inf where query t may not see key s
        (s > t + S - T); y = p v. Returns (y, p)."""
        check_attention(lq, lk, lv)
        qw, kw, vw = wide(view(q, lq)), wide(view(k, lk)), wide(view(v, lv))
        p = masked_softmax(scale * qw @ np.swapaxes(kw, -1, -2), False, causal=True)  # (..., T, S)
        return flat(p @ vw, q.dtype), flat(p, q.dtype)

    @quiet
    def causal_attention_backward(self, q: np.ndarray, lq: Layout, k: np.ndarray, lk: Layout, v: np.ndarray,
                                  lv: Layout, p: np.ndarray, lp: Layout, dy: np.ndarray, ldy: Layout,
                                  scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """With s = scale q k^T: dv = p^T dy, dp = dy v^T, ds = p (dp - sum(dp p)) (the softmax's
        backward), dq = scale ds k, dk = scale ds^T q."""
        check_attention(lq, lk, lv)
        qw, kw, vw, pw, dyw = (wide(view(b, lay)) for b, lay in ((q, lq), (k, lk), (v, lv), (p, lp), (dy, ldy)))
        dp = dyw @ np.swapaxes(vw, -1, -2)
        ds = scale * pw * (dp - (dp * pw).sum(axis=-1, keepdims=True))
        dq, dk, dv = ds @ kw, np.swapaxes(ds, -1, -2) @ qw, np.swapaxes(pw, -1, -2) @ dyw
        return flat(dq, q.dtype), flat(dk, q.dtype), flat(dv, q.dtype)

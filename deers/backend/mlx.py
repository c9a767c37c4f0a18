"""The Apple-GPU backend ("mps"): the numbered primitives of `deers.backend` on MLX.

Buffers are flat 1-D `mx.array`s. `_view` turns (buffer, layout) into an n-d array with
`mx.as_strided` (strides in elements), so permuted, narrowed and broadcast layouts are read as
they are. On a Mac MLX runs on the Apple GPU (Metal); on Linux the `mlx[cpu]` build runs the same
code on the CPU, which is how this backend is tested.

Lazy evaluation. MLX records a graph and computes only when a value is needed. Deers needs
values at a few explicit points, and only there does this backend force evaluation:
  * `to_numpy` (and so `Tensor.numpy()` / `item()`) copies to the host, which evaluates;
  * index bounds checks read the index's min/max on the host (IndexError before any gather);
  * `cross_entropy` reads the count and the targets' range (the loss and gradient stay lazy);
  * `adamw_step` ends with `mx.eval(param, m, v)`, so one optimizer step is one evaluation and the
    graph does not grow across training steps.
Timing code should call `.item()` or `.numpy()` on a result before reading the clock.

In-place writes. MLX arrays are values, but `a[idx] = v` rebinds the data of the array object
`a` itself. Every NDArray view holds the same buffer object and builds its strided view only when
an op reads it, so `copy` (and `adamw_step`) writing into `dst[...]` is seen by every view of that
buffer, exactly like the NumPy backend's in-place writes. Results computed *before* the write
keep the old values (the graph captured them), which is also what eager NumPy gives.

dtypes: f16, f32, bf16, i64, bool, u8 everywhere; f64 only where MLX runs on the CPU (the Linux
build). The Apple GPU has no float64, so there f64 raises DTypeError where it would enter the
device (allocation, host transfer, cast, random).
"""
from __future__ import annotations

from math import prod
from typing import Sequence

import mlx.core as mx
import numpy as np

from ..dtype import DType, bf16
from ..errors import DTypeError
from ..layout import Layout
from . import COMPARISONS, attention, mlx_kernels, not_implemented

_MX_DTYPES = {
    "f16": mx.float16, "f32": mx.float32, "f64": mx.float64, "bf16": mx.bfloat16,
    "i64": mx.int64, "bool": mx.bool_, "u8": mx.uint8,
}
_UNARY = {
    "neg": mx.negative, "exp": mx.exp, "log": mx.log, "sqrt": mx.sqrt, "sin": mx.sin,
    "cos": mx.cos, "tanh": mx.tanh, "sigmoid": mx.sigmoid, "abs": mx.abs, "sign": mx.sign,
    "bitwise_not": mx.bitwise_invert,
    "softplus": lambda x: mx.logaddexp(x, mx.array(0, dtype=x.dtype)),  # log(1 + exp(x)), never overflows
}
_BINARY = {
    "add": mx.add, "sub": mx.subtract, "mul": mx.multiply, "div": mx.divide, "pow": mx.power,
    "maximum": mx.maximum, "minimum": mx.minimum,
    "floor_divide": mx.floor_divide, "remainder": mx.remainder,  # through _divide (integer checks)
    "bitwise_and": mx.bitwise_and, "bitwise_or": mx.bitwise_or, "bitwise_xor": mx.bitwise_xor,
    "eq": mx.equal, "ne": mx.not_equal, "lt": mx.less, "le": mx.less_equal, "gt": mx.greater,
    "ge": mx.greater_equal,
}


def on_gpu() -> bool:
    """Whether MLX computes on the Apple GPU (Metal) rather than the CPU."""
    return mx.default_device().type == mx.gpu


def _mx_dtype(dtype: DType, op: str) -> mx.Dtype:
    """The MLX dtype of a Deers dtype; f64 is refused on the Apple GPU, which has no float64."""
    if dtype.name == "f64" and on_gpu():
        raise DTypeError(f"{op}: f64 is not supported on device mps (the Apple GPU has no float64); "
                         f"use f32")
    return _MX_DTYPES[dtype.name]


def _view(buf: mx.array, layout: Layout) -> mx.array:
    """`buf` read through `layout` as an n-d array (a reshape or slice when contiguous)."""
    if layout.numel == 0:
        return mx.zeros(layout.shape, buf.dtype)
    if layout.is_contiguous():
        if layout.offset == 0 and layout.numel == buf.size:
            return buf.reshape(layout.shape)
        return buf[layout.offset:layout.offset + layout.numel].reshape(layout.shape)
    # as_strided reads the buffer's memory in row order: a buffer MLX keeps as a broadcast or
    # permuted array (a lazily computed result) is made row contiguous first (no copy if it is)
    return mx.as_strided(mx.contiguous(buf), layout.shape, layout.strides, layout.offset)


def _flat(x: mx.array) -> mx.array:
    return x.reshape(-1)


def _wide(x: mx.array) -> mx.array:
    """f16 / bf16 values widened to f32 for accumulation (rounded once at the end, like the CPU)."""
    return x.astype(mx.float32) if x.dtype in (mx.float16, mx.bfloat16) else x


def _into(res: mx.array, out: mx.array | None) -> mx.array:
    """Return `res` flat, or write it into the given flat `out` buffer (in place) and return that."""
    if out is None:
        return _flat(res)
    out[:] = _flat(res).astype(out.dtype)
    return out


_DIVISIONS = ("floor_divide", "remainder")


def _divide(name: str, a: mx.array, b: mx.array) -> mx.array:
    """a // b or a % b (name "floor_divide" / "remainder"). Integers: a zero divisor raises
    ZeroDivisionError, as on the CPU backend (a host read of b, like the index checks), and b = -1
    is done as a negation, because MLX's own integer division traps (SIGFPE) on the most negative
    i64 // -1. Floats are MLX's floor(a / b), which rounds the quotient first (1 // 0.1 is 10 here,
    9 on cpu and cuda, as in Python)."""
    divide = _BINARY[name]
    if not mx.issubdtype(a.dtype, mx.integer) and a.dtype != mx.bool_:
        return divide(a, b)
    if not mx.all(b != 0).item():
        raise ZeroDivisionError(f"{name}: integer division by zero ({a.dtype} operands)")
    if not mx.issubdtype(a.dtype, mx.signedinteger):
        return divide(a, b)
    minus_one = b == -1
    quotient_or_remainder = divide(a, mx.where(minus_one, mx.array(1, a.dtype), b))  # x % 1 == x % -1 == 0
    return mx.where(minus_one, -a, quotient_or_remainder) if name == "floor_divide" else quotient_or_remainder


def _checked_index(index: mx.array, size: int, op: str) -> mx.array:
    """Raise IndexError when any index is outside [0, size) (never wrapped); return it unchanged.

    This reads two numbers on the host (an evaluation point): MLX would otherwise clamp or read
    garbage silently, and Deers promises IndexError on every backend.
    """
    if index.size:
        low, high = np.array(mx.stack([mx.min(index), mx.max(index)])).tolist()
        if low < 0 or high >= size:
            raise IndexError(f"{op}: index out of range for dimension of size {size} on device mps "
                             f"(got values in [{low}, {high}])")
    return index


def _scatter_positions(shape: tuple[int, ...], dim: int, index: mx.array, grid: tuple[int, ...]) -> mx.array:
    """Flat positions in a contiguous `shape` array of every element of a scatter along `dim`.

    The source elements form the `grid`; `index` broadcasts against it. Coordinate `dim` comes
    from the index and every other coordinate is the source element's own, so
    position = sum_d coord_d * stride_d (shape `grid`).
    """
    ndim = len(shape)
    strides = Layout(shape).strides
    positions = mx.broadcast_to(index.astype(mx.int64) * strides[dim], grid)
    for d in range(ndim):
        if d == dim or grid[d] == 1:
            continue
        coord = mx.arange(grid[d], dtype=mx.int64).reshape([-1 if k == d else 1 for k in range(ndim)])
        positions = positions + coord * strides[d]
    return positions


class MLXBackend:
    """MLX implementation of the backend contract (see deers.backend) for device "mps"."""

    name = "mps"
    unary_names = frozenset(_UNARY) | {"relu"}  # the UnaryFn names unary() computes

    def __init__(self):
        self.key = mx.random.key(int(np.random.SeedSequence().entropy % (2 ** 63)))

    # 1. allocation ---------------------------------------------------------------------------
    def empty(self, numel: int, dtype: DType) -> mx.array:
        """MLX has no uninitialised allocation; zeros are the cheapest honest substitute."""
        return mx.zeros((numel,), _mx_dtype(dtype, "empty"))

    def full(self, numel: int, value, dtype: DType) -> mx.array:
        return mx.full((numel,), value, dtype=_mx_dtype(dtype, "full"))

    # 2. host transfer --------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray, dtype: DType) -> mx.array:
        target = _mx_dtype(dtype, "from_numpy")
        flat = np.ascontiguousarray(array, dtype=dtype.numpy).reshape(-1)
        if dtype.name == "bf16":  # MLX cannot read ml_dtypes' bfloat16 buffer; f32 holds it exactly
            return mx.array(flat.astype(np.float32)).astype(target)
        return mx.array(flat, dtype=target)

    def to_numpy(self, buf: mx.array, layout: Layout) -> np.ndarray:
        x = _view(buf, layout)
        if x.dtype == mx.bfloat16:  # NumPy has no bfloat16: go through f32 (exact), then ml_dtypes'
            # (bf16.numpy raises a DTypeError naming the `bf16` extra when ml_dtypes is missing)
            return np.array(x.astype(mx.float32), copy=True).astype(bf16.numpy)
        return np.array(x, copy=True)

    # 3. random ---------------------------------------------------------------------------------
    def _next_key(self) -> mx.array:
        """Split the kept key: one half for this draw, the other becomes the new state."""
        self.key, sub = mx.random.split(self.key)
        return sub

    def seed(self, seed: int) -> None:
        self.key = mx.random.key(seed)

    def get_rng_state(self) -> dict:
        return {"key": np.array(self.key).tolist()}

    def set_rng_state(self, state: dict) -> None:
        self.key = mx.array(state["key"], dtype=mx.uint32)

    def randn(self, numel: int, dtype: DType) -> mx.array:
        """Drawn in f32 and cast, like the CPU backend (MLX has no f64 uniform source)."""
        target = _mx_dtype(dtype, "randn")
        return mx.random.normal((numel,), dtype=mx.float32, key=self._next_key()).astype(target)

    def rand(self, numel: int, dtype: DType) -> mx.array:
        target = _mx_dtype(dtype, "rand")
        return mx.random.uniform(shape=(numel,), dtype=mx.float32, key=self._next_key()).astype(target)

    def randint(self, numel: int, low: int, high: int) -> mx.array:
        return mx.random.randint(low, high, (numel,), dtype=mx.int64, key=self._next_key())

    # 4-8. element-wise -------------------------------------------------------------------------
    def unary(self, name: str, a: mx.array, la: Layout, out: mx.array | None = None) -> mx.array:
        if name not in self.unary_names:
            raise not_implemented(name, self)
        x = _view(a, la)
        if name == "relu":
            res = mx.maximum(x, mx.array(0, dtype=x.dtype))
        else:
            res = _UNARY[name](x)
        return _into(res, out)

    def binary(self, name: str, a: mx.array, la: Layout, b: mx.array, lb: Layout,
               out: mx.array | None = None) -> mx.array:
        x, y = _view(a, la), _view(b, lb)
        return _into(_divide(name, x, y) if name in _DIVISIONS else _BINARY[name](x, y), out)

    def scalar(self, name: str, a: mx.array, la: Layout, value, reverse: bool = False,
               out: mx.array | None = None) -> mx.array:
        x = _view(a, la)
        # arithmetic keeps the array's dtype (value converted, as NumPy's a.dtype.type(value));
        # comparisons see the exact Python number
        other = value if name in COMPARISONS else mx.array(value, dtype=x.dtype)
        first, second = (other, x) if reverse else (x, other)
        res = _divide(name, first, second) if name in _DIVISIONS else _BINARY[name](first, second)
        return _into(res, out)

    def where(self, c: mx.array, lc: Layout, a: mx.array, la: Layout, b: mx.array, lb: Layout) -> mx.array:
        return _flat(mx.where(_view(c, lc), _view(a, la), _view(b, lb)))

    def cast(self, a: mx.array, la: Layout, dtype: DType) -> mx.array:
        return _flat(_view(a, la).astype(_mx_dtype(dtype, "cast")))

    # 9. reductions -----------------------------------------------------------------------------
    def reduce(self, name: str, a: mx.array, la: Layout, axes: tuple[int, ...]) -> mx.array:
        x = _view(a, la)
        axes = list(axes)
        if name == "sum" and not mx.issubdtype(a.dtype, mx.floating):  # integer and bool sums are i64, as on CPU
            res = mx.sum(x.astype(mx.int64), axis=axes, keepdims=True)
        elif name == "sum":  # f16 / bf16 accumulate in f32
            res = mx.sum(_wide(x), axis=axes, keepdims=True).astype(x.dtype)
        elif name == "max":
            res = mx.max(x, axis=axes, keepdims=True)
        elif name == "min":
            res = mx.min(x, axis=axes, keepdims=True)
        elif name == "argmax":
            (axis,) = axes
            res = mx.argmax(x, axis=axis, keepdims=True).astype(mx.int64)
        else:
            raise ValueError(f"unknown reduction {name!r}")
        return _flat(res)

    # 10. matmul --------------------------------------------------------------------------------
    def matmul(self, a: mx.array, la: Layout, b: mx.array, lb: Layout, acc: mx.array | None = None) -> mx.array:
        product = _flat(mx.matmul(_view(a, la), _view(b, lb)))
        if acc is None:
            return product
        if acc.size != product.size or acc.dtype != product.dtype:
            raise ValueError(f"matmul: acc must be a buffer of {product.size} {product.dtype} elements, "
                             f"got {acc.size} {acc.dtype}")
        acc[:] = (_wide(acc) + _wide(product)).astype(acc.dtype)  # in place: every view of acc sees it
        return acc

    # 11-12. indexing ---------------------------------------------------------------------------
    def index_select(self, a: mx.array, la: Layout, dim: int, idx: mx.array, lidx: Layout) -> mx.array:
        index = _checked_index(_view(idx, lidx), la.shape[dim], "index_select")
        return _flat(mx.take(_view(a, la), index, axis=dim))

    def index_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: mx.array, lidx: Layout,
                  src: mx.array, lsrc: Layout) -> mx.array:
        index = _checked_index(_view(idx, lidx), shape[dim], "index_add")
        # index (n,) placed at `dim` of the source grid shape[:dim] + (n,) + shape[dim+1:]
        grid_index = index.reshape([-1 if d == dim else 1 for d in range(len(shape))])
        positions = _scatter_positions(shape, dim, grid_index, lsrc.shape)
        return self._scatter_add(shape, dtype, positions, _view(src, lsrc))

    def gather(self, a: mx.array, la: Layout, dim: int, idx: mx.array, lidx: Layout) -> mx.array:
        index = _checked_index(_view(idx, lidx), la.shape[dim], "gather")
        x = _view(a, la)
        # torch.gather allows an index smaller than the input along the other dims
        x = x[tuple(slice(None) if d == dim else slice(0, s) for d, s in enumerate(lidx.shape))]
        return _flat(mx.take_along_axis(x, index, axis=dim))

    def scatter_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: mx.array, lidx: Layout,
                    src: mx.array, lsrc: Layout) -> mx.array:
        index = _checked_index(_view(idx, lidx), shape[dim], "scatter_add")
        positions = _scatter_positions(shape, dim, index, lidx.shape)
        return self._scatter_add(shape, dtype, positions, _view(src, lsrc))

    def _scatter_add(self, shape: tuple[int, ...], dtype: DType, positions: mx.array, values: mx.array) -> mx.array:
        """zeros(prod(shape)) with values[k] added at positions[k] (repeats accumulate)."""
        numel = prod(shape)
        values = mx.broadcast_to(values, positions.shape)
        res = mx.zeros((numel,), _mx_dtype(dtype, "scatter_add"))
        return res.at[_flat(positions)].add(_flat(values).astype(res.dtype))

    # 13. copy ----------------------------------------------------------------------------------
    def copy(self, src: mx.array, lsrc: Layout, dst: mx.array, ldst: Layout) -> None:
        """Write the (broadcastable) view of src into the view `ldst` of dst, in place.

        A contiguous destination is one slice assignment; a strided one scatters to the flat
        positions of its elements, which are `as_strided` applied to a range of positions.
        """
        if ldst.numel == 0:
            return
        values = mx.broadcast_to(_view(src, lsrc), ldst.shape).astype(dst.dtype)
        if ldst.is_contiguous():
            dst[ldst.offset:ldst.offset + ldst.numel] = _flat(values)
            return
        span = mx.arange(ldst.offset, ldst.offset + ldst.span(), dtype=mx.int64)
        positions = mx.as_strided(span, ldst.shape, ldst.strides, 0)
        dst[_flat(positions)] = _flat(values)

    # 14-18. fused primitives (composed from MLX ops, which MLX fuses itself) -------------------
    def softmax(self, a: mx.array, la: Layout, log: bool, causal: bool = False, scale: float = 1.0) -> mx.array:
        """Of scale * a over the last dim; f16 / bf16 computed in f32 and rounded once. causal: la is
        (..., T, S) and row t sees s <= t + S - T (masked with -inf first; a row that sees nothing is all 0)."""
        x = _view(a, la)
        if scale != 1.0:  # lazy: MLX fuses it into the softmax's own evaluation
            x = x * mx.array(scale, x.dtype)
        visible = _causal_mask(la.shape, "softmax") if causal else None
        if visible is not None:
            x = mx.where(visible, x, mx.array(-float("inf"), x.dtype))
        if log:
            wide = _wide(x)
            res = (wide - mx.logsumexp(wide, axis=-1, keepdims=True)).astype(x.dtype)
        else:
            res = mx.softmax(x, axis=-1, precise=True)
        if visible is not None:  # rows with no visible column came out NaN
            res = mx.where(visible, res, mx.array(-float("inf") if log else 0.0, res.dtype))
        return _flat(res)

    def softmax_backward(self, y: mx.array, ly: Layout, g: mx.array, lg: Layout, log: bool,
                         causal: bool = False, scale: float = 1.0) -> mx.array:
        """dx from y = (log-)softmax(scale * x) and dy = g, in f32 for f16 / bf16."""
        dtype = y.dtype
        yv, gv = _wide(_view(y, ly)), _wide(_view(g, lg))
        if log:  # d/dx log_softmax: g - softmax * sum(g); causal: masked entries get and give nothing
            visible = _causal_mask(ly.shape, "softmax_backward") if causal else None
            if visible is not None:
                gv = mx.where(visible, gv, mx.array(0.0, gv.dtype))
            res = gv - mx.exp(yv) * mx.sum(gv, axis=-1, keepdims=True)
        else:  # d/dx softmax: y * (g - sum(g * y)); masked entries have y = 0
            res = yv * (gv - mx.sum(gv * yv, axis=-1, keepdims=True))
        if scale != 1.0:
            res = res * scale
        return _flat(res.astype(dtype))

    def cross_entropy(self, logits: mx.array, llogits: Layout, targets: mx.array, ltargets: Layout,
                      ignore_index: int, label_smoothing: float,
                      overwrite_logits: bool = False) -> tuple[mx.array, mx.array, mx.array]:
        """(loss_sum, count, dlogits / count); computed in f32 for f16/bf16 logits (the gradient is
        cast back to the logits' dtype). The count and the targets' range are read on the host (the
        IndexError promise); the loss stays lazy. overwrite_logits is a memory hint MLX has no use for.
        """
        n, c = llogits.shape
        compute = mx.float32 if logits.dtype in (mx.float16, mx.bfloat16) else logits.dtype
        x = _view(logits, llogits).astype(compute)
        targets = _view(targets, ltargets)
        valid = targets != ignore_index
        safe_targets = mx.where(valid, targets, 0)
        count, low, high = np.array(mx.stack([mx.sum(valid).astype(mx.int64), mx.min(safe_targets),
                                              mx.max(safe_targets)])).tolist() if n else (0, 0, 0)
        if count and (low < 0 or high >= c):
            raise IndexError(f"cross_entropy: target out of range for {c} classes on device mps "
                             f"(got values in [{low}, {high}])")
        peak = mx.max(x, axis=1, keepdims=True)
        shifted = mx.exp(x - peak)
        sums = mx.sum(shifted, axis=1, keepdims=True)
        one_hot = (mx.arange(c)[None, :] == safe_targets[:, None]).astype(compute)  # (n, c)
        # loss_i = logsumexp(x_i) - (1-s) x_i[t] - s * mean(x_i)
        lse = (mx.log(sums) + peak)[:, 0]
        picked = mx.sum(x * one_hot, axis=1)
        per_row = lse - (1.0 - label_smoothing) * picked
        if label_smoothing:
            per_row = per_row - label_smoothing * mx.mean(x, axis=1)
        loss_sum = mx.sum(mx.where(valid, per_row, 0.0)).astype(compute).reshape(1)
        # dloss_i/dx_i = softmax_i - (1-s) one_hot(t) - s/C, divided by the count for the mean
        scale = 1.0 / max(count, 1)
        grad = shifted * (scale / sums) - one_hot * ((1.0 - label_smoothing) * scale)
        if label_smoothing:
            grad = grad - label_smoothing * scale / c
        grad = mx.where(valid[:, None], grad, 0.0).astype(logits.dtype)
        return loss_sum, mx.array([count], dtype=mx.int64), _flat(grad)

    def rmsnorm(self, x: mx.array, lx: Layout, w: mx.array, lw: Layout, eps: float) -> tuple[mx.array, mx.array]:
        """y through MLX's fused rms_norm; the per-row 1/rms is kept for the backward (f32 for
        f16 / bf16 x, else x's dtype, like the CPU backend)."""
        rows, d = prod(lx.shape[:-1]), lx.shape[-1]
        xv = _view(x, lx).reshape(rows, d)
        xf = _wide(xv)
        rstd = mx.rsqrt(mx.mean(xf * xf, axis=1) + eps).astype(xf.dtype)  # (rows,)
        y = mx.fast.rms_norm(xv, _view(w, lw), eps)
        return _flat(y), rstd

    def rmsnorm_backward(self, g: mx.array, lg: Layout, x: mx.array, lx: Layout, w: mx.array, lw: Layout,
                         rstd: mx.array, lrstd: Layout) -> tuple[mx.array, mx.array]:
        """(dx, dw) of y = xhat w with xhat = x rstd, computed in f32 (f64 for f64)."""
        compute = mx.float64 if x.dtype == mx.float64 else mx.float32
        rows, d = prod(lx.shape[:-1]), lx.shape[-1]
        gv = _view(g, lg).reshape(rows, d).astype(compute)
        r = _view(rstd, lrstd).astype(compute)[:, None]  # (rows, 1)
        xhat = _view(x, lx).reshape(rows, d).astype(compute) * r
        gw = mx.sum(gv * xhat, axis=0)  # dw = sum over rows of g xhat
        gxhat = gv * _view(w, lw).astype(compute)
        # dx = rstd (gxhat - xhat mean(gxhat xhat)): d rstd/dx = -rstd^3 x / D folds into the projection
        proj = mx.mean(gxhat * xhat, axis=1, keepdims=True)
        gx = (gxhat - xhat * proj) * r
        return _flat(gx.astype(x.dtype)), gw.astype(w.dtype)

    def rope(self, x: mx.array, lx: Layout, cos: mx.array, lcos: Layout, sin: mx.array, lsin: Layout,
             inverse: bool = False) -> mx.array:
        """y = x cos + rotate_half(x) sin (inverse: - sin) with rotate_half(x) = [-x2, x1], x (..., T, hd)
        and (T, hd) tables; f16 / bf16 computed in f32 and rounded once."""
        if lx.ndim < 2 or lx.shape[-1] % 2 or lcos.shape != lx.shape[-2:] or lsin.shape != lx.shape[-2:]:
            raise ValueError(f"rope: x of shape {lx.shape} needs an even last dim and cos/sin tables of shape "
                             f"{lx.shape[-2:]}, got {lcos.shape} and {lsin.shape}")
        xv = _view(x, lx)
        wide, c, s = _wide(xv), _wide(_view(cos, lcos)), _wide(_view(sin, lsin))
        half = lx.shape[-1] // 2
        rotated = mx.concatenate([-wide[..., half:], wide[..., :half]], axis=-1)
        res = wide * c - rotated * s if inverse else wide * c + rotated * s
        return _flat(res.astype(xv.dtype))

    def adamw_step(self, params: Sequence[tuple[mx.array, Layout]], grads: Sequence[tuple[mx.array, Layout]],
                   exp_avgs: Sequence[tuple[mx.array, Layout]], exp_avg_sqs: Sequence[tuple[mx.array, Layout]],
                   lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int) -> None:
        """Update each dense param, m and v in place (slice assignment rebinds each buffer's data),
        then evaluate them all at once, so every training step ends with concrete buffers and a
        fresh graph."""
        update = mlx_kernels.adamw_metal if on_gpu() else mlx_kernels.adamw_reference
        written = []
        for (param, lparam), (grad, lgrad), (m, lm), (v, lv) in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            for buf, layout, what in ((param, lparam, "param"), (m, lm, "exp_avg"), (v, lv, "exp_avg_sq")):
                _check_dense(buf, layout, what, "adamw_step")
            g = _flat(_view(grad, lgrad))
            new_param, new_m, new_v = update(param, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
            param[:] = new_param
            m[:] = new_m
            v[:] = new_v
            written += [param, m, v]
        mx.eval(*written)

    # 19-20. gradient clipping over many arrays ------------------------------------------------------
    def sum_of_squares(self, arrays: Sequence[tuple[mx.array, Layout]]) -> mx.array:
        """sum(x^2) over all arrays, in f32 (f64 when any array is f64; f16/bf16 squared in f32), lazy."""
        acc = mx.float64 if any(buf.dtype == mx.float64 for buf, _ in arrays) else mx.float32
        total = mx.zeros((1,), acc)
        for buf, layout in arrays:
            x = _view(buf, layout).astype(acc)
            total = total + mx.sum(x * x)
        return total

    def scale_(self, arrays: Sequence[tuple[mx.array, Layout]], factor: mx.array) -> None:
        """Each dense array *= factor (lazy; f16/bf16 multiplied in f32 and rounded once)."""
        for buf, layout in arrays:
            _check_dense(buf, layout, "array", "scale_")
            buf[:] = (_wide(buf) * factor.astype(mx.float32 if buf.dtype != mx.float64 else mx.float64)).astype(buf.dtype)

    # 21. synchronize ---------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for queued work: lazily recorded arrays are computed when read, not here."""
        mx.synchronize()

    # 22. causal attention ----------------------------------------------------------------------
    def causal_attention(self, q: mx.array, lq: Layout, k: mx.array, lk: Layout, v: mx.array, lv: Layout,
                         scale: float) -> tuple[mx.array, mx.array]:
        """(y, p) from this backend's matmul and causal softmax (attention.py)."""
        return attention.causal_attention(self, q, lq, k, lk, v, lv, scale)

    def causal_attention_backward(self, q: mx.array, lq: Layout, k: mx.array, lk: Layout, v: mx.array, lv: Layout,
                                  p: mx.array, lp: Layout, dy: mx.array, ldy: Layout,
                                  scale: float) -> tuple[mx.array, mx.array, mx.array]:
        """(dq, dk, dv) from this backend's matmul and causal softmax backward (attention.py)."""
        return attention.causal_attention_backward(self, q, lq, k, lk, v, lv, p, lp, dy, ldy, scale)


def _check_dense(buf: mx.array, layout: Layout, what: str, op: str) -> None:
    """adamw_step and scale_ update whole buffers in place: each must be read by a dense layout covering it."""
    if layout.offset != 0 or not layout.is_contiguous() or layout.numel != buf.size:
        raise ValueError(f"{op}: {what} must be dense (offset 0, contiguous, covering its buffer "
                         f"of {buf.size} elements), got {layout}")


def _causal_mask(shape: tuple[int, ...], op: str) -> mx.array:
    """(T, S) bool: query row t sees key column s <= t + S - T."""
    if len(shape) < 2:
        raise ValueError(f"{op}: causal needs (..., T, S) scores, got shape {shape}")
    t, s = shape[-2], shape[-1]
    return mx.arange(s)[None, :] <= mx.arange(t)[:, None] + (s - t)

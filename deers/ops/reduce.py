"""Reductions over explicit dims (int, tuple, or None for all) and the softmax family.

Sum, Max, Min and ArgMax are the primitives of `deers.backend.ReduceFn`, one class each; mean and
logsumexp are written from them without a backward of their own; softmax is one fused kernel.

max/min follow PyTorch: with no dim they return the value (like amax/amin over everything); with
one int dim they return the named pair `ValuesIndices(values, indices)`, the values gathered at
the indices, so the gradient goes to the chosen element only (as in PyTorch), while amax/amin
(any dims) split it evenly among ties.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from ..autograd import Op
from ..backend import BinaryFn, ReduceFn
from ..dtype import i64
from ..errors import ShapeError, describe
from ..layout import normalize_dim
from ..tensor import Tensor, apply
from .operands import require_float


def _axes(x: Tensor, dim, op: str) -> tuple[int, ...]:
    """The sorted dims a reduction runs over: None and () mean every dim (as in PyTorch); a dim
    named twice, as in (0, -3) of a 3-d tensor, raises."""
    if dim is None:
        return tuple(range(x.ndim))
    if isinstance(dim, bool) or (isinstance(dim, (tuple, list)) and any(isinstance(d, bool) for d in dim)):
        raise TypeError(f"{op}: dim must be an int or a tuple of ints, got {dim!r} for {describe(x)}")  # True is not 1
    if isinstance(dim, int):
        dim = (dim,)
    axes = [normalize_dim(d, x.ndim, op) for d in dim]
    if not axes:
        return tuple(range(x.ndim))
    if len(set(axes)) != len(axes):
        repeated = next(a for a in axes if axes.count(a) > 1)
        raise ShapeError(f"{op}: dim {repeated} appears more than once in dim={tuple(dim)} for {describe(x)}; "
                         "name each dim once")
    return tuple(sorted(axes))


def _count(x: Tensor, axes: tuple[int, ...]) -> int:
    """How many elements each result of a reduction over `axes` combines (a 0-d tensor: its one)."""
    return math.prod(x.shape[a] for a in axes) if x.ndim else 1


def _drop(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """shape without the reduced axes (keepdim=False)."""
    return tuple(s for i, s in enumerate(shape) if i not in axes)


class ReduceOp(Op):
    """fn over `axes` for one primitive fn of deers.backend.ReduceFn; subclasses set fn and backward."""

    fn: ReduceFn

    def __init__(self, axes: tuple[int, ...], keepdim: bool):
        self.axes, self.keepdim = axes, keepdim

    @property
    def name(self) -> str:
        return self.fn.value


class Sum(ReduceOp):
    fn = ReduceFn.SUM

    def forward(self, a):
        self.shape = a.shape
        return a.reduce(self.fn, self.axes, self.keepdim)

    def backward(self, g):  # d sum(x)/dx_i = 1: every summed element gets the output's gradient
        kept = tuple(1 if i in self.axes else s for i, s in enumerate(self.shape))
        return (g.reshape(kept).broadcast_to(self.shape),)


def sum(x: Tensor, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
    """The sum over `dim` (int, tuple, None or () for all); with dtype=, x is cast to it first (as
    in PyTorch); integer and bool inputs sum in i64."""
    if dtype is not None:
        x = x.to_dtype(dtype)
    return apply(Sum(_axes(x, dim, "sum"), keepdim), x)


def mean(x: Tensor, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
    """sum(x) * (1/n): composite, no backward of its own; with dtype=, x is cast to it first."""
    if dtype is not None:
        x = x.to_dtype(dtype)
    require_float("mean", x)
    axes = _axes(x, dim, "mean")
    count = _count(x, axes)
    return sum(x, axes, keepdim) * (1.0 / count if count else math.nan)  # the mean of nothing is nan


class _Extreme(ReduceOp):
    """The largest (Max) or smallest (Min) element over axes."""

    def forward(self, a):
        out_kept = a.reduce(self.fn, self.axes, keepdim=True)
        if self.needs(0):
            self.a, self.out_kept = a, out_kept
        return out_kept if self.keepdim else out_kept.reshape(_drop(a.shape, self.axes))

    def backward(self, g):  # d max(x)/dx_i = [x_i = max] / (number of ties): ties split the gradient
        hit = self.a.binary(BinaryFn.EQ, self.out_kept).cast(g.dtype)
        count = hit.reduce(ReduceFn.SUM, self.axes, keepdim=True)
        return (hit * (g.reshape(self.out_kept.shape) / count),)


class Max(_Extreme):
    fn = ReduceFn.MAX


class Min(_Extreme):
    fn = ReduceFn.MIN


def amax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """The largest values over `dim` (int, tuple or None for all); ties share the gradient."""
    return apply(Max(_axes(x, dim, "amax"), keepdim), x)


def amin(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """The smallest values over `dim` (int, tuple or None for all); ties share the gradient."""
    return apply(Min(_axes(x, dim, "amin"), keepdim), x)


class ValuesIndices(NamedTuple):
    """What max(dim), min(dim), sort and topk return, like torch.return_types: `values, indices = ...`."""

    values: Tensor
    indices: Tensor


def _one_dim(x: Tensor, dim, op: str) -> int:
    """The single dim of max(dim)/min(dim); several dims raise (amax/amin take those)."""
    if isinstance(dim, (tuple, list)):
        _axes(x, dim, op)  # an out-of-range dim is an IndexError first
        raise TypeError(f"{op}: dim must be one int (the result is (values, indices), like PyTorch), "
                        f"got {tuple(dim)} for {describe(x)}; use a{op}(dims) for the values over several dims")
    if x.ndim == 0:
        normalize_dim(dim, 1, op)  # 0 or -1, as PyTorch allows for a 0-d tensor
        return 0
    d = normalize_dim(dim, x.ndim, op)
    if x.shape[d] == 0:
        raise ShapeError(f"{op}: dim {d} of {describe(x)} is empty, so it has no {op} (and no index)")
    return d


def _pick(x: Tensor, d: int, indices_kept: Tensor, keepdim: bool) -> ValuesIndices:
    """(values, indices) from indices with dim d kept as size 1: values = gather(x, d, indices)."""
    from .indexing import gather

    if x.ndim == 0:  # one element along "dim 0": itself, at index 0 (as PyTorch)
        return ValuesIndices(x.reshape(1).reshape(()), indices_kept)

    values = gather(x, d, indices_kept)  # (..., 1, ...)
    if keepdim:
        return ValuesIndices(values, indices_kept)
    shape = _drop(x.shape, (d,))
    return ValuesIndices(values.reshape(shape), indices_kept.reshape(shape))


def max(x: Tensor, dim=None, keepdim: bool = False) -> "Tensor | ValuesIndices":
    """max(x): the largest value. max(x, dim): (values, indices) along one dim. max(x, other) with
    a Tensor: the element-wise maximum (broadcast and promoted), like PyTorch."""
    if isinstance(dim, Tensor):
        return _elementwise("max", x, dim, keepdim)
    if dim is None:
        return amax(x, None, keepdim)
    d = _one_dim(x, dim, "max")
    return _pick(x, d, argmax(x, d, keepdim=True), keepdim)


def min(x: Tensor, dim=None, keepdim: bool = False) -> "Tensor | ValuesIndices":
    """min(x): the smallest value. min(x, dim): (values, indices) along one dim. min(x, other) with
    a Tensor: the element-wise minimum (broadcast and promoted), like PyTorch."""
    if isinstance(dim, Tensor):
        return _elementwise("min", x, dim, keepdim)
    if dim is None:
        return amin(x, None, keepdim)
    d = _one_dim(x, dim, "min")
    return _pick(x, d, argmin(x, d, keepdim=True), keepdim)


def _elementwise(op: str, x: Tensor, other: Tensor, keepdim: bool) -> Tensor:
    """max(x, other) / min(x, other): torch.maximum / torch.minimum."""
    from .binary import maximum, minimum

    if keepdim:
        raise TypeError(f"{op}: keepdim belongs to {op}(x, dim); {op}(x, other) with a Tensor is element-wise "
                        f"and takes no keepdim ({describe(x)} and {describe(other)})")
    return maximum(x, other) if op == "max" else minimum(x, other)


class ArgMax(ReduceOp):
    """Index (i64) of the largest element along one axis (axes=None: of the flattened input); no gradient."""

    fn = ReduceFn.ARGMAX
    differentiable = False

    def forward(self, a):
        if self.axes is None:
            return a.reshape((a.numel,)).reduce(self.fn, (0,), keepdim=False)
        return a.reduce(self.fn, self.axes, self.keepdim)


def argmax(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Index of the largest element along `dim` (over the flattened tensor when dim is None; with
    keepdim the result then has every dim, of size 1, as in PyTorch)."""
    axes = None if dim is None else (normalize_dim(dim, x.ndim, "argmax"),)
    return _keep_all(apply(ArgMax(axes, keepdim), x), x, dim, keepdim)


def _keep_all(index: Tensor, x: Tensor, dim, keepdim: bool) -> Tensor:
    """argmax/argmin over everything with keepdim=True: the index shaped (1, ..., 1) like x."""
    return index.reshape((1,) * x.ndim) if dim is None and keepdim else index


class ArgMin(Op):
    """Index (i64) of the first smallest element along one axis (axes=None: of the flattened input).

    The vocabulary has no argmin primitive: it is the argmax of the mask "equals the minimum"
    (or, when the minimum is NaN, "is NaN", as PyTorch reports NaN); exact for every dtype."""

    name = "argmin"
    differentiable = False

    def __init__(self, axes: "tuple[int, ...] | None", keepdim: bool):
        self.axes, self.keepdim = axes, keepdim

    def forward(self, a):
        if self.axes is None:
            a, axes = a.reshape((a.numel,)), (0,)
        else:
            axes = self.axes
        low = a.reduce(ReduceFn.MIN, axes, keepdim=True)
        hit = a.binary(BinaryFn.EQ, low).cast(i64)
        if a.dtype.is_float:  # NaN != NaN: where the minimum is NaN, the NaNs are the hits
            hit = hit + a.binary(BinaryFn.NE, a).cast(i64) * low.binary(BinaryFn.NE, low).cast(i64)
        return hit.reduce(ReduceFn.ARGMAX, axes, self.keepdim if self.axes is not None else False)


def argmin(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Index of the smallest element along `dim` (over the flattened tensor when dim is None; with
    keepdim the result then has every dim, of size 1, as in PyTorch)."""
    axes = None if dim is None else (normalize_dim(dim, x.ndim, "argmin"),)
    return _keep_all(apply(ArgMin(axes, keepdim), x), x, dim, keepdim)


def logsumexp(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """log(sum(exp(x))) = m + log(sum(exp(x - m))) with m = max(x) held constant (it cancels in
    the value and in the gradient, softmax(x)): composite, no backward of its own."""
    from .compare import where

    require_float("logsumexp", x)
    axes = _axes(x, dim, "logsumexp")
    if _count(x, axes) == 0:  # an empty sum is 0 and its log -inf, as in PyTorch (there is no max to shift by)
        return sum(x.exp(), axes, keepdim).log()
    peak = amax(x.detach(), axes, keepdim=True)
    peak = where(peak == -math.inf, 0.0, peak)  # a row of only -inf: shift by 0, the result is -inf
    out = sum((x - peak).exp(), axes, keepdim=True).log() + peak
    return out if keepdim else out.reshape(_drop(x.shape, axes))


class Softmax(Op):
    """Fused (log-)softmax over the last dim through the backend's kernel."""

    fused = True  # runs backend primitive 14 (exp(x - logsumexp(x)) is the same from core ops)

    def __init__(self, log: bool):
        self.log = log
        self.name = "log_softmax" if log else "softmax"

    def forward(self, a):
        self.out = a.softmax(self.log)
        return self.out

    def backward(self, g):  # softmax: y (g - sum(g y)); log_softmax: g - softmax sum(g)
        g = g.compact()
        y = self.out
        return (y.softmax_backward(g, self.log),)


def _softmax(x: Tensor, dim, log: bool, dtype=None) -> Tensor:
    from .shape import transpose

    if dtype is not None:  # as PyTorch: the input is cast first (an integer tensor with dtype=f32 works)
        x = x.to_dtype(dtype)
    require_float("log_softmax" if log else "softmax", x)
    if x.numel() == 0:  # nothing to normalize: an empty result of x's shape (no kernel gets an empty row)
        if isinstance(dim, int):
            normalize_dim(dim, x.ndim, "log_softmax" if log else "softmax")
        return x * 0.0
    if x.ndim == 0:  # dim 0 or -1, as PyTorch: the softmax of one element is 1 (log: 0)
        normalize_dim(dim, 0, "log_softmax" if log else "softmax")
        return _softmax(x.reshape(1), 0, log).reshape(())
    if not isinstance(dim, int):  # several dims: compose from logsumexp
        shifted = x - logsumexp(x, dim, keepdim=True)
        return shifted if log else shifted.exp()
    d = normalize_dim(dim, x.ndim, "log_softmax" if log else "softmax")
    if d == x.ndim - 1:
        return apply(Softmax(log), x)
    return transpose(apply(Softmax(log), transpose(x, d, x.ndim - 1)), d, x.ndim - 1)


def softmax(x: Tensor, dim=-1, dtype=None) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim`; with dtype=, x is cast to it first (as in PyTorch)."""
    return _softmax(x, dim, log=False, dtype=dtype)


def log_softmax(x: Tensor, dim=-1, dtype=None) -> Tensor:
    """x - logsumexp(x) along `dim`; with dtype=, x is cast to it first (as in PyTorch)."""
    return _softmax(x, dim, log=True, dtype=dtype)

"""Reductions over explicit dims (int, tuple, or None for all) and the softmax family."""
from __future__ import annotations

import math

from ..array import NDArray
from ..autograd import Op
from ..errors import ShapeError, describe
from ..layout import normalize_dim
from ..tensor import Tensor, apply
from .elementwise import require_float


def _axes(x: Tensor, dim, op: str) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.ndim))
    if isinstance(dim, int):
        dim = (dim,)
    return tuple(sorted({normalize_dim(d, x.ndim, op) for d in dim}))


class Sum(Op):
    name = "sum"

    def __init__(self, axes: tuple[int, ...], keepdim: bool):
        self.axes, self.keepdim = axes, keepdim

    def forward(self, a):
        self.shape = a.shape
        return a.reduce("sum", self.axes, self.keepdim)

    def backward(self, g):  # every summed element gets the output's gradient
        kept = tuple(1 if i in self.axes else s for i, s in enumerate(self.shape))
        return (g.reshape(kept).broadcast_to(self.shape),)


def sum(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return apply(Sum(_axes(x, dim, "sum"), keepdim), x)


def mean(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    require_float("mean", x)
    axes = _axes(x, dim, "mean")
    count = 1
    for a in axes:
        count *= x.shape[a]
    return sum(x, axes, keepdim) * (1.0 / count if count else math.nan)  # the mean of nothing is nan


class Max(Op):
    def __init__(self, fn: str, axes: tuple[int, ...], keepdim: bool):
        self.name, self.axes, self.keepdim = fn, axes, keepdim

    def forward(self, a):
        self.a = a
        self.out_kept = a.reduce(self.name, self.axes, keepdim=True)
        return self.out_kept if self.keepdim else self.out_kept.reshape(
            tuple(s for i, s in enumerate(a.shape) if i not in self.axes))

    def backward(self, g):  # the gradient goes to the extreme elements, split evenly among ties
        kept = self.out_kept.shape
        hit = self.a.binary("eq", self.out_kept).cast(g.dtype)
        count = hit.reduce("sum", self.axes, keepdim=True)
        return (hit * (g.reshape(kept) / count),)


def max(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return apply(Max("max", _axes(x, dim, "max"), keepdim), x)


def min(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return apply(Max("min", _axes(x, dim, "min"), keepdim), x)


def argmax(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Index of the largest element along `dim` (over the flattened tensor when dim is None)."""
    if dim is None:
        return Tensor(x.data.reshape((x.numel(),)).reduce("argmax", (0,), keepdim=False))
    return Tensor(x.data.reduce("argmax", (normalize_dim(dim, x.ndim, "argmax"),), keepdim))


class LogSumExp(Op):
    name = "logsumexp"

    def __init__(self, axes: tuple[int, ...], keepdim: bool):
        self.axes, self.keepdim = axes, keepdim

    def forward(self, a):
        self.a = a
        peak = a.reduce("max", self.axes, keepdim=True)
        peak = peak.scalar("eq", -math.inf).where(NDArray.full((), 0.0, a.dtype, a.device), peak)  # all -inf
        self.out_kept = (a - peak).exp().reduce("sum", self.axes, keepdim=True).log() + peak
        return self.out_kept if self.keepdim else self.out_kept.reshape(
            tuple(s for i, s in enumerate(a.shape) if i not in self.axes))

    def backward(self, g):  # d logsumexp(x) = softmax(x)
        return (g.reshape(self.out_kept.shape) * (self.a - self.out_kept).exp(),)


def logsumexp(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    require_float("logsumexp", x)
    return apply(LogSumExp(_axes(x, dim, "logsumexp"), keepdim), x)


class Softmax(Op):
    """Fused (log-)softmax over the last dim through the backend's kernel."""

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


def _softmax(x: Tensor, dim, log: bool) -> Tensor:
    from .shape import transpose

    require_float("log_softmax" if log else "softmax", x)
    if x.ndim == 0:
        raise ShapeError(f"{'log_softmax' if log else 'softmax'}: needs at least one dim, got {describe(x)}")
    if not isinstance(dim, int):  # several dims: compose from logsumexp
        shifted = x - logsumexp(x, dim, keepdim=True)
        return shifted if log else shifted.exp()
    d = normalize_dim(dim, x.ndim, "log_softmax" if log else "softmax")
    if d == x.ndim - 1:
        return apply(Softmax(log), x)
    return transpose(apply(Softmax(log), transpose(x, d, x.ndim - 1)), d, x.ndim - 1)


def softmax(x: Tensor, dim=-1) -> Tensor:
    return _softmax(x, dim, log=False)


def log_softmax(x: Tensor, dim=-1) -> Tensor:
    return _softmax(x, dim, log=True)

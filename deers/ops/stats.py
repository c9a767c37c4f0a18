"""Statistics over dims: var, std (with Bessel's correction) and vector norms.

var and std are compositions of mean and sum: var = sum((x - mean)^2) / (n - correction), the
divisor clamped at 0 as in PyTorch (so 0 / 0 gives nan, like var of one element). The 2-norm is
one op, so its gradient at the zero vector is 0 (as PyTorch's) rather than the 0/0 that
sqrt(sum(x^2)) would give; the other norms are compositions.
"""
from __future__ import annotations

import math

from ..array import NDArray
from ..autograd import Op
from ..backend import BinaryFn, ReduceFn
from ..tensor import Tensor, apply
from .operands import require_float
from .reduce import _axes, _count, _drop, amax, amin, mean, sum


def var(x: Tensor, dim=None, correction: "float | None" = 1, keepdim: bool = False,
        unbiased: bool | None = None) -> Tensor:
    """sum((x - mean)^2) / (n - correction) over `dim` (PyTorch's default correction=1, also when
    correction=None; unbiased=False is correction=0). As in PyTorch, a bool where the dim goes,
    x.var(True), is `unbiased`, and so is a bool second argument, x.var(1, False)."""
    require_float("var", x)
    if isinstance(dim, bool):  # torch's overload var(unbiased): x.var(False) is the biased variance of all
        dim, unbiased = None, dim
    if isinstance(correction, bool):  # var(dim, unbiased, keepdim)
        correction, unbiased = 1, correction if unbiased is None else unbiased
    if correction is None:
        correction = 1
    if unbiased is not None:
        correction = 1 if unbiased else 0
    axes = _axes(x, dim, "var")
    count = _count(x, axes)
    divisor = count - correction if count > correction else 0
    centered = x - mean(x, axes, keepdim=True)  # (x.shape)
    squares = sum(centered * centered, axes, keepdim)
    return squares * (1.0 / divisor if divisor else math.inf)  # a sum of squares >= 0: 0 * inf is nan, as 0 / 0


def std(x: Tensor, dim=None, correction: "float | None" = 1, keepdim: bool = False,
        unbiased: bool | None = None) -> Tensor:
    """sqrt(var(x, dim, correction))."""
    return var(x, dim, correction, keepdim, unbiased).sqrt()


class Norm2(Op):
    """||x||_2 = sqrt(sum x^2) over axes."""

    name = "norm"

    def __init__(self, axes: tuple[int, ...], keepdim: bool):
        self.axes, self.keepdim = axes, keepdim

    def forward(self, a):
        out_kept = (a * a).reduce(ReduceFn.SUM, self.axes, keepdim=True).sqrt()
        if self.needs(0):
            self.a, self.out_kept = a, out_kept
        return out_kept if self.keepdim else out_kept.reshape(_drop(a.shape, self.axes))

    def backward(self, g):  # d ||x|| / dx = x / ||x||, taken as 0 where ||x|| = 0 (PyTorch's choice)
        zero = NDArray.full((), 0, g.dtype, g.device)
        is_zero = self.out_kept.binary(BinaryFn.EQ, zero)
        safe = is_zero.where(NDArray.full((), 1, g.dtype, g.device), self.out_kept)
        scale = is_zero.where(zero, g.reshape(self.out_kept.shape) / safe)
        return (self.a * scale,)


def norm(x: Tensor, p: "float | str" = 2, dim=None, keepdim: bool = False) -> Tensor:
    """The vector p-norm over `dim` (all elements by default): p = 2 ("fro"), 1, inf, -inf, 0 or any
    other positive number, (sum |x|^p)^(1/p), like torch.linalg.vector_norm."""
    require_float("norm", x)
    axes = _axes(x, dim, "norm")
    if p in (2, 2.0, "fro"):
        return apply(Norm2(axes, keepdim), x)
    if p == math.inf:
        return amax(x.abs(), axes, keepdim)
    if p == -math.inf:
        return amin(x.abs(), axes, keepdim)
    if p == 0:  # the number of non-zero elements (no gradient)
        return sum((x != 0).to_dtype(x.dtype), axes, keepdim)
    if p == 1:
        return sum(x.abs(), axes, keepdim)
    if isinstance(p, str) or p <= 0:
        raise ValueError(f"norm: p must be a positive number, inf, -inf, 0 or 'fro', got {p!r}")
    return sum(x.abs() ** float(p), axes, keepdim) ** (1.0 / float(p))

"""Statistics over dims: var, std (with Bessel's correction), vector norms and the nuclear norm.

var and std are compositions of mean and sum: var = sum((x - mean)^2) / (n - correction), the
divisor clamped at 0 as in PyTorch (so 0 / 0 gives nan, like var of one element). The 2-norm is
one op, so its gradient at the zero vector is 0 (as PyTorch's) rather than the 0/0 that
sqrt(sum(x^2)) would give; the other norms are compositions.
"""
from __future__ import annotations

import math

import numpy as np

from ..array import NDArray
from ..autograd import Op
from ..backend import BinaryFn, ReduceFn
from ..errors import ShapeError, describe
from ..layout import normalize_dim
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


class NuclearNorm(Op):
    """||A||_* = sum of the singular values of each matrix over the last two dims.

    The backend contract has no SVD, so the singular values are found on the host (one
    device-to-host read, as sort's order is); the gradient U V^T (from A = U S V^T) is made there
    too and kept on the device for backward."""

    name = "norm"

    def forward(self, a):
        u, singular, vh = np.linalg.svd(a.numpy().astype(np.float64), full_matrices=False)
        if self.needs(0):
            self.direction = NDArray.from_numpy(u @ vh, a.dtype, a.device)  # (..., m, n)
        return NDArray.from_numpy(singular.sum(-1), a.dtype, a.device)  # (...)

    def backward(self, g):  # d sum(s) / dA = U V^T, the same for every matrix of the batch
        return (self.direction * g.reshape(g.shape + (1, 1)),)


def _nuclear_norm(x: Tensor, dim, keepdim: bool) -> Tensor:
    """norm(x, "nuc", dim): the matrices over the two dims `dim` (the whole 2-d tensor when None)."""
    from .shape import permute

    if dim is None and x.ndim == 2:
        dim = (0, 1)
    if not isinstance(dim, (tuple, list)) or len(dim) != 2:
        raise ShapeError(f"norm: p='nuc' is a matrix norm: it needs a 2-d tensor or dim=(d0, d1), got dim={dim!r} "
                         f"for {describe(x)}")
    axes = _axes(x, dim, "norm")
    rows, cols = (normalize_dim(d, x.ndim, "norm") for d in dim)
    rest = tuple(i for i in range(x.ndim) if i not in axes)
    out = apply(NuclearNorm(), permute(x, rest + (rows, cols)))  # (rest...)
    return out.reshape(tuple(1 if i in axes else s for i, s in enumerate(x.shape))) if keepdim else out


def norm(x: Tensor, p: "float | str" = 2, dim=None, keepdim: bool = False) -> Tensor:
    """The vector p-norm over `dim` (all elements by default), like torch.norm: p = 2 ("fro"), 1,
    inf, -inf, 0 (the count of non-zeros) or any other number, (sum |x|^p)^(1/p) (a negative p
    included: zeros make it 0); p = "nuc" is the nuclear norm of the matrices over two dims."""
    require_float("norm", x)
    if p == "nuc":
        return _nuclear_norm(x, dim, keepdim)
    axes = _axes(x, dim, "norm")
    if p in (2, 2.0, "fro"):
        return apply(Norm2(axes, keepdim), x)
    if isinstance(p, str) or isinstance(p, bool) or not isinstance(p, (int, float)):
        raise ValueError(f"norm: p must be a number (inf, -inf and 0 included), 'fro' or 'nuc', got {p!r}")
    if p == math.inf:
        return amax(x.abs(), axes, keepdim)
    if p == -math.inf:
        return amin(x.abs(), axes, keepdim)
    if p == 0:  # the number of non-zero elements (no gradient)
        return sum((x != 0).to_dtype(x.dtype), axes, keepdim)
    if p == 1:
        return sum(x.abs(), axes, keepdim)
    return sum(x.abs() ** float(p), axes, keepdim) ** (1.0 / float(p))

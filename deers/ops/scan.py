"""cumsum: running sums along one dim, as one op written over NDArray methods (every backend).

The backend vocabulary has no scan primitive, so the forward is a Hillis-Steele scan: after the
step with shift s = 1, 2, 4, ..., y[i] holds the sum of the 2s elements ending at i, so
ceil(log2 n) shifted adds finish it (each one `narrow` views and one add). The backward is the
same scan run from the other end: d cumsum(x)_j / dx_i = [j >= i], so dx_i = sum_{j >= i} g_j.
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..dtype import i64
from ..layout import normalize_dim
from ..tensor import Tensor, apply


def _scan(a: NDArray, dim: int, reverse: bool) -> NDArray:
    """Inclusive running sums of `a` along `dim`, from the start (or from the end when reverse)."""
    n = a.shape[dim]
    out = a.copy()
    shift = 1
    while shift < n:
        # forward: out[i] += out[i - shift] for i >= shift; reverse: out[i] += out[i + shift] for i < n - shift
        later, earlier = out.narrow(dim, shift, n - shift), out.narrow(dim, 0, n - shift)
        step = out.copy()
        if reverse:
            step.narrow(dim, 0, n - shift).assign(earlier + later)
        else:
            step.narrow(dim, shift, n - shift).assign(later + earlier)
        out = step
        shift *= 2
    return out


class CumSum(Op):
    name = "cumsum"

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, a):
        if a.ndim == 0:
            return a.copy()
        return _scan(a, self.dim, reverse=False)

    def backward(self, g):  # dx_i = sum_{j >= i} g_j: the scan from the end
        if g.ndim == 0:
            return (g,)
        return (_scan(g.compact(), self.dim, reverse=True),)


def cumsum(x: Tensor, dim: int, dtype=None) -> Tensor:
    """y_i = x_0 + ... + x_i along `dim`; integer and bool inputs sum in i64, like PyTorch; with
    dtype=, x is cast to it first (cumsum(dim, dtype=f64) sums an f32 tensor in f64)."""
    d = normalize_dim(dim, max(x.ndim, 1), "cumsum")
    if dtype is not None:
        x = x.to_dtype(dtype)
    elif not x.dtype.is_float and x.dtype is not i64:
        x = x.to_dtype(i64)
    return apply(CumSum(d), x)

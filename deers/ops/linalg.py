"""Matrix multiplication, batched with broadcast batch dims, always through the backend's GEMM;
and `linear`, x @ W^T as one op (what nn.Linear records)."""
from __future__ import annotations

import math

from math import prod

from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..layout import broadcast_shapes
from ..tensor import Tensor, apply
from .shape import broadcast_to, reshape


class MatMul(Op):
    """(..., m, k) @ (..., k, n) with equal batch dims (broadcast beforehand).

    Each input's gradient is made in the memory order of that input: for a transposed view
    (a Linear's x @ W.T) the GEMM computes the transpose of the gradient, the same cost, so the
    transpose's backward hands the weight a dense gradient instead of one that must be copied.
    """

    name = "matmul"

    def forward(self, a, b):
        self.a = a if self.needs(1) else None  # dB reads A
        self.b = b if self.needs(0) else None  # dA reads B
        self.a_transposed = self.needs(0) and _column_major(a)
        self.b_transposed = self.needs(1) and _column_major(b)
        return a.matmul(b)

    def backward(self, g):  # dA = G B^T = (B G^T)^T, dB = A^T G = (G^T A)^T
        a, b = self.a, self.b
        da = db = None
        if b is not None:
            da = _t(b.matmul(_t(g))) if self.a_transposed else g.matmul(_t(b))
        if a is not None:
            db = _t(_t(g).matmul(a)) if self.b_transposed else _t(a).matmul(g)
        return da, db


def _t(x):
    """The matrices of x transposed (a view): (..., m, n) -> (..., n, m)."""
    return x.transpose(x.ndim - 1, x.ndim - 2)


def _column_major(x) -> bool:
    """Whether x's matrices (the last two dims) lie column by column in memory, as W.T does."""
    rows, cols = x.shape[-2:]
    row_stride, col_stride = x.layout.strides[-2:]
    return rows > 1 and cols > 1 and row_stride == 1 and col_stride >= rows


def _check_float_pair(op: str, a: Tensor, b: Tensor) -> None:
    """What matmul and linear both ask of their operands: one device, one floating-point dtype."""
    if a.device != b.device:
        raise DeviceError(f"{op}: operands are on different devices: {describe(a)} and {describe(b)}")
    if a.dtype is not b.dtype:
        raise DTypeError(f"{op}: mixed dtypes {describe(a)} and {describe(b)}")
    if not a.dtype.is_float:
        raise DTypeError(f"{op}: needs floating-point tensors, got {describe(a)}")


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b like numpy.matmul: 1-D operands are promoted and squeezed, batch dims broadcast.

    A 2-D right operand (a Linear weight) is multiplied against a flattened left operand, so its
    gradient is one GEMM instead of a batch of them summed afterwards.
    """
    if not isinstance(b, Tensor):
        raise TypeError(f"matmul: expected a Tensor, got {type(b).__name__}")
    _check_float_pair("matmul", a, b)
    sa, sb = a.shape, b.shape
    if not sa or not sb:
        raise ShapeError(f"matmul: operands must have at least 1 dim: {describe(a)} and {describe(b)}")
    if sa[-1] != sb[-2 if len(sb) > 1 else 0]:
        raise ShapeError(f"matmul: inner dims differ: {describe(a)} @ {describe(b)}")
    if len(sa) == 2 and len(sb) == 2:
        return apply(MatMul(), a, b)
    if a.ndim == 1:  # a row vector (1, k); its dim is dropped from the result
        out = matmul(reshape(a, (1, a.shape[0])), b)  # (..., 1, n) or (1, 1) when b is 1-D too
        return reshape(out, out.shape[:-2] + out.shape[-1:]) if b.ndim > 1 else reshape(out, ())
    if b.ndim == 1:  # a column vector (k, 1); its dim is dropped from the result
        out = matmul(a, reshape(b, (b.shape[0], 1)))  # (..., m, 1)
        return reshape(out, out.shape[:-1])
    if b.ndim == 2 and a.ndim > 2:
        lead = a.shape[:-1]
        flat = reshape(a, (math.prod(lead), a.shape[-1]))  # (prod(lead), k): no -1, which k = 0 cannot infer
        return reshape(apply(MatMul(), flat, b), lead + (b.shape[-1],))  # (*lead, n)
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if batch is None:
        raise ShapeError(f"matmul: batch dims cannot broadcast: {describe(a)} @ {describe(b)}")
    a = broadcast_to(a, batch + a.shape[-2:])
    b = broadcast_to(b, batch + b.shape[-2:])
    return apply(MatMul(), a, b)


class Linear(Op):
    """y = x W^T for x (..., K) and a weight W (N, K): one op where x @ W.T records four (W's
    transpose, x flattened to (M, K), the product, the result unflattened to (..., N)).

    The flattening is a view in forward and backward alike, so this is the same two GEMMs per
    gradient as MatMul, only with three fewer graph nodes and their Python (a tiny GPT step has
    eight of these). dW = G^T X comes out as W lies, (N, K) row-major.
    """

    name = "linear"

    def forward(self, x, w):
        self.lead = x.shape[:-1]
        rows = x.reshape((prod(self.lead), x.shape[-1]))  # (..., K) -> (M, K): a view unless x's strides forbid it
        self.x = rows if self.needs(1) else None  # dW reads x
        self.w = w if self.needs(0) else None  # dx reads W
        return rows.matmul(_t(w)).reshape(self.lead + (w.shape[0],))  # (M, N) -> (..., N)

    def backward(self, g):  # dx = G W, dW = G^T X, with G flattened to (M, N)
        rows = g.reshape((prod(self.lead), g.shape[-1]))  # (..., N) -> (M, N)
        dx = rows.matmul(self.w).reshape(self.lead + (self.w.shape[1],)) if self.w is not None else None  # (..., K)
        dw = _t(rows).matmul(self.x) if self.x is not None else None  # (N, M) @ (M, K) -> (N, K)
        return dx, dw


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T for x (..., in_features) and weight (out_features, in_features), as one op
    (PyTorch's F.linear without the bias): the same values and gradients, fewer graph nodes."""
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"linear: expected Tensors, got {type(x).__name__} and {type(weight).__name__}")
    _check_float_pair("linear", x, weight)
    if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear: x {describe(x)} must end in in_features and weight {describe(weight)} "
                         f"be (out_features, in_features)")
    return apply(Linear(), x, weight)

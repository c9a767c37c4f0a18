"""Ordering along one dim: sort, argsort and topk, like PyTorch.

The backend vocabulary has no sort primitive, so the order is found on the host: one read of the
values (as a boolean mask's positions are), a stable NumPy argsort, and the indices go back to the
tensor's device. The values are then `gather(x, dim, indices)` on the device, so the gradient is
gather's: each output's gradient goes back to the element it came from, as in PyTorch.

Ties keep their original order (a stable sort) in both directions; NaN counts as larger than every
number, as in PyTorch (last ascending, first descending).
"""
from __future__ import annotations

import numpy as np

from ..array import NDArray
from ..dtype import i64
from ..errors import ShapeError, describe
from ..layout import normalize_dim
from ..tensor import Tensor
from .indexing import gather
from .reduce import ValuesIndices
from .shape import narrow


def _order(x: Tensor, d: int, descending: bool) -> Tensor:
    """The i64 positions that sort x along dim d (stable), on x's device; no gradient."""
    values = x.numpy()
    if descending:  # stable descending: sort the reversed axis ascending, reverse back, map positions
        n = values.shape[d]
        reversed_order = np.argsort(np.flip(values, d), axis=d, kind="stable")
        order = (n - 1) - np.flip(reversed_order, d)
    else:
        order = np.argsort(values, axis=d, kind="stable")
    return Tensor(NDArray.from_numpy(np.ascontiguousarray(order, np.int64), i64, x.device))


def _scalar_pair(x: Tensor, dim: int, op: str) -> ValuesIndices:
    """A 0-d tensor is one element along dim 0 (or -1), as PyTorch treats it: itself, at index 0."""
    normalize_dim(dim, 1, op)
    return ValuesIndices(x, Tensor(NDArray.full((), 0, i64, x.device)))


def argsort(x: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
    """The i64 indices that sort x along `dim` (always a stable order here; `stable` is accepted
    for PyTorch's signature)."""
    if x.ndim == 0:
        return _scalar_pair(x, dim, "argsort").indices
    return _order(x, normalize_dim(dim, x.ndim, "argsort"), descending)


def sort(x: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> ValuesIndices:
    """(values, indices): x sorted along `dim`; values = gather(x, dim, indices), so it has a gradient."""
    if x.ndim == 0:
        return _scalar_pair(x, dim, "sort")
    d = normalize_dim(dim, x.ndim, "sort")
    indices = _order(x, d, descending)
    return ValuesIndices(gather(x, d, indices), indices)


def topk(x: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> ValuesIndices:
    """(values, indices) of the k largest (largest=False: smallest) elements along `dim`, in order.

    The result is always sorted (PyTorch's default; `sorted=False` allows any order, so this one is valid).
    """
    d = normalize_dim(dim, max(x.ndim, 1), "topk")
    size = x.shape[d] if x.ndim else 1
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= size:
        raise ShapeError(f"topk: k={k!r} must be an int in [0, {size}] for dim {dim} of {describe(x)}")
    if x.ndim == 0:
        return _scalar_pair(x, dim, "topk")
    indices = narrow(_order(x, d, descending=largest), d, 0, k)  # (..., k, ...)
    return ValuesIndices(gather(x, d, indices), indices.compact())

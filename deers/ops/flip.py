"""flip: reverse the order of elements along some dims (a copy, like torch.flip).

Written as `index_select` with the positions n-1, ..., 0 on each dim, so it runs on every backend
(layouts keep non-negative strides) and its gradient is index_select's: flipped back.
Negative-step slices (`x[::-1]`, `x[5:1:-2]`) are a positive-step view followed by a flip.
"""
from __future__ import annotations

import numpy as np

from ..array import NDArray
from ..dtype import i64
from ..layout import normalize_dim
from ..tensor import Tensor
from .indexing import index_select


def flip(x: Tensor, dims: "int | tuple[int, ...] | list[int]") -> Tensor:
    """x with the element order reversed along each dim in `dims`."""
    if isinstance(dims, int):
        dims = (dims,)
    axes = [normalize_dim(d, x.ndim, "flip") for d in dims]
    if len(set(axes)) != len(axes):
        raise ValueError(f"flip: dims {tuple(dims)} repeat a dim")
    out = x
    for d in axes if x.ndim else ():  # a 0-d tensor takes dim 0 or -1 and is its own flip
        n = x.shape[d]
        if n > 1:
            positions = Tensor(NDArray.from_numpy(np.arange(n - 1, -1, -1, dtype=np.int64), i64, x.device))  # (n,)
            out = index_select(out, d, positions)
    return out

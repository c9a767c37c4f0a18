"""tril and triu: keep the lower or upper triangle of the last two dims, zero elsewhere.

A composition: `where(mask, x, 0)` with the triangle mask made on the host (like a causal mask),
so the gradient is where's: it flows to the kept elements only.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError, describe
from ..tensor import Tensor
from .compare import where
from .operands import as_operand


def _triangle(x: Tensor, diagonal: int, lower: bool, op: str) -> Tensor:
    from ..creation import tensor

    if x.ndim < 2:
        raise ShapeError(f"{op}: needs at least 2 dims, got {describe(x)}")
    rows, cols = x.shape[-2:]
    keep = np.tri(rows, cols, diagonal, dtype=bool)  # j <= i + diagonal
    if not lower:
        keep = ~np.tri(rows, cols, diagonal - 1, dtype=bool)  # j >= i + diagonal
    return where(tensor(keep, device=x.device), x, as_operand(0, x.dtype, x))  # zero of x's dtype (bool stays bool)


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    """Elements with column <= row + diagonal; the rest zero."""
    return _triangle(x, diagonal, True, "tril")


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    """Elements with column >= row + diagonal; the rest zero."""
    return _triangle(x, diagonal, False, "triu")

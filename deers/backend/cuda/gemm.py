"""Layouts -> one cuBLAS strided-batched GEMM call, in plain Python (no CuPy needed).

Deers arrays are row-major; cuBLAS is column-major. A row-major C (m, n) = A (m, k) @ B (k, n) is
the column-major product Cᵀ (n, m) = Bᵀ (n, k) · Aᵀ (k, m), so the call passes B first and A
second, each with the cuBLAS op that turns its memory into the transpose cuBLAS needs:

- an operand X (r, c) with unit column stride (rows laid out one after another, row stride L)
  *is* the column-major matrix Xᵀ (c, r) with leading dimension L: op N;
- one with unit row stride (a transposed view, column stride L) is the column-major X (r, c)
  with leading dimension L: op T.

The batch dims of an operand must advance by one stride per batch entry (stride 0 for a broadcast
operand: every entry reads the same matrix). An operand whose layout cuBLAS cannot express
(neither stride 1, or batch dims that do not collapse to one stride, such as the v view of a GPT's
qkv buffer) is reported, and the backend copies only that operand. C is written contiguous.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

OP_N, OP_T = 0, 1  # cublasOperation_t
INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class Operand:
    """How cuBLAS reads one operand: op, leading dimension, batch stride, offset (elements)."""

    op: int
    ld: int
    batch_stride: int
    offset: int


@dataclass(frozen=True)
class Gemm:
    """One cublasGemmStridedBatchedEx call in cuBLAS's own terms (column-major, M x N result).

    `first` is Deers' B (cuBLAS's A), `second` Deers' A (cuBLAS's B); M = n, N = m, K = k; C is
    the contiguous (batch, m, n) output: ldc = n, batch stride m n.
    """

    m: int
    n: int
    k: int
    batch: int
    first: Operand
    second: Operand
    ldc: int
    stride_c: int


def _matrix(rows: int, cols: int, row_stride: int, col_stride: int) -> tuple[int, int] | None:
    """(op, ld) under which cuBLAS reads the row-major operand (rows, cols) as its transpose, or None."""
    if cols == 1:
        col_stride = 1  # one column: its stride is never used
    if rows == 1:
        if col_stride == 1:
            return OP_N, max(1, cols)  # one row: any leading dimension >= cols reads it
        row_stride = 1
    if col_stride == 1 and row_stride >= max(1, cols):
        return OP_N, row_stride
    if row_stride == 1 and col_stride >= max(1, rows):
        return OP_T, col_stride
    return None


def _batch_stride(batch_shape: tuple[int, ...], batch_strides: tuple[int, ...]) -> int | None:
    """The one stride that steps through the flattened batch, or None when there is none."""
    dims = [(size, stride) for size, stride in zip(batch_shape, batch_strides) if size != 1]
    if not dims:
        return 0
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return dims[-1][1]


def _operand(shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> Operand | None:
    matrix = _matrix(shape[-2], shape[-1], strides[-2], strides[-1])
    batch_stride = _batch_stride(shape[:-2], strides[:-2])
    if matrix is None or batch_stride is None or matrix[1] > INT32_MAX:
        return None
    return Operand(matrix[0], matrix[1], batch_stride, offset)


@lru_cache(maxsize=4096)
def plan_gemm(a_shape: tuple[int, ...], a_strides: tuple[int, ...], a_offset: int,
              b_shape: tuple[int, ...], b_strides: tuple[int, ...], b_offset: int) -> Gemm | tuple[bool, bool]:
    """The cuBLAS call for (..., m, k) @ (..., k, n) with equal (already broadcast) batch dims, or
    (copy a?, copy b?): which operands must be made contiguous first."""
    *batch, m, k = a_shape
    n = b_shape[-1]
    a = _operand(a_shape, a_strides, a_offset)
    b = _operand(b_shape, b_strides, b_offset)
    if a is None or b is None or max(m, n, k) > INT32_MAX:
        return a is None, b is None
    return Gemm(m=n, n=m, k=k, batch=math.prod(batch), first=b, second=a, ldc=max(1, n), stride_c=m * n)

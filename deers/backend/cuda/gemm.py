"""Layouts -> one cuBLAS GEMM call (strided-batched, or batched with pointer arrays), in plain Python.

Deers arrays are row-major; cuBLAS is column-major. A row-major C (m, n) = A (m, k) @ B (k, n) is
the column-major product Cᵀ (n, m) = Bᵀ (n, k) · Aᵀ (k, m), so the call passes B first and A
second, each with the cuBLAS op that turns its memory into the transpose cuBLAS needs:

- an operand X (r, c) with unit column stride (rows laid out one after another, row stride L)
  *is* the column-major matrix Xᵀ (c, r) with leading dimension L: op N;
- one with unit row stride (a transposed view, column stride L) is the column-major X (r, c)
  with leading dimension L: op T.

The batch dims of both operands advance by one stride per batch entry (stride 0 for a broadcast
operand: every entry reads the same matrix): one cublasGemmStridedBatchedEx (`Gemm`). When an
operand's matrices are readable but its batch dims do not collapse to one stride (the v view of a
GPT's qkv buffer, (B, nh, T, hd) with batch strides (T 3D, hd); a gradient arriving through
y.transpose(1, 2).reshape(B, T, D), batch strides (T D, hd)), the call can instead take one
pointer per batch entry (`BatchedGemm`: cublas<S|D>gemmBatched, the per-entry offsets here, the
pointers made by the runtime) where the runtime has that call for the dtype (`POINTER_ARRAY_DTYPES`).
For the other dtypes (f16/bf16) such a batch is split instead (`SplitGemm`): the outer batch dims
are looped on the host and the inner ones, which do collapse, are one strided-batched call each
(the GPT's v: one call per sequence of the batch, each over its heads) — still no copy, and still
tensor cores. Only a matrix with neither stride 1, or a batch that would need more than
`SPLIT_MAX_CALLS` calls, is reported, and the backend copies only that operand. C is written
contiguous.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

OP_N, OP_T = 0, 1  # cublasOperation_t
INT32_MAX = (1 << 31) - 1
# dtypes with a pointer-array batched GEMM in CuPy's public cuBLAS binding (cupy_backends.cuda.libs
# .cublas, CuPy 14): sgemmBatched and dgemmBatched. It has no gemmBatchedEx, so f16/bf16 operands
# whose batch dims do not collapse are still copied.
POINTER_ARRAY_DTYPES = frozenset({"f32", "f64"})
POINTER_ARRAY_MAX_BATCH = 4096  # bounds the host work and the cached pointer arrays; a larger batch is copied
SPLIT_MAX_CALLS = 64  # a non-collapsing f16/bf16 batch split into more strided-batched calls than this is copied


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
    the contiguous (batch, m, n) output: ldc = n, batch stride m n, starting `c_offset` elements
    into the output buffer (not 0 only for the calls of a `SplitGemm`).
    """

    m: int
    n: int
    k: int
    batch: int
    first: Operand
    second: Operand
    ldc: int
    stride_c: int
    c_offset: int = 0


@dataclass(frozen=True)
class SplitGemm:
    """Several strided-batched calls that together make one batched product: one per entry of the
    outer batch dims, each over the inner batch dims (which collapse to one stride)."""

    calls: tuple[Gemm, ...]


@dataclass(frozen=True)
class Entries:
    """How cuBLAS reads one operand of a pointer-array call: op, leading dimension, and the offset
    (elements into the operand's buffer) of each batch entry's matrix."""

    op: int
    ld: int
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class BatchedGemm:
    """One cublas<S|D>gemmBatched call (column-major, M x N results), operands and roles as in
    `Gemm`; C entry i is the contiguous (m, n) matrix at `c_offsets[i]` of the output (ldc = n)."""

    m: int
    n: int
    k: int
    batch: int
    first: Entries
    second: Entries
    ldc: int
    c_offsets: tuple[int, ...]


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


def _entries(shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> Entries | None:
    """The operand read matrix by matrix: the offset of every batch entry, in row-major batch order."""
    matrix = _matrix(shape[-2], shape[-1], strides[-2], strides[-1])
    if matrix is None or matrix[1] > INT32_MAX:
        return None
    steps = [range(0, size * stride, stride) if stride else [0] * size
             for size, stride in zip(shape[:-2], strides[:-2])]
    return Entries(matrix[0], matrix[1], tuple(offset + sum(step) for step in itertools.product(*steps)))


@lru_cache(maxsize=4096)
def plan_gemm(a_shape: tuple[int, ...], a_strides: tuple[int, ...], a_offset: int,
              b_shape: tuple[int, ...], b_strides: tuple[int, ...], b_offset: int,
              pointer_arrays: bool = False) -> Gemm | BatchedGemm | SplitGemm | tuple[bool, bool]:
    """The cuBLAS call for (..., m, k) @ (..., k, n) with equal (already broadcast) batch dims, or
    (copy a?, copy b?): which operands must be made contiguous first.

    One strided-batched call whenever both operands' batch dims collapse (the faster call); with
    `pointer_arrays` (the runtime has cublas<t>gemmBatched for the dtype), a `BatchedGemm` when
    they do not but every matrix is readable, so nothing is copied; without, a `SplitGemm` when
    the batch splits into a few strided-batched calls."""
    *batch, m, k = a_shape
    n = b_shape[-1]
    a = _operand(a_shape, a_strides, a_offset)
    b = _operand(b_shape, b_strides, b_offset)
    if max(m, n, k) > INT32_MAX:
        return a is None, b is None
    if a is not None and b is not None:
        return Gemm(m=n, n=m, k=k, batch=math.prod(batch), first=b, second=a, ldc=max(1, n), stride_c=m * n)
    if pointer_arrays and math.prod(batch) <= POINTER_ARRAY_MAX_BATCH:
        a_entries = _entries(a_shape, a_strides, a_offset)
        b_entries = _entries(b_shape, b_strides, b_offset)
        if a_entries is not None and b_entries is not None:
            count = math.prod(batch)
            return BatchedGemm(m=n, n=m, k=k, batch=count, first=b_entries, second=a_entries, ldc=max(1, n),
                               c_offsets=tuple(range(0, count * m * n, m * n)))
    if not pointer_arrays:
        split = _split(a_shape, a_strides, a_offset, b_shape, b_strides, b_offset)
        if split is not None:
            return split
    return a is None, b is None


def _split(a_shape: tuple[int, ...], a_strides: tuple[int, ...], a_offset: int, b_shape: tuple[int, ...],
           b_strides: tuple[int, ...], b_offset: int) -> SplitGemm | None:
    """The fewest strided-batched calls (at most SPLIT_MAX_CALLS): loop the outer batch dims
    batch[:p] for the smallest p whose inner dims batch[p:] collapse for both operands."""
    *batch, m, k = a_shape
    n = b_shape[-1]
    for p in range(1, len(batch)):
        count = math.prod(batch[:p])
        if count > SPLIT_MAX_CALLS:
            return None
        inner_a = _operand(a_shape[p:], a_strides[p:], 0)
        inner_b = _operand(b_shape[p:], b_strides[p:], 0)
        if inner_a is None or inner_b is None:
            continue
        inner = math.prod(batch[p:])
        calls = []
        for entry, index in enumerate(itertools.product(*(range(size) for size in batch[:p]))):
            a_at = a_offset + sum(i * stride for i, stride in zip(index, a_strides))
            b_at = b_offset + sum(i * stride for i, stride in zip(index, b_strides))
            calls.append(Gemm(m=n, n=m, k=k, batch=inner,
                              first=Operand(inner_b.op, inner_b.ld, inner_b.batch_stride, b_at),
                              second=Operand(inner_a.op, inner_a.ld, inner_a.batch_stride, a_at),
                              ldc=max(1, n), stride_c=m * n, c_offset=entry * inner * m * n))
        return SplitGemm(tuple(calls))
    return None


@lru_cache(maxsize=1024)
def pointer_table(call: BatchedGemm, a_address: int, b_address: int, out_address: int,
                  itemsize: int) -> tuple[int, ...]:
    """The three device pointer arrays of a `BatchedGemm`, back to back: cuBLAS's A entries (in
    Deers' b), its B entries (in a), then C's (in out), from the buffers' base addresses (bytes)."""
    return (tuple(b_address + offset * itemsize for offset in call.first.offsets)
            + tuple(a_address + offset * itemsize for offset in call.second.offsets)
            + tuple(out_address + offset * itemsize for offset in call.c_offsets))

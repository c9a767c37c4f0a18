"""Layout -> kernel arguments for the CUDA backend, in plain Python (no CuPy needed).

Everything the backend decides on the host before a launch lives here, so it is tested on every
machine: which kernel (family + dtype suffixes -> a name in one .cu file), op codes, how a strided
layout is packed into the int64 "meta" array a kernel reads (with neighbouring dims merged and a
contiguous fast path), how a reduction over arbitrary axes becomes "reduce each row", and grid /
block sizes. The meta formats are documented in common.cuh and indexing.cu.

The same layouts come back at every training step, so the planning functions are cached by their
arguments (all plain tuples and numbers): a repeated call costs a dictionary lookup, not the
planning (the host time per launch matters on a GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...layout import contiguous_strides
from .. import BinaryFn

# ---- dtypes and kernels ---------------------------------------------------------------------------
SUFFIX = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int64": "i64",
          "uint8": "u8", "bool": "bool"}
ALL = ("f16", "bf16", "f32", "f64", "i64", "u8", "bool")
FLOATS = ("f16", "bf16", "f32", "f64")
REDUCIBLE = ("f16", "bf16", "f32", "f64", "i64")
ACC_NUMPY = {"f16": np.float32, "bf16": np.float32, "f32": np.float32, "f64": np.float64,
             "i64": np.int64, "u8": np.int32, "bool": np.int32}  # the C compute type of each dtype

# family -> (the .cu file that defines it, the dtype suffix tuples it is instantiated for)
KERNELS: dict[str, tuple[str, tuple[tuple[str, ...], ...]]] = {
    "unary": ("elementwise.cu", tuple((s,) for s in FLOATS + ("i64", "u8"))),
    "binary": ("elementwise.cu", tuple((s,) for s in ALL)),
    "scalar": ("elementwise.cu", tuple((s,) for s in ALL)),
    "compare": ("elementwise.cu", tuple((s,) for s in ALL)),
    "compare_scalar": ("elementwise.cu", tuple((s,) for s in ALL)),
    "where": ("elementwise.cu", tuple((s,) for s in ALL)),
    "fill": ("elementwise.cu", tuple((s,) for s in ALL)),
    "copy": ("elementwise.cu", tuple((s, d) for s in ALL for d in ALL)),
    "reduce_rows": ("reduce.cu", tuple((s,) for s in REDUCIBLE)),
    "reduce_cols": ("reduce.cu", tuple((s,) for s in REDUCIBLE)),
    "argmax_rows": ("reduce.cu", tuple((s,) for s in REDUCIBLE)),
    "softmax": ("softmax.cu", tuple((s,) for s in FLOATS)),
    "softmax_backward": ("softmax.cu", tuple((s,) for s in FLOATS)),
    "cross_entropy": ("cross_entropy.cu", tuple((s,) for s in FLOATS)),
    "cross_entropy_targets": ("cross_entropy.cu", (("i64",),)),
    "rmsnorm_forward": ("rmsnorm.cu", tuple((s,) for s in FLOATS)),
    "rmsnorm_backward": ("rmsnorm.cu", tuple((s,) for s in FLOATS)),
    "rmsnorm_weight_finish": ("rmsnorm.cu", tuple((s,) for s in FLOATS)),
    "rope": ("rope.cu", tuple((s,) for s in FLOATS)),
    "index_copy": ("indexing.cu", tuple((s,) for s in ALL)),
    "index_accumulate": ("indexing.cu", (("f32",), ("f64",), ("i64",))),
    "adamw": ("multi_tensor.cu", (("f32", "f32"), ("f64", "f64"), ("f16", "f16"), ("bf16", "bf16"),
                                  ("f16", "f32"), ("bf16", "f32"))),
    "sum_of_squares": ("multi_tensor.cu", tuple((s, "f32") for s in ("f32", "f16", "bf16"))
                       + tuple((s, "f64") for s in FLOATS)),
    "sum_partials": ("multi_tensor.cu", (("f32",), ("f64",))),
    "scale": ("multi_tensor.cu", tuple((s, f) for f in ("f32", "f64") for s in FLOATS)),
    "random_uniform": ("random.cu", tuple((s,) for s in FLOATS)),
    "random_normal": ("random.cu", tuple((s,) for s in FLOATS)),
    "random_int": ("random.cu", (("i64",),)),
}
KERNEL_FILES = tuple(sorted({file for file, _ in KERNELS.values()}))


@dataclass(frozen=True)
class Kernel:
    """One compiled kernel: the .cu file that defines it and its extern "C" name."""

    file: str
    name: str


_SUFFIX_OF: dict = {}  # NumPy dtype -> suffix; np.dtype(...).name is slow next to a launch


def suffix(np_dtype) -> str:
    """The dtype's name in kernel names: float32 -> "f32", bfloat16 -> "bf16"."""
    known = _SUFFIX_OF.get(np_dtype)
    if known is not None:
        return known
    name = np.dtype(np_dtype).name
    if name not in SUFFIX:
        raise TypeError(f"the cuda backend has no kernels for dtype {name}")
    _SUFFIX_OF[np_dtype] = SUFFIX[name]
    return SUFFIX[name]


@lru_cache(maxsize=None)
def kernel(family: str, *suffixes: str, op: str | None = None) -> Kernel:
    """The kernel of `family` instantiated for `suffixes`; TypeError when there is none."""
    file, instances = KERNELS[family]
    if suffixes not in instances:
        what = f"{op} " if op else ""
        raise TypeError(f"cuda: {what}({family}) is not supported for dtype {'/'.join(suffixes)}")
    return Kernel(file, "_".join((family,) + suffixes))


def all_kernel_names() -> list[str]:
    """Every kernel name the backend may launch (the tests check each exists in its .cu file)."""
    return ["_".join((family,) + s) for family, (_, instances) in KERNELS.items() for s in instances]


# ---- op codes (the #defines of elementwise.cu and common.cuh) --------------------------------------
UNARY_OPS = {"neg": 0, "exp": 1, "log": 2, "sqrt": 3, "sin": 5, "cos": 6, "tanh": 7,
             "sigmoid": 8, "relu": 9, "abs": 10, "sign": 11,
             "bitwise_not": 12, "softplus": 13}  # the codes of elementwise.cu's UNARY_* defines
INT_UNARY_OPS = ("neg", "relu", "abs", "sign", "bitwise_not")
BINARY_OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3, "pow": 4, "maximum": 5, "minimum": 6,
              "floor_divide": 7, "remainder": 8, "bitwise_and": 9, "bitwise_or": 10, "bitwise_xor": 11}
INT_BINARY_OPS = ("add", "sub", "mul", "maximum", "minimum", "floor_divide", "remainder",
                  "bitwise_and", "bitwise_or", "bitwise_xor")
INT_ONLY_OPS = ("bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor")  # no float case in the kernels
# the comparisons of deers.backend.COMPARISONS (keyed by the shared names), coded as common.cuh's COMPARE_*
COMPARE_OPS = {f.value: code for code, f in enumerate((BinaryFn.EQ, BinaryFn.NE, BinaryFn.LT, BinaryFn.LE,
                                                        BinaryFn.GT, BinaryFn.GE))}
FLIPPED_COMPARE = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}  # c OP x == x FLIP c
REDUCE_OPS = {"sum": 0, "max": 1, "min": 2}


def unary_code(name: str, sfx: str) -> int:
    """The op code of a unary op, checking the dtype has it (integers: neg relu abs sign bitwise_not;
    floats: all but bitwise_not)."""
    if name not in UNARY_OPS:
        raise ValueError(f"unknown unary op {name!r}")
    if sfx not in FLOATS and name not in INT_UNARY_OPS:
        raise TypeError(f"cuda: unary {name} needs a floating-point dtype, got {sfx}")
    if sfx in FLOATS and name in INT_ONLY_OPS:
        raise TypeError(f"cuda: {name} needs an integer or bool dtype, got {sfx}")
    return UNARY_OPS[name]


def binary_code(name: str, sfx: str) -> int:
    """The op code of an arithmetic binary op (integers: all but div and pow; floats: all but the
    bitwise ones)."""
    if name not in BINARY_OPS:
        raise ValueError(f"unknown binary op {name!r}")
    if sfx not in FLOATS and name not in INT_BINARY_OPS:
        raise TypeError(f"cuda: {name} needs a floating-point dtype, got {sfx}")
    if sfx in FLOATS and name in INT_ONLY_OPS:
        raise TypeError(f"cuda: {name} needs an integer or bool dtype, got {sfx}")
    return BINARY_OPS[name]


# ---- scalars ----------------------------------------------------------------------------------------
def scalar_arg(value, np_dtype):
    """A Python number as the kernel's compute-type argument, rounded to the array's dtype first
    (like the CPU backend's `a.dtype.type(value)`): 0.1 for an f16 array is f16(0.1) as a float32."""
    sfx = suffix(np_dtype)
    if sfx in ("f16", "bf16"):
        return np.float32(np.asarray(value, dtype=np_dtype).astype(np.float32))
    if sfx == "bool":
        return np.int32(1 if value else 0)
    if sfx == "u8":
        return np.int32(int(value) & 0xFF)
    return ACC_NUMPY[sfx](value)


def integer_compare(op: str, value) -> tuple[str, int] | bool:
    """x OP value for integer x, as an integer comparison, or a constant when it is one.

    NumPy compares an int64 array with 2.5 exactly (in float64): x >= 2.5 is x > 2, x == 2.5 is
    never true. Returns (op, int) for the kernel or True/False for "every element".
    """
    value = float(value) if not isinstance(value, (int, np.integer)) else int(value)
    if isinstance(value, int):
        return op, value
    if math.isnan(value):
        return op == "ne"
    if math.isinf(value) or abs(value) >= 2.0 ** 63:
        above = value > 0  # the value is above every int64
        return {"eq": False, "ne": True, "lt": above, "le": above, "gt": not above, "ge": not above}[op]
    if value == math.floor(value):
        return op, int(value)
    floor = math.floor(value)
    return {"eq": False, "ne": True, "lt": ("le", floor), "le": ("le", floor),
            "gt": ("gt", floor), "ge": ("gt", floor)}[op]


# ---- layouts -> meta ----------------------------------------------------------------------------------
def coalesce(shape: tuple[int, ...],
             strides_list: list[tuple[int, ...]]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Drop size-1 dims and merge neighbours that every operand walks contiguously.

    Dims d and d+1 merge when, for each operand, stride[d] == stride[d+1] * shape[d+1]: the pair
    is then one dim of size shape[d] * shape[d+1] and stride stride[d+1]. A transposed operand
    blocks the merge; a broadcast (stride 0) pair of dims merges with itself.
    """
    merged: list[tuple[int, list[int]]] = []
    for d, size in enumerate(shape):
        if size == 1:
            continue
        strides = [st[d] for st in strides_list]
        if merged:
            outer_size, outer_strides = merged[-1]
            if all(o == s * size for o, s in zip(outer_strides, strides)):
                merged[-1] = (outer_size * size, strides)
                continue
        merged.append((size, strides))
    new_shape = tuple(size for size, _ in merged)
    new_strides = [tuple(strides[k] for _, strides in merged) for k in range(len(strides_list))]
    return new_shape, new_strides


def elementwise_meta(shape: tuple[int, ...], operands: list[tuple[int, tuple[int, ...]]]) -> tuple[int, ...]:
    """[ndim, shape, (offset, strides) per operand] after coalescing; ndim 0 = contiguous fast path.

    `operands` are (offset, strides) pairs that all iterate over `shape` in row-major order.
    """
    return _elementwise_meta(tuple(shape), tuple((off, tuple(st)) for off, st in operands))


@lru_cache(maxsize=8192)
def _elementwise_meta(shape: tuple[int, ...], operands: tuple[tuple[int, tuple[int, ...]], ...]) -> tuple[int, ...]:
    merged_shape, merged_strides = coalesce(tuple(shape), [tuple(st) for _, st in operands])
    offsets = [off for off, _ in operands]
    if len(merged_shape) == 0 or (len(merged_shape) == 1 and all(st == (1,) for st in merged_strides)):
        return (0, *offsets)
    meta = [len(merged_shape), *merged_shape]
    for off, strides in zip(offsets, merged_strides):
        meta += [off, *strides]
    return tuple(meta)


@lru_cache(maxsize=8192)
def row_meta(shape: tuple[int, ...], strides: tuple[int, ...], offset: int, n_outer: int) -> tuple[int, ...]:
    """[n_outer, outer shape, outer strides, n_inner, inner shape, inner strides, offset]: rows are
    the first `n_outer` dims, a row's elements the rest (each group coalesced on its own)."""
    outer_shape, (outer_strides,) = coalesce(tuple(shape[:n_outer]), [tuple(strides[:n_outer])])
    inner_shape, (inner_strides,) = coalesce(tuple(shape[n_outer:]), [tuple(strides[n_outer:])])
    if not inner_shape:  # one element per row
        inner_shape, inner_strides = (1,), (0,)
    return (len(outer_shape), *outer_shape, *outer_strides,
            len(inner_shape), *inner_shape, *inner_strides, offset)


@dataclass(frozen=True)
class ReducePlan:
    """How to reduce a layout over some axes: reduce each of `rows` rows of `cols` elements.

    kind "rows": one block per row (per row chunk when split > 1: the host then reduces the
    (rows, split) partial results again); kind "cols": one thread per row.
    """

    kind: str
    rows: int
    cols: int
    split: int
    meta: tuple[int, ...]


@lru_cache(maxsize=8192)
def reduction_plan(shape: tuple[int, ...], strides: tuple[int, ...], offset: int, axes: tuple[int, ...],
                   exact_partials: bool = True) -> ReducePlan:
    """Permute the reduced axes last (kept axes keep their order, so the result is row-major in the
    kept shape) and pick a kernel. `exact_partials`: partial results may be stored in the input
    dtype without losing precision (true for f32/f64/i64 sums and for every max/min)."""
    reduced = sorted(set(axes))
    kept = [d for d in range(len(shape)) if d not in reduced]
    order = kept + reduced
    p_shape = tuple(shape[d] for d in order)
    p_strides = tuple(strides[d] for d in order)
    rows = math.prod(shape[d] for d in kept)
    cols = math.prod(shape[d] for d in reduced)
    meta = row_meta(p_shape, p_strides, offset, len(kept))
    _, (kept_strides,) = coalesce(p_shape[:len(kept)], [p_strides[:len(kept)]])
    _, (red_strides,) = coalesce(p_shape[len(kept):], [p_strides[len(kept):]])
    kept_inner = kept_strides[-1] if kept_strides else 0
    red_inner = red_strides[-1] if red_strides else 1
    if rows >= 128 and (cols <= 32 or (kept_inner == 1 and red_inner != 1)):
        return ReducePlan("cols", rows, cols, 1, meta)
    split = 1
    if exact_partials and rows < 64 and cols >= 65536:
        split = max(1, min(1024, cols // 16384))
    return ReducePlan("rows", rows, cols, split, meta)


def index_meta(shape: tuple[int, ...], dim: int, size_dim: int, read: tuple[int, tuple[int, ...]],
               write: tuple[int, tuple[int, ...]]) -> tuple[int, ...]:
    """[ndim, dim, size_dim, shape, read offset, read strides, write offset, write strides] for the
    indexing kernels (no coalescing: the kernels need the coordinate along `dim`)."""
    return (len(shape), dim, size_dim, *shape, read[0], *read[1], write[0], *write[1])


@lru_cache(maxsize=8192)
def matmul_operand(shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A GEMM operand with its broadcast (stride 0) batch dims shrunk to size 1: the GEMM library
    broadcasts those itself instead of reading the same matrix once per batch entry."""
    batch = len(shape) - 2
    new_shape = tuple(1 if (d < batch and strides[d] == 0) else s for d, s in enumerate(shape))
    return new_shape, tuple(strides)


def dense(shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(offset, strides) of a fresh contiguous buffer of `shape`."""
    return 0, contiguous_strides(tuple(shape))


# ---- launch sizes ---------------------------------------------------------------------------------
MAX_BLOCKS = 65536  # grid-stride loops cover the rest


MULTI_TENSOR_CHUNK = 4096  # CHUNK of multi_tensor.cu: the elements a block takes at a time
MULTI_TENSOR_PARTIALS = 1024  # the most blocks of a sum_of_squares launch (one partial sum each)


def multi_tensor_table(sizes: tuple[int, ...], addresses: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """The int64 table of multi_tensor.cu: n, the n + 1 start offsets of the arrays in their
    concatenation, then for each slot (AdamW: param, grad, m, v) the n device addresses."""
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    return (len(sizes), *starts, *(address for slot in addresses for address in slot))


def multi_tensor_launch(total: int, max_blocks: int = MAX_BLOCKS) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a multi-tensor kernel over `total` elements: a block per chunk, block-stride past max_blocks."""
    return (max(1, min(-(-total // MULTI_TENSOR_CHUNK), max_blocks)),), (256,)


@lru_cache(maxsize=4096)
def elementwise_launch(n: int, block: int = 256) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for a grid-stride loop over n elements."""
    return (max(1, min(-(-n // block), MAX_BLOCKS)),), (block,)


def row_block(cols: int, cap: int) -> int:
    """Threads for one block per row: the smallest power of two >= cols, within [32, cap]."""
    threads = 32
    while threads < cols and threads < cap:
        threads *= 2
    return threads


@lru_cache(maxsize=4096)
def row_launch(rows: int, cols: int, cap: int = 256) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for one block per row (block-stride over rows past MAX_BLOCKS)."""
    return (max(1, min(rows, MAX_BLOCKS)),), (row_block(cols, cap),)


def rmsnorm_backward_launch(rows: int, d: int) -> tuple[int, int, tuple[int], tuple[int]]:
    """(chunk_rows, chunks, grid, block) for the RMSNorm backward: one block per chunk of about 16
    rows (at most 1024 chunks: the finish kernel sums that many partial rows per column)."""
    chunks = max(1, min(1024, -(-rows // 16)))
    chunk_rows = -(-rows // chunks)
    chunks = -(-rows // chunk_rows)
    return chunk_rows, chunks, (chunks,), (row_block(d, 256),)


def philox_key(seed: int) -> tuple[np.uint32, np.uint32]:
    """The two 32-bit Philox key words of a 64-bit seed."""
    seed &= (1 << 64) - 1
    return np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)

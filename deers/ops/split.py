"""Pieces of a tensor along one dim: split, chunk, unbind — views, written from narrow and indexing.

Each piece is a `narrow` (or, for unbind, an integer index) of the input, so no data is copied
and each piece's gradient lands in its window of the input's gradient.
"""
from __future__ import annotations

from ..errors import ShapeError, describe
from ..layout import normalize_dim
from ..tensor import Tensor
from .shape import getitem, narrow, require_dims


def split(x: Tensor, split_size_or_sections: "int | list[int] | tuple[int, ...]", dim: int = 0) -> tuple[Tensor, ...]:
    """Pieces of `split_size` along dim (the last one may be smaller), or of the given sizes."""
    require_dims(x, "split")
    d = normalize_dim(dim, x.ndim, "split")
    n = x.shape[d]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0 and not (size == 0 and n == 0):
            raise ValueError(f"split: split_size must be positive, got {size} for {describe(x)}")
        sizes = [min(size, n - start) for start in range(0, n, size)] if n else [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if any(s < 0 for s in sizes) or sum(sizes) != n:
            raise ShapeError(f"split: sections {sizes} must be >= 0 and sum to {n} (dim {d} of {describe(x)})")
    pieces, start = [], 0
    for size in sizes:
        pieces.append(narrow(x, d, start, size))
        start += size
    return tuple(pieces)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """At most `chunks` pieces of ceil(n / chunks) along dim, like torch.chunk (so maybe fewer)."""
    if not isinstance(chunks, int) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive int, got {chunks!r}")
    require_dims(x, "chunk")
    d = normalize_dim(dim, x.ndim, "chunk")
    n = x.shape[d]
    if n == 0:  # as PyTorch: `chunks` empty pieces
        return tuple(x.narrow(d, 0, 0) for _ in range(chunks))
    return split(x, -(-n // chunks), dim)


def unbind(x: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    """The slices x[..., i, ...] along dim, each without that dim."""
    require_dims(x, "unbind")
    d = normalize_dim(dim, x.ndim, "unbind")
    lead = (slice(None),) * d
    return tuple(getitem(x, lead + (i,)) for i in range(x.shape[d]))

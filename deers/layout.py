"""Layout: how an n-d array is laid over a flat buffer (shape, strides in elements, offset).

A view is a new Layout over the same buffer: permute, broadcast (stride 0), reshape (when the
strides allow it), narrow and strided slicing only compute new metadata here. Strides are in
elements, not bytes, so the same layout works for every backend and dtype.
"""
from __future__ import annotations

from functools import lru_cache
from math import prod

from .errors import ShapeError


@lru_cache(maxsize=4096)
def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides: the last dimension moves fastest. (Memoized: a pure function of the
    shape, and training loops build the same few shapes millions of times.)"""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _is_row_major(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    step = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != step:
            return False
        step *= size
    return True


class Layout:
    """shape, strides (elements) and offset (elements) of a view into a flat buffer.

    A Layout is a value: it is never changed after it is made (a view makes a new one), so its
    element count and contiguity are worked out once.
    """

    __slots__ = ("shape", "strides", "offset", "numel", "_contiguous")

    def __init__(self, shape: tuple[int, ...], strides: tuple[int, ...] | None = None, offset: int = 0):
        self.shape = tuple(shape)
        self.numel = prod(self.shape)
        if strides is None:
            self.strides = contiguous_strides(self.shape)
            self._contiguous = True
        else:
            self.strides = tuple(strides)
            self._contiguous = None  # worked out on the first is_contiguous()
        self.offset = offset

    def __repr__(self) -> str:
        return f"Layout(shape={self.shape}, strides={self.strides}, offset={self.offset})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Layout) and self.shape == other.shape
                and self.strides == other.strides and self.offset == other.offset)

    def __hash__(self) -> int:
        return hash((self.shape, self.strides, self.offset))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def is_contiguous(self) -> bool:
        """Row-major and dense (sizes-1 dims may carry any stride)."""
        if self._contiguous is None:
            self._contiguous = _is_row_major(self.shape, self.strides)
        return self._contiguous

    def span(self) -> int:
        """How many buffer elements from offset the view can touch (max index + 1)."""
        if self.numel == 0:
            return 0
        return 1 + sum((s - 1) * st for s, st in zip(self.shape, self.strides))

    # ---- views -------------------------------------------------------------------------------
    def permute(self, axes: tuple[int, ...]) -> "Layout":
        return Layout(tuple(self.shape[a] for a in axes), tuple(self.strides[a] for a in axes), self.offset)

    def broadcast_to(self, shape: tuple[int, ...]) -> "Layout":
        """Prepend size-1 dims as needed; broadcast dims get stride 0. Caller checks compatibility."""
        extra = len(shape) - self.ndim
        old_shape = (1,) * extra + self.shape
        old_strides = (0,) * extra + self.strides
        strides = tuple(0 if (o == 1 and n != 1) else st for o, n, st in zip(old_shape, shape, old_strides))
        return Layout(tuple(shape), strides, self.offset)

    def narrow(self, dim: int, start: int, length: int) -> "Layout":
        shape = self.shape[:dim] + (length,) + self.shape[dim + 1:]
        return Layout(shape, self.strides, self.offset + start * self.strides[dim])

    def slice(self, dim: int, start: int, length: int, step: int) -> "Layout":
        """Every `step`-th element from `start`, `length` of them (step > 0)."""
        shape = self.shape[:dim] + (length,) + self.shape[dim + 1:]
        strides = self.strides[:dim] + (self.strides[dim] * step,) + self.strides[dim + 1:]
        return Layout(shape, strides, self.offset + start * self.strides[dim])

    def select(self, dim: int, index: int) -> "Layout":
        """Drop dimension `dim`, keeping position `index` (x[..., i, ...])."""
        return Layout(self.shape[:dim] + self.shape[dim + 1:], self.strides[:dim] + self.strides[dim + 1:],
                      self.offset + index * self.strides[dim])

    def unsqueeze(self, dim: int) -> "Layout":
        """Insert a size-1 dimension at `dim` (x[..., None, ...]); its stride is never stepped."""
        stride = self.strides[dim] * self.shape[dim] if dim < self.ndim else 1
        return Layout(self.shape[:dim] + (1,) + self.shape[dim:], self.strides[:dim] + (stride,) + self.strides[dim:],
                      self.offset)

    def reshape(self, shape: tuple[int, ...]) -> "Layout | None":
        """A view with the new shape when the strides allow it, else None (the caller copies).

        Groups old dims that are contiguous with each other (stride[i] == stride[i+1]*size[i+1]);
        each new dim must fall inside one such group, as in PyTorch's `view` rule.
        """
        if self.is_contiguous() or self.numel == 0:
            return Layout(shape, None, self.offset)
        old = [(s, st) for s, st in zip(self.shape, self.strides) if s != 1]
        new_strides: list[int] = []
        oi = 0
        ni = 0
        shape = tuple(shape)
        while ni < len(shape):
            if shape[ni] == 1:
                new_strides.append(0)
                ni += 1
                continue
            if oi >= len(old):
                return None
            # grow an old chunk [oi, oj) and a new chunk [ni, nj) until their sizes match
            old_size, new_size = old[oi][0], shape[ni]
            oj, nj = oi + 1, ni + 1
            while old_size != new_size:
                if old_size < new_size:
                    if oj >= len(old):
                        return None
                    if old[oj - 1][1] != old[oj][1] * old[oj][0]:
                        return None
                    old_size *= old[oj][0]
                    oj += 1
                else:
                    if nj >= len(shape):
                        return None
                    new_size *= shape[nj]
                    nj += 1
            # the old chunk must itself be contiguous inside
            for k in range(oi, oj - 1):
                if old[k][1] != old[k + 1][1] * old[k + 1][0]:
                    return None
            stride = old[oj - 1][1]
            chunk = []
            for size in reversed(shape[ni:nj]):
                chunk.append(stride if size != 1 else 0)
                stride *= size
            new_strides.extend(reversed(chunk))
            oi, ni = oj, nj
        if oi != len(old):
            return None
        return Layout(shape, tuple(new_strides), self.offset)


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """NumPy broadcasting of two shapes, or None when they are incompatible."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def normalize_dim(dim: int, ndim: int, op: str = "") -> int:
    """A dim in [-ndim, ndim) as a non-negative index; IndexError (naming `op`) otherwise. A 0-d
    tensor takes 0 and -1 (both give 0), as in PyTorch: `tensor(2.).sum(-1)`."""
    size = max(ndim, 1)
    if not -size <= dim < size:
        where = f"{op}: " if op else ""
        raise IndexError(f"{where}dimension {dim} is out of range: expected one in [{-size}, {size - 1}]")
    return dim % size


def infer_shape(shape: tuple[int, ...], numel: int, source: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Resolve a single -1 in a reshape target (`source`, the input's shape, for the message)."""
    shape = tuple(shape)
    what = f"shape {source} ({numel} elements)" if source is not None else f"{numel} elements"
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: only one dimension may be -1 when reshaping {what} to {shape}")
    if -1 in shape:
        known = prod(s for s in shape if s != -1)
        if known == 0 or numel % known:
            raise ShapeError(f"reshape: cannot infer the -1 when reshaping {what} to {shape}")
        shape = tuple(numel // known if s == -1 else s for s in shape)
    return shape

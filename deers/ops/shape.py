"""View ops (only the layout changes) and the ops that copy: compact and cat.

A view's backward is the reverse layout change (permute back, sum a broadcast back, reshape
back) or, for slicing, the gradient written into the same view of a zero array.
"""
from __future__ import annotations

import numpy as np

from ..array import NDArray
from ..autograd import Op
from ..dtype import bool_, i64, promote_types
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..layout import Layout, infer_shape, normalize_dim
from ..tensor import Tensor, apply
from .convert import cast


class Permute(Op):
    name = "permute"

    def __init__(self, axes: tuple[int, ...]):
        self.axes = axes

    def forward(self, a):
        return a.permute(self.axes)

    def backward(self, g):  # permute by the inverse permutation
        inverse = [0] * len(self.axes)
        for i, axis in enumerate(self.axes):
            inverse[axis] = i
        return (g.permute(tuple(inverse)),)


def permute(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    if sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
        raise ShapeError(f"permute: {axes} is not a permutation of the dims of {describe(x)}")
    return apply(Permute(tuple(a % x.ndim for a in axes)), x)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    axes = list(range(x.ndim))
    d0, d1 = normalize_dim(dim0, x.ndim, "transpose"), normalize_dim(dim1, x.ndim, "transpose")
    if x.ndim == 0:  # dims 0 and -1 of a 0-d tensor: nothing to swap, as in PyTorch
        return x
    axes[d0], axes[d1] = axes[d1], axes[d0]
    return apply(Permute(tuple(axes)), x)


class BroadcastTo(Op):
    name = "broadcast_to"

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def forward(self, a):
        self.input_shape = a.shape
        return a.broadcast_to(self.shape)

    def backward(self, g):  # each input element was read by many outputs: sum their gradients
        return (g.sum_to_shape(self.input_shape),)


def broadcast_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    shape = tuple(shape)
    if shape == x.shape:
        return x
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if (s == -1 and i >= lead) else s for i, s in enumerate(shape))
    ok = lead >= 0 and all(o == 1 or o == n for o, n in zip(x.shape, shape[lead:]))
    if not ok:
        raise ShapeError(f"broadcast_to: cannot broadcast {describe(x)} to {shape}")
    return apply(BroadcastTo(shape), x)


class Reshape(Op):
    name = "reshape"

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def forward(self, a):
        self.input_shape = a.shape
        return a.reshape(self.shape)

    def backward(self, g):  # reshape back (a copy when g's strides cannot be viewed so)
        return (g.reshape(self.input_shape),)


def reshape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    shape = infer_shape(shape, x.numel(), x.shape)
    if x.numel() != _prod(shape):
        raise ShapeError(f"reshape: cannot reshape {describe(x)} ({x.numel()} elements) to {shape}")
    if shape == x.shape:
        return x
    return apply(Reshape(shape), x)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if x.ndim == 0:  # (1,), as in PyTorch, for dims 0 and -1
        for dim in (start_dim, end_dim):
            normalize_dim(dim, 0, "flatten")
        return reshape(x, (1,))
    s, e = normalize_dim(start_dim, x.ndim, "flatten"), normalize_dim(end_dim, x.ndim, "flatten")
    return reshape(x, x.shape[:s] + (_prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def squeeze(x: Tensor, dim: "int | tuple[int, ...] | None" = None) -> Tensor:
    """x without the size-1 dims among `dim` (an int, a tuple of ints, or None for all); a named
    dim whose size is not 1 stays, as in PyTorch."""
    if dim is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    axes = [normalize_dim(d, x.ndim, "squeeze") for d in dims]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"squeeze: a dim appears more than once in dim={dims} for {describe(x)}")
    if x.ndim == 0:  # a 0-d tensor (dim 0 or -1) stays as it is, as in PyTorch
        return x
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1)))


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    d = normalize_dim(dim, x.ndim + 1, "unsqueeze")
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


class View(Op):
    """A strided sub-view (narrow, slicing, integer indexing) given as a layout function;
    `span` (dim, start, stop) when it is a narrow (deers/view_grads.py reads it to know when
    the gradients of several narrows tile their input)."""

    name = "view"

    def __init__(self, make_layout, span: "tuple[int, int, int] | None" = None):
        self.make_layout = make_layout
        self.span = span

    def forward(self, a):
        self.input = (a.shape, a.dtype, a.device)
        return a.as_layout(self.make_layout(a.layout))

    def backward(self, g):  # elements the view read get g, the others 0: g written into the same view of zeros
        shape, dtype, device = self.input
        grad = NDArray.full(shape, 0, dtype, device)
        grad.as_layout(self.make_layout(grad.layout)).assign(g)
        return (grad,)


def require_dims(x: Tensor, op: str) -> None:
    """ShapeError for a 0-d tensor where PyTorch refuses one too (narrow, split, chunk, unbind)."""
    if x.ndim == 0:
        raise ShapeError(f"{op}: cannot be applied to a 0-d tensor ({describe(x)}), as in PyTorch; "
                         "reshape(1) gives it one dim")


def narrow(x: Tensor, dim: int, start: "int | Tensor", length: int) -> Tensor:
    """The view x[..., start:start + length, ...] along `dim`; start may be a 0-d integer tensor (as
    in PyTorch) and counts from the end when negative."""
    require_dims(x, "narrow")
    if isinstance(start, Tensor):
        if start.ndim != 0 or start.dtype.is_float or start.dtype is bool_:
            raise DTypeError(f"narrow: start must be an int or a 0-d integer tensor, got {describe(start)}")
        start = int(start.item())
    d = normalize_dim(dim, x.ndim, "narrow")
    if start < 0:
        start += x.shape[d]
    if start < 0 or length < 0 or start + length > x.shape[d]:
        raise IndexError(f"narrow: [{start}, {start + length}) is out of range for dim {d} of {describe(x)}")
    return apply(View(lambda layout: layout.narrow(d, start, length), (d, start, start + length)), x)


def getitem(x: Tensor, key) -> Tensor:
    """x[key] like PyTorch. Ints, slices, None, True/False and Ellipsis give one strided view (True
    adds an axis of size 1, False one of size 0, as in PyTorch); a negative-step slice is the
    positive-step view flipped (a copy; PyTorch refuses them, NumPy allows them). Tensor indices
    (i64, lists of ints, bool masks over one or more dims) pick with index_select: negative entries
    count from the end, like x[-1] (resolved here, since index_select itself never wraps); a k-dim
    bool mask stands for the k index tensors of its true positions; several tensor indices
    broadcast together and are placed by PyTorch's rule (deers/ops/advanced_index.py)."""
    if not isinstance(key, tuple):
        key = (key,)
    key = tuple(_index_tensor(k, x) if isinstance(k, (list, np.ndarray)) else k for k in key)
    key = tuple(bool(k.item()) if isinstance(k, Tensor) and k.ndim == 0 and k.dtype.name == "bool" else k
                for k in key)  # a 0-d bool tensor acts as True/False
    if len(key) == 1 and isinstance(key[0], Tensor) and key[0].dtype.name == "bool":
        return _select_mask(x, key[0])
    n_real = sum(k.ndim if isinstance(k, Tensor) and k.dtype.name == "bool" else 1
                 for k in key if k is not None and k is not Ellipsis and not _is_bool(k))
    if n_real > x.ndim:
        raise IndexError(f"getitem: too many indices ({n_real}) for {describe(x)}")
    if any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - n_real) + key[i + 1:]
    else:
        key = key + (slice(None),) * (x.ndim - n_real)
    # Each step acts on the layout as it is after the steps before it: at output position `out_dim`.
    steps = []  # (kind, out_dim, args) with kind "slice", "select" or "newaxis"
    picked = []  # (i64 positions, out_dim, range already checked) per tensor index
    flips = []  # output dims of negative-step slices: the view takes them forwards, then they are flipped
    dim = out_dim = 0  # the input dim the next key reads; the output dims made so far
    for k in key:
        if k is None or _is_bool(k):
            steps.append(("newaxis", out_dim, ()))
            if _is_bool(k) and not k:  # x[False]: a new axis of size 0
                steps.append(("slice", out_dim, (0, 0, 1)))
            out_dim += 1
            continue
        size = x.shape[dim]
        if isinstance(k, Tensor) and k.dtype.name == "bool" and k.ndim > 1:  # a mask over k.ndim dims
            if k.shape != x.shape[dim:dim + k.ndim]:
                raise IndexError(f"getitem: bool mask {describe(k)} does not match dims {dim}..{dim + k.ndim - 1} "
                                 f"of {describe(x)}")
            for coordinates in np.nonzero(k.numpy()):  # one i64 index per masked dim, in range by construction
                picked.append((_index_tensor(coordinates, x), out_dim, True))
                out_dim += 1
            dim += k.ndim
            continue
        if isinstance(k, Tensor):
            picked.append((_positions(k, size, dim, x), out_dim, k.dtype.name == "bool"))
            out_dim += 1
        elif isinstance(k, slice):
            start, stop, step = k.indices(size)
            count = len(range(start, stop, step))
            if step < 0:  # the same elements forwards from the last one picked, then flipped
                start, step = (start + (count - 1) * step if count else 0), -step
                flips.append(out_dim)
            steps.append(("slice", out_dim, (start, count, step)))
            out_dim += 1
        elif isinstance(k, int) or hasattr(k, "__index__"):
            k = int(k)
            if not -size <= k < size:
                raise IndexError(f"getitem: index {k} is out of range for dim {dim} of {describe(x)}")
            steps.append(("select", out_dim, (k % size,)))
        else:
            raise TypeError(f"getitem: unsupported index {k!r} for {describe(x)}")
        dim += 1

    def make_layout(layout: Layout) -> Layout:
        for kind, d, args in steps:
            if kind == "slice":
                layout = layout.slice(d, *args)
            elif kind == "select":
                layout = layout.select(d, *args)
            else:
                layout = layout.unsqueeze(d)
        return layout

    out = apply(View(make_layout), x) if steps else x
    if flips:
        from .flip import flip

        out = flip(out, flips)
    if picked:
        from .advanced_index import adjacent, take

        out = take(x, out, picked, adjacent(key))
    return out


def _is_bool(k) -> bool:
    """A Python (or NumPy) bool used as an index: PyTorch adds an axis, it does not pick row 0/1."""
    return isinstance(k, (bool, np.bool_))


def _positions(index: Tensor, size: int, dim: int, x: Tensor) -> Tensor:
    """A tensor index for dim `dim` (of `size`) as i64 positions in [0, size) where it can be:
    negatives count from the end (x[tensor([-1])] is the last row, as in PyTorch); a 1-D bool mask
    becomes the positions where it is true. Out-of-range entries stay so and raise in index_select."""
    from .compare import where

    if index.dtype.name == "bool":
        if index.ndim != 1 or index.shape[0] != size:
            raise IndexError(f"getitem: bool mask {describe(index)} at dim {dim} of {describe(x)} must be 1-D "
                             f"of length {size}")
        return _index_tensor(np.flatnonzero(index.numpy()), x)
    if index.dtype is not i64:
        raise IndexError(f"getitem: tensors used as indices must be i64 or bool, got {describe(index)} "
                         f"for {describe(x)}")
    if index.device != x.device:
        raise IndexError(f"getitem: index {describe(index)} is not on the device of {describe(x)}")
    return where(index < 0, index + size, index)


def _index_tensor(values: "list | np.ndarray", x: Tensor) -> Tensor:
    """A list or NumPy array of ints (or bools) as an index tensor on x's device."""
    from ..creation import tensor

    return tensor(values, device=x.device)


def _select_mask(x: Tensor, mask: Tensor) -> Tensor:
    """x[mask] for a bool mask over x's leading dims: the selected elements (or rows), in order.
    The output size depends on the mask's values, so they are read on the host, like PyTorch."""
    from ..creation import tensor
    from .indexing import index_select

    if mask.shape != x.shape[:mask.ndim]:
        raise IndexError(f"getitem: mask {describe(mask)} does not match the leading dims of {describe(x)}")
    positions = tensor(np.flatnonzero(mask.numpy()), device=x.device)  # (k,) i64
    return index_select(reshape(x, (-1,) + x.shape[mask.ndim:]), 0, positions)  # (k, *rest)


class Compact(Op):
    name = "compact"

    def forward(self, a):
        return a.compact()

    def backward(self, g):  # a copy: identity
        return (g,)


def compact(x: Tensor) -> Tensor:
    if x.is_contiguous():
        return x
    return apply(Compact(), x)


class Cat(Op):
    name = "cat"

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, *arrays):
        self.sizes = [a.shape[self.dim] for a in arrays]
        first = arrays[0]
        shape = first.shape[:self.dim] + (sum(self.sizes),) + first.shape[self.dim + 1:]
        out = NDArray.empty(shape, first.dtype, first.device)
        start = 0
        for a, size in zip(arrays, self.sizes):
            out.narrow(self.dim, start, size).assign(a)
            start += size
        return out

    def backward(self, g):  # each input gets its slice of the gradient
        grads, start = [], 0
        for size in self.sizes:
            grads.append(g.narrow(self.dim, start, size))
            start += size
        return tuple(grads)


def cat(tensors: "list[Tensor]", dim: int = 0) -> Tensor:
    """Concatenate tensors along an existing dim."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: needs at least one tensor")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"cat: expected Tensors, got {type(t).__name__} at position {i}")
        if t.ndim == 0:
            raise ShapeError(f"cat: zero-dimensional tensor at position {i} ({describe(t)}) cannot be "
                             f"concatenated; use deers.stack, or reshape it to (1,)")
    dtype = tensors[0].dtype
    for t in tensors[1:]:  # mixed dtypes promote, as in torch.cat (the skipped empty tensors count too)
        dtype = promote_types(dtype, t.dtype)
    if any(t.ndim != 1 for t in tensors):  # PyTorch's legacy rule: an empty 1-d tensor (0,) is skipped
        tensors = [t for t in tensors if t.shape != (0,)]
    first = tensors[0]
    d = normalize_dim(dim, first.ndim, "cat")
    for t in tensors[1:]:
        if t.device != first.device:
            raise DeviceError(f"cat: tensors on different devices: {describe(first)} and {describe(t)}")
        if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != d):
            raise ShapeError(f"cat: shapes differ outside dim {d}: {describe(first)} and {describe(t)}")
    return apply(Cat(d), *[cast(t, dtype) for t in tensors])


def stack(tensors: "list[Tensor]", dim: int = 0) -> Tensor:
    """Join tensors along a new dim."""
    return cat([unsqueeze(t, dim) for t in tensors], dim)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n

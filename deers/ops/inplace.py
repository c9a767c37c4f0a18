"""In-place updates with PyTorch's rules: add_, sub_, mul_, div_, floor_divide_, remainder_,
bitwise_and_/_or_/_xor_, zero_, fill_, copy_, clamp_, augmented assignment (`w -= lr * g`,
`x //= 2`, `mask &= other`) and item assignment (`x[idx] = value`).

An in-place op computes its result with the ordinary out-of-place op (so promotion, broadcasting
and every backend work as usual) and writes it into the tensor's own view with `NDArray.assign`:
the Tensor (a Var too) keeps its identity and its buffer, and a view writes through to its base.

Two things would silently give wrong gradients, so they raise instead:
- an in-place op while gradients are recorded, on a tensor that requires grad or with an operand
  that does (in-place ops are not recorded; a leaf such as a Var is updated under `no_grad()`);
- a backward that reads an array changed in place after a recorded op saved it. Each buffer has
  a version counter (PyTorch's idea, kept small): every in-place write bumps it, `apply` records
  the versions of the arrays an op saved, and `Tensor.backward` checks them before it runs.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..array import NDArray
from ..autograd import grad_mode, no_grad, topo_sort
from ..dtype import can_cast, i64
from ..errors import DeviceError, DTypeError, InPlaceError, ShapeError, describe
from ..layout import broadcast_shapes
from ..tensor import Tensor
from . import binary, bitwise
from .operands import check_number, number_for
from .shape import getitem

# ---- the version counter: storage id -> number of in-place writes --------------------------------
_versions: dict[int, int] = {}


def version(array: NDArray) -> int:
    """How many in-place writes the buffer under `array` has had (0 if none)."""
    return _versions.get(array.storage_id(), 0)


def bump(array: NDArray) -> None:
    """Count one in-place write into the buffer under `array` (its entry goes with the buffer)."""
    key = array.storage_id()
    if key not in _versions:
        weakref.finalize(array.buffer, _versions.pop, key, None)
    _versions[key] = _versions.get(key, 0) + 1


def _saved_arrays(op):
    """The NDArrays an op keeps on itself for its backward (attributes, or inside tuples/lists)."""
    for value in vars(op).values():
        if isinstance(value, NDArray):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from (v for v in value if isinstance(v, NDArray))


def writes_seen() -> bool:
    """Whether a live buffer has been written in place. Until one has, every array an op saves is
    at version 0, so `apply` need not snapshot anything (the common case costs one dict check)."""
    return bool(_versions)


def snapshot(op) -> None:
    """Remember the versions of what a recorded op saved (apply calls this after forward once
    `writes_seen()`; an op without a snapshot saved everything at version 0)."""
    get = _versions.get
    op.saved_versions = [(a, get(a.storage_id(), 0)) for a in _saved_arrays(op)]


def check_graph(root: Tensor) -> None:
    """Raise if an array saved by an op of root's graph was changed in place since it was saved."""
    if not _versions:  # nothing was ever written in place: nothing to check
        return
    for node in topo_sort(root):
        saved = getattr(node._op, "saved_versions", None)
        if saved is None:  # recorded before any in-place write: all it saved was at version 0
            saved = [(a, 0) for a in _saved_arrays(node._op)] if node._op is not None else ()
        for array, seen in saved:
            if version(array) != seen:
                raise InPlaceError(
                    f"backward: an array that {node._op.name} saved for its gradient ({describe(array)}) was "
                    f"changed by an in-place operation after it was saved (version {version(array)}, saved at "
                    f"{seen}); do the in-place update after backward, or use an out-of-place op (x = x + y)")


# ---- the checks every in-place write makes -------------------------------------------------------
def check_target(name: str, x: Tensor, *operands) -> None:
    """Refuse in-place writes that would need the graph to record them (see the module docstring)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if grad_mode.enabled:
        if x.requires_grad and x.is_leaf:
            raise InPlaceError(f"{name}: a leaf tensor that requires grad ({describe(x)}, e.g. a Var) cannot be "
                               "changed in place while gradients are recorded; update it inside "
                               "`with deers.no_grad():`")
        if x.requires_grad or any(isinstance(o, Tensor) and o.requires_grad for o in operands):
            raise InPlaceError(f"{name}: in-place ops are not recorded in the graph, and {describe(x)} or an "
                               "operand requires grad; write it out of place (x = x + y) or under no_grad()")
    strides, shape = x.data.layout.strides, x.shape
    if any(st == 0 and n > 1 for st, n in zip(strides, shape)):
        raise ShapeError(f"{name}: {describe(x)} is a broadcast view (several elements share one memory "
                         "location), so it cannot be written in place; .compact() it first")


def write(name: str, x: Tensor, result: Tensor, same_category: bool = True) -> Tensor:
    """Store `result` (broadcast to x's shape) into x's buffer, in place; returns x.

    same_category: the result of arithmetic may not go down a category (no float into an integer
    tensor: PyTorch's "result type Float can't be cast to Long"); copies and fills may cast."""
    if result.device != x.device:
        raise DeviceError(f"{name}: value {describe(result)} is not on the device of {describe(x)}")
    if same_category and not can_cast(result.dtype, x.dtype):
        raise DTypeError(f"{name}: the result type {result.dtype.name} cannot be written in place into "
                         f"{describe(x)}; use an out-of-place op or cast first")
    if broadcast_shapes(x.shape, result.shape) != x.shape:
        raise ShapeError(f"{name}: a result of {describe(result)} does not fit in place into {describe(x)}")
    src = result.data
    if src.storage_id() == x.data.storage_id():  # copy_ from an overlapping view: read it all first
        src = src.copy()
    x.data.assign(src)
    bump(x.data)
    return x


def inplace(name: str, x: Tensor, fn, *operands) -> Tensor:
    """x = fn(x, *operands), written into x's own buffer (add_, mul_, clamp_, ...)."""
    check_target(name, x, *operands)
    with no_grad():
        result = fn(x, *operands)
    return write(name, x, result)


# ---- the methods -----------------------------------------------------------------------------------
def add_(x: Tensor, other, alpha=1) -> Tensor:
    return inplace("add_", x, lambda a, b: binary.add(a, b if alpha == 1 else b * alpha), other)


def sub_(x: Tensor, other, alpha=1) -> Tensor:
    return inplace("sub_", x, lambda a, b: binary.sub(a, b if alpha == 1 else b * alpha), other)


def mul_(x: Tensor, other) -> Tensor:
    return inplace("mul_", x, binary.mul, other)


def div_(x: Tensor, other) -> Tensor:
    return inplace("div_", x, binary.div, other)


def floor_divide_(x: Tensor, other) -> Tensor:
    return inplace("floor_divide_", x, binary.floor_divide, other)


def remainder_(x: Tensor, other) -> Tensor:
    return inplace("remainder_", x, binary.remainder, other)


def bitwise_and_(x: Tensor, other) -> Tensor:
    return inplace("bitwise_and_", x, bitwise.bitwise_and, other)


def bitwise_or_(x: Tensor, other) -> Tensor:
    return inplace("bitwise_or_", x, bitwise.bitwise_or, other)


def bitwise_xor_(x: Tensor, other) -> Tensor:
    return inplace("bitwise_xor_", x, bitwise.bitwise_xor, other)


def clamp_(x: Tensor, min=None, max=None) -> Tensor:
    return inplace("clamp_", x, binary.clamp, min, max)


def fill_(x: Tensor, value) -> Tensor:
    """Every element = value (a number or a one-element tensor), cast to x's dtype."""
    check_target("fill_", x, value)
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ShapeError(f"fill_: the value must have one element, got {describe(value)}")
        return write("fill_", x, value.reshape(()), same_category=False)
    check_number("fill_", value)
    return write("fill_", x, Tensor(NDArray.full((), number_for("fill_", value, x.dtype), x.dtype, x.device)),
                 same_category=False)


def zero_(x: Tensor) -> Tensor:
    return fill_(x, 0)


def copy_(x: Tensor, src: Tensor) -> Tensor:
    """x's values = src's (broadcast to x's shape, cast to x's dtype; src may be on another device,
    an explicit move like PyTorch's copy_)."""
    check_target("copy_", x, src)
    if not isinstance(src, Tensor):
        raise TypeError(f"copy_: expected a Tensor source, got {type(src).__name__}")
    if src.device != x.device:
        src = src.detach().to_device(x.device)
    return write("copy_", x, src, same_category=False)


def setitem(x: Tensor, key, value) -> None:
    """x[key] = value for every key getitem accepts; value is a number or a tensor that broadcasts
    to x[key]'s shape, cast to x's dtype like PyTorch.

    A key that getitem answers with a view (ints, slices, None, Ellipsis) writes into that view.
    A key with a tensor index or a bool mask picks copies, so the positions are found by indexing
    a tensor of flat positions 0..numel-1 with the same key, and the values are scattered there.
    """
    check_target("setitem", x, value)
    with no_grad():
        view = getitem(x, key)
        if not isinstance(value, Tensor):
            value = Tensor(NDArray.full((), value, x.dtype, x.device))
        elif value.device != x.device:
            raise DeviceError(f"setitem: value {describe(value)} is not on the device of {describe(x)}")
        if broadcast_shapes(view.shape, value.shape) != view.shape:
            raise ShapeError(f"setitem: a value of {describe(value)} does not fit x[key] of {describe(view)}")
        if view.data.storage_id() == x.data.storage_id():  # a view of x: write into it
            write("setitem", view, value, same_category=False)
            return
        _scatter_into(x, getitem(_positions_like(x), key), value)


def _positions_like(x: Tensor) -> Tensor:
    """The flat position of every element of x, shaped like x (i64 on x's device)."""
    ids = NDArray.from_numpy(np.arange(x.numel(), dtype=np.int64), i64, x.device)
    return Tensor(ids.reshape(x.shape))


def _scatter_into(x: Tensor, positions: Tensor, value: Tensor) -> None:
    """x.flat[positions] = value (broadcast to positions' shape), in place. Positions listed twice
    would leave it undefined which value wins (PyTorch), so they raise instead (one host read)."""
    pos = positions.data.reshape((positions.numel(),))  # (n,)
    n, numel = pos.numel, x.numel()
    if n == 0:  # the key picks nothing
        return
    vals = value.data.cast(x.dtype).broadcast_to(positions.shape).reshape((n,))  # (n,)
    ones = NDArray.full((n,), 1, i64, x.device)
    if ones.index_add_into((numel,), 0, pos).reduce("max", (0,), keepdim=False).item() > 1:
        raise IndexError(f"setitem: the index picks some elements of {describe(x)} more than once; which value "
                         "would win is undefined, so give each position once")
    order = NDArray.from_numpy(np.arange(1, n + 1, dtype=np.int64), i64, x.device)
    slot = order.index_add_into((numel,), 0, pos)  # 1 + the value's index at each written position, else 0
    zero = NDArray.full((), 0, i64, x.device)
    taken = slot.binary("gt", zero)  # (numel,) bool
    picked = vals.index_select(0, taken.where(slot - 1, zero))  # (numel,) the value meant for each position
    flat = x.data.reshape((numel,))
    x.data.assign(taken.where(picked, flat).reshape(x.shape))
    bump(x.data)


def augmented(name: str, x: Tensor, other) -> Tensor:
    """`x += other` and friends. In place (x keeps its identity: `w -= lr * g` under no_grad updates
    the Var), except when gradients are recorded through x or other: then, as the value PyTorch
    gives, the out-of-place result (x = x + other), since Deers does not record in-place ops. A leaf
    that requires grad under grad mode raises, as in PyTorch."""
    needs_graph = grad_mode.enabled and (x.requires_grad or (isinstance(other, Tensor) and other.requires_grad))
    out_of_place, in_place = AUGMENTED[name]
    if needs_graph and not (x.is_leaf and x.requires_grad):
        return out_of_place(x, other)
    return in_place(x, other)


AUGMENTED = {  # the in-place method of each augmented assignment, and its out-of-place op
    "add_": (binary.add, add_), "sub_": (binary.sub, sub_), "mul_": (binary.mul, mul_), "div_": (binary.div, div_),
    "floor_divide_": (binary.floor_divide, floor_divide_), "remainder_": (binary.remainder, remainder_),
    "bitwise_and_": (bitwise.bitwise_and, bitwise_and_), "bitwise_or_": (bitwise.bitwise_or, bitwise_or_),
    "bitwise_xor_": (bitwise.bitwise_xor, bitwise_xor_),
}

"""Getting operands ready for the element-wise ops: dtype and device checks, broadcasting, and
Python numbers as 0-d constants.

A Python number meets a tensor as a 0-d constant of the tensor's dtype on its device, so
`x + 2.0` is the Add op with a second input that broadcasts and never requires grad; no op has a
scalar special case. Promotion follows PyTorch: an int or bool tensor meeting a non-integer
number becomes the default float type, a bool tensor in arithmetic becomes i64, and a float
tensor keeps its dtype (f16 * 2.0 stays f16).

Only operands that require grad are broadcast as recorded BroadcastTo views (whose backward sums
the gradient back, deers/ops/shape.py); the others are broadcast inside the forward by NDArray,
which costs nothing because no gradient flows to them.
"""
from __future__ import annotations

from numbers import Integral, Number

from ..array import NDArray
from ..dtype import bool_, default_float, i64
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..layout import broadcast_shapes
from ..tensor import Tensor
from .convert import cast
from .shape import broadcast_to


def require_float(name: str, t: Tensor) -> None:
    if not t.dtype.is_float:
        raise DTypeError(f"{name}: needs a floating-point tensor, got {describe(t)}; "
                         f"cast with .to_dtype(deers.f32)")


def check_number(name: str, value) -> None:
    if not isinstance(value, Number):
        raise TypeError(f"{name}: expected a Tensor or a Python number, got {type(value).__name__}")


def constant(value, like: Tensor) -> Tensor:
    """`value` as a 0-d array of like's dtype on like's device, seen broadcast to like's shape
    (stride 0: one element in memory; never requires grad)."""
    return Tensor(NDArray.full((), value, like.dtype, like.device).broadcast_to(like.shape))


def promote(t: Tensor, value) -> Tensor:
    """t in the dtype it has when it meets the Python number `value` in arithmetic (see above)."""
    if t.dtype.is_float:
        return t
    if not isinstance(value, Integral):
        return cast(t, default_float())
    return cast(t, i64) if t.dtype is bool_ else t


def grad_broadcast(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """t broadcast to `shape` as a recorded view when a gradient must flow back through it."""
    return broadcast_to(t, shape) if t.requires_grad and t.shape != shape else t


def broadcast_pair(name: str, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Check the devices, dtypes and shapes of two tensors; those that need a gradient come back
    broadcast to the common shape (the others broadcast in the op's forward)."""
    if not isinstance(b, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(b).__name__}")
    if a.device != b.device:
        raise DeviceError(f"{name}: operands are on different devices: {describe(a)} and {describe(b)}")
    if a.dtype is not b.dtype:
        raise DTypeError(f"{name}: mixed dtypes {describe(a)} and {describe(b)}; cast one with .to_dtype()")
    if a.shape == b.shape:
        return a, b
    shape = broadcast_shapes(a.shape, b.shape)
    if shape is None:
        raise ShapeError(f"{name}: shapes cannot broadcast: {describe(a)} and {describe(b)}")
    return grad_broadcast(a, shape), grad_broadcast(b, shape)


def operands(name: str, a: Tensor, b) -> tuple[Tensor, Tensor]:
    """(a, b) for a binary op: a Python number b becomes a constant (promoting a); tensors are checked."""
    if isinstance(b, Tensor):
        return broadcast_pair(name, a, b)
    check_number(name, b)
    a = promote(a, b)
    return a, constant(b, a)

"""Getting operands ready for the element-wise ops: type promotion, device checks, broadcasting,
and Python numbers as 0-d constants.

Type promotion is PyTorch's, in one function, `result_type`, that every binary op, comparison,
`where` and `clamp` calls. The pairwise table is `deers.dtype.promote_types` (bool < integers <
floats; f16 with bf16 gives f32). On top of it PyTorch ranks operands in three tiers: tensors
with dims, 0-d tensors, then Python numbers. A lower tier decides the result only when it is of a
higher category (bool < int < float) than every higher tier, so `f16_tensor * 2.0` stays f16,
`f16_tensor * tensor(2.0)` stays f16, but `i64_tensor * 0.5` becomes the default float (f32) and
`i64_tensor * tensor(0.5, dtype=f64)` becomes f64. A Python float counts as the default float
(f32), an int as i64, a bool as bool.

A Python number then meets the tensor as a 0-d constant of the result dtype on its device, so
`x + 2.0` is the Add op with a second input that broadcasts and never requires grad; no op has a
scalar special case. A tensor whose dtype changes is cast by a recorded Cast op, so the gradient
flows back in its own dtype (an f16 operand of an f16 + f32 sum gets an f16 gradient).

Only operands that require grad are broadcast as recorded BroadcastTo views (whose backward sums
the gradient back, deers/ops/shape.py); the others are broadcast inside the forward by NDArray,
which costs nothing because no gradient flows to them.
"""
from __future__ import annotations

import math
from numbers import Integral, Number

import numpy as np

from ..array import NDArray
from ..dtype import DType, bool_, category, default_float, i64, promote_types
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
    if isinstance(value, Tensor) or not isinstance(value, Number) or isinstance(value, complex):
        raise TypeError(f"{name}: expected a Tensor or a Python number, got {type(value).__name__}")


def number_dtype(value) -> DType:
    """The dtype a Python (or NumPy) number counts as in promotion: bool, i64 or the default float."""
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, Integral):
        return i64
    return default_float()


def _combine(higher: "DType | None", lower: "DType | None") -> "DType | None":
    """PyTorch's combine_categories: the lower tier counts only when it is of a higher category."""
    if higher is None:
        return lower
    if lower is None or category(higher) >= category(lower):
        return higher
    if higher is bool_ or lower.is_float:  # a higher category below: its own dtype wins
        return promote_types(higher, lower)
    return higher


def result_type(*operands) -> DType:
    """The dtype an element-wise op computes in for these operands (Tensors and Python numbers),
    like torch.result_type (see the module docstring for the three tiers)."""
    tiers: list[DType | None] = [None, None, None]  # tensors with dims, 0-d tensors, numbers
    for x in operands:
        if isinstance(x, Tensor):
            tier, dtype = (0 if x.ndim else 1), x.dtype
        else:
            tier, dtype = 2, number_dtype(x)
        tiers[tier] = dtype if tiers[tier] is None else promote_types(tiers[tier], dtype)
    result = _combine(tiers[0], _combine(tiers[1], tiers[2]))
    if result is None:
        raise TypeError("result_type: needs at least one operand")
    return result


def constant(value, like: Tensor) -> Tensor:
    """`value` as a 0-d array of like's dtype on like's device, seen broadcast to like's shape
    (stride 0: one element in memory; never requires grad)."""
    return Tensor(NDArray.full((), _fit(value, like.dtype), like.dtype, like.device).broadcast_to(like.shape))


def _fit(value, dtype: DType):
    """An integer number in a narrower integer dtype wraps around like PyTorch (`u8 + 1000` adds
    1000 mod 256); one that does not fit in i64 at all raises."""
    if dtype.is_float or dtype is bool_ or not isinstance(value, Integral) or isinstance(value, bool):
        return value
    info = np.iinfo(dtype.numpy)
    if info.min <= value <= info.max:
        return value
    if dtype is i64:
        raise DTypeError(f"the Python integer {value} does not fit in i64")
    return int(value) % (int(info.max) + 1) + int(info.min)  # two's complement wrap (unsigned: min = 0)


def number_for(name: str, value, dtype: DType):
    """A Python number as it is stored into a tensor of `dtype` by fill_ and masked_fill, as PyTorch
    casts: a float into an integer dtype rounds toward zero (2.7 -> 2), an integer wraps into a
    narrower one, anything into bool is its truth; a nan or inf into an integer dtype raises."""
    if dtype is bool_:
        return bool(value)
    if dtype.is_float:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DTypeError(f"{name}: {value} does not fit the integer dtype {dtype.name}")
        value = math.trunc(value)
    return _fit(int(value), dtype)


def as_operand(value, dtype: DType, like: Tensor) -> Tensor:
    """A Tensor operand cast to `dtype`, or a Python number as a constant of `dtype` on like's device."""
    if isinstance(value, Tensor):
        return cast(value, dtype)
    return Tensor(NDArray.full((), _fit(value, dtype), dtype, like.device))


def grad_broadcast(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """t broadcast to `shape` as a recorded view when a gradient must flow back through it."""
    return broadcast_to(t, shape) if t.requires_grad and t.shape != shape else t


def check_devices(name: str, *tensors: Tensor) -> None:
    first = tensors[0]
    for t in tensors[1:]:
        if t.device != first.device:
            raise DeviceError(f"{name}: operands are on different devices: {describe(first)} and {describe(t)}")


def broadcast_pair(name: str, a: Tensor, b: Tensor, dtype: "DType | None" = None) -> tuple[Tensor, Tensor]:
    """Check the devices and shapes of two tensors and cast both to their promoted dtype (or to
    `dtype`); those that need a gradient come back broadcast to the common shape (the others
    broadcast in the op's forward)."""
    if not isinstance(b, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(b).__name__}")
    check_devices(name, a, b)
    shape = broadcast_shapes(a.shape, b.shape)
    if shape is None:
        raise ShapeError(f"{name}: shapes cannot broadcast: {describe(a)} and {describe(b)}")
    dtype = dtype or result_type(a, b)
    a, b = cast(a, dtype), cast(b, dtype)
    if a.shape == b.shape:
        return a, b
    return grad_broadcast(a, shape), grad_broadcast(b, shape)


def operands(name: str, a: Tensor, b, float_result: bool = False) -> tuple[Tensor, Tensor]:
    """(a, b) for a binary op in their promoted dtype (float_result: at least the default float,
    as true division needs); a Python number b becomes a constant of that dtype."""
    if not isinstance(b, Tensor):
        check_number(name, b)
    dtype = result_type(a, b)
    if float_result and not dtype.is_float:
        dtype = default_float()
    if isinstance(b, Tensor):
        return broadcast_pair(name, a, b, dtype)
    a = cast(a, dtype)
    return a, constant(b, a)

"""Masks: comparisons make bool tensors, and where and masked_fill select by them (&, |, ^, ~
combine masks: bitwise.py).

A comparison has no gradient (`differentiable = False`: `apply` never records it). Against a
Python number it runs the backend's scalar comparison, which compares exactly across types (an
i64 tensor against 2.5, a u8 tensor against 300), where a 0-d constant would first have to be
rounded to some dtype.
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..backend import COMPARISONS, BinaryFn
from ..dtype import bool_
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..layout import broadcast_shapes
from ..tensor import Tensor, apply
from .operands import as_operand, broadcast_pair, check_number, grad_broadcast, number_for, result_type


class Compare(Op):
    """a OP b -> bool, for OP in COMPARISONS; b an array input or, when `number` is given, that number."""

    differentiable = False

    def __init__(self, fn: BinaryFn, number=None):
        self.fn, self.number = fn, number

    @property
    def name(self) -> str:
        return self.fn.value

    def forward(self, a, b=None):
        return a.scalar(self.fn, self.number) if b is None else a.binary(self.fn, b)


def compare(fn: BinaryFn, a: Tensor, b) -> Tensor:
    """Element-wise comparison `fn` (eq, ne, lt, le, gt, ge) with a Tensor or a Python number."""
    if fn not in COMPARISONS:
        raise ValueError(f"compare: {fn!r} is not a comparison")
    if isinstance(b, Tensor):
        return apply(Compare(fn), *broadcast_pair(fn.value, a.detach(), b.detach()))
    check_number(fn.value, b)
    return apply(Compare(fn, b), a)


class Where(Op):
    name = "where"

    def forward(self, c, a, b):
        self.c = c
        return c.where(a, b)

    def backward(self, g):  # the gradient flows to whichever side was picked
        zero = NDArray.full((), 0, g.dtype, g.device)
        ga = self.c.where(g, zero) if self.needs(1) else None
        gb = self.c.where(zero, g) if self.needs(2) else None
        return None, ga, gb


def where(condition: Tensor, a, b) -> Tensor:
    """condition ? a : b, element-wise, with broadcasting; either side may be a Python number, and
    both are promoted to one dtype like a binary op (`where(mask, 0.5, int_tensor)` is f32)."""
    if not isinstance(condition, Tensor):
        raise TypeError(f"where: the condition must be a Tensor, got {type(condition).__name__}")
    for side in (a, b):
        if not isinstance(side, Tensor):
            check_number("where", side)
    dtype = result_type(a, b)
    ref = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else condition
    a, b = as_operand(a, dtype, ref), as_operand(b, dtype, ref)
    if condition.dtype is not bool_:
        condition = compare(BinaryFn.NE, condition, 0)
    a, b = broadcast_pair("where", a, b)
    shape = broadcast_shapes(condition.shape, broadcast_shapes(a.shape, b.shape))
    if shape is None:
        raise ShapeError(f"where: condition {describe(condition)} does not broadcast with {describe(a)}")
    if condition.device != a.device:
        raise DeviceError(f"where: condition {describe(condition)} is not on the device of {describe(a)}")
    return apply(Where(), condition, grad_broadcast(a, shape), grad_broadcast(b, shape))


def masked_fill(x: Tensor, mask: Tensor, value) -> Tensor:
    """x with `value` wherever the bool `mask` is true (mask broadcasts against x), like PyTorch:
    the value is a Python number or a 0-d tensor, cast to x's dtype (an i64 tensor filled with 0.5
    holds 0); a 0-d tensor value receives the gradient of the filled places."""
    if not isinstance(mask, Tensor) or mask.dtype is not bool_:
        got = describe(mask) if isinstance(mask, Tensor) else type(mask).__name__
        raise DTypeError(f"masked_fill: mask must be a bool tensor, got {got}; compare first (mask != 0)")
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ShapeError(f"masked_fill: value must be a Python number or a 0-d tensor, got {describe(value)}; "
                             "for one value per element use where(mask, values, x)")
        if value.device != x.device:
            raise DeviceError(f"masked_fill: value {describe(value)} is not on the device of {describe(x)}")
    else:
        check_number("masked_fill", value)
        value = number_for("masked_fill", value, x.dtype)  # as PyTorch casts: 0.5 -> 0 in an i64 tensor
    return where(mask, as_operand(value, x.dtype, x), x)

"""Casts and device moves: the values stay, their type or their place changes."""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..device import Device
from ..dtype import DType
from ..tensor import Tensor, apply


class Cast(Op):
    """x in another dtype; differentiable only into a float type (an integer result has no gradient)."""

    name = "to_dtype"

    def __init__(self, dtype: DType):
        self.dtype = dtype
        self.differentiable = dtype.is_float

    def forward(self, a):
        self.source = a.dtype
        return a.cast(self.dtype)

    def backward(self, g):  # identity, cast back to the input's dtype
        return (g.cast(self.source),)


def cast(x: Tensor, dtype: DType) -> Tensor:
    if x.dtype is dtype:
        return x
    return apply(Cast(dtype), x)


class ToDevice(Op):
    name = "to_device"

    def __init__(self, device: Device):
        self.device = device

    def forward(self, a):
        self.source = a.device
        return _move(a, self.device)

    def backward(self, g):  # identity, moved back
        return (_move(g, self.source),)


def _move(a: NDArray, device: Device) -> NDArray:
    if a.device == device:
        return a
    return NDArray.from_numpy(a.numpy(), a.dtype, device)


def to_device(x: Tensor, device: Device) -> Tensor:
    if x.device == device:
        return x
    return apply(ToDevice(device), x)

"""NDArray: a backend buffer seen through a Layout, with a dtype and a device.

This is the strided array layer under Tensor. It knows nothing of autograd: views only make a
new Layout over the same buffer, and every computation is one backend primitive (see
`deers.backend`). Op classes (deers/ops) write both their forward and backward with it.
"""
from __future__ import annotations

from math import prod

import numpy as np

from .backend import backend_for
from .device import Device
from .dtype import DType, bool_, i64
from .layout import Layout, broadcast_shapes

COMPARISONS = frozenset(("eq", "ne", "lt", "le", "gt", "ge"))  # binary ops whose result is a bool mask


class NDArray:
    """A strided n-d view (`layout`) of a flat backend `buffer` holding `dtype` elements on `device`."""

    __slots__ = ("buffer", "layout", "dtype", "device", "backend")

    def __init__(self, buffer, layout: Layout, dtype: DType, device: Device, backend=None):
        self.buffer = buffer
        self.layout = layout
        self.dtype = dtype
        self.device = device
        self.backend = backend if backend is not None else backend_for(device)

    # ---- construction ----------------------------------------------------------------------
    @staticmethod
    def from_numpy(array: np.ndarray, dtype: DType, device: Device) -> "NDArray":
        backend = backend_for(device)
        array = np.asarray(array)
        return NDArray(backend.from_numpy(array, dtype), Layout(array.shape), dtype, device, backend)

    @staticmethod
    def full(shape: tuple[int, ...], value, dtype: DType, device: Device) -> "NDArray":
        backend = backend_for(device)
        return NDArray(backend.full(prod(shape), value, dtype), Layout(shape), dtype, device, backend)

    def _new(self, buffer, shape: tuple[int, ...], dtype: DType | None = None) -> "NDArray":
        """Wrap a fresh contiguous result buffer from this array's backend."""
        return NDArray(buffer, Layout(shape), dtype or self.dtype, self.device, self.backend)

    def _with_layout(self, layout: Layout) -> "NDArray":
        return NDArray(self.buffer, layout, self.dtype, self.device, self.backend)

    # ---- metadata ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.shape

    @property
    def ndim(self) -> int:
        return len(self.layout.shape)

    @property
    def numel(self) -> int:
        return self.layout.numel

    def is_contiguous(self) -> bool:
        return self.layout.is_contiguous()

    def numpy(self) -> np.ndarray:
        return self.backend.to_numpy(self.buffer, self.layout)

    def __repr__(self) -> str:
        return f"NDArray({self.numpy()!r}, dtype={self.dtype.name}, device={self.device})"

    # ---- views: new layout, same buffer --------------------------------------------------------
    def permute(self, axes: tuple[int, ...]) -> "NDArray":
        return self._with_layout(self.layout.permute(axes))

    def transpose(self, d0: int, d1: int) -> "NDArray":
        axes = list(range(self.ndim))
        axes[d0], axes[d1] = axes[d1], axes[d0]
        return self.permute(tuple(axes))

    def broadcast_to(self, shape: tuple[int, ...]) -> "NDArray":
        if tuple(shape) == self.shape:
            return self
        return self._with_layout(self.layout.broadcast_to(tuple(shape)))

    def narrow(self, dim: int, start: int, length: int) -> "NDArray":
        return self._with_layout(self.layout.narrow(dim, start, length))

    def strided_slice(self, dim: int, start: int, length: int, step: int) -> "NDArray":
        return self._with_layout(self.layout.slice(dim, start, length, step))

    def select(self, dim: int, index: int) -> "NDArray":
        return self._with_layout(self.layout.select(dim, index))

    def reshape(self, shape: tuple[int, ...]) -> "NDArray":
        """A view when the strides allow it, otherwise a compact copy."""
        shape = tuple(shape)
        if shape == self.shape:
            return self
        layout = self.layout.reshape(shape)
        if layout is None:
            return self.compact()._with_layout(Layout(shape))
        return self._with_layout(layout)

    def compact(self) -> "NDArray":
        """The same object when already contiguous, otherwise one contiguous copy."""
        return self if self.layout.is_contiguous() else self.copy()

    def is_dense(self) -> bool:
        """Contiguous, starting at offset 0 and covering the whole buffer (a fresh result's shape)."""
        return self.layout.offset == 0 and self.backend_size() == self.numel and self.layout.is_contiguous()

    def dense(self) -> "NDArray":
        """This array when it is dense, otherwise a copy that is (a buffer of its own, exactly numel)."""
        return self if self.is_dense() else self.copy()

    def copy(self) -> "NDArray":
        """A dense copy with a buffer of its own."""
        out = self.backend.empty(self.numel, self.dtype)
        self.backend.copy(self.buffer, self.layout, out, Layout(self.shape))
        return self._new(out, self.shape)

    def contiguous_buffer(self):
        """A flat buffer holding exactly this array's elements in row-major order."""
        return self.dense().buffer

    def backend_size(self) -> int:
        return int(self.buffer.size)

    # ---- computation (each one backend primitive) ---------------------------------------------
    def unary(self, name: str) -> "NDArray":
        return self._new(self.backend.unary(name, self.buffer, self.layout), self.shape,
                         bool_ if name == "logical_not" else None)

    def binary(self, name: str, other: "NDArray") -> "NDArray":
        a, b = self, other
        if a.shape != b.shape:
            shape = broadcast_shapes(a.shape, b.shape)
            a, b = a.broadcast_to(shape), b.broadcast_to(shape)
        res = self.backend.binary(name, a.buffer, a.layout, b.buffer, b.layout)
        return self._new(res, a.shape, bool_ if name in COMPARISONS else None)

    def scalar(self, name: str, value, reverse: bool = False) -> "NDArray":
        res = self.backend.scalar(name, self.buffer, self.layout, value, reverse)
        return self._new(res, self.shape, bool_ if name in COMPARISONS else None)

    def where(self, a: "NDArray", b: "NDArray") -> "NDArray":
        """self (a boolean mask) ? a : b, broadcasting the three."""
        shape = broadcast_shapes(broadcast_shapes(self.shape, a.shape), b.shape)
        c, a, b = self.broadcast_to(shape), a.broadcast_to(shape), b.broadcast_to(shape)
        return a._new(self.backend.where(c.buffer, c.layout, a.buffer, a.layout, b.buffer, b.layout), shape)

    def cast(self, dtype: DType) -> "NDArray":
        if dtype is self.dtype:
            return self
        return self._new(self.backend.cast(self.buffer, self.layout, dtype), self.shape, dtype)

    def reduce(self, name: str, axes: tuple[int, ...], keepdim: bool) -> "NDArray":
        """sum/max/min/argmax over `axes`; sums of integers or bools and argmax give i64."""
        res = self.backend.reduce(name, self.buffer, self.layout, axes)
        if keepdim:
            shape = tuple(1 if i in axes else s for i, s in enumerate(self.shape))
        else:
            shape = tuple(s for i, s in enumerate(self.shape) if i not in axes)
        integral = name == "argmax" or (name == "sum" and not self.dtype.is_float)
        return self._new(res, shape, i64 if integral else None)

    def sum(self, axes: tuple[int, ...] | None = None, keepdim: bool = False) -> "NDArray":
        return self.reduce("sum", tuple(range(self.ndim)) if axes is None else axes, keepdim)

    def sum_to_shape(self, shape: tuple[int, ...]) -> "NDArray":
        """Undo a broadcast: sum over the dims that `shape` was broadcast along."""
        if self.shape == tuple(shape):
            return self
        extra = self.ndim - len(shape)
        axes = tuple(range(extra)) + tuple(
            i + extra for i, s in enumerate(shape) if s == 1 and self.shape[i + extra] != 1)
        return self.reduce("sum", axes, keepdim=True).reshape(tuple(shape))

    def matmul(self, other: "NDArray") -> "NDArray":
        res = self.backend.matmul(self.buffer, self.layout, other.buffer, other.layout)
        return self._new(res, self.shape[:-1] + (other.shape[-1],))

    # ---- operators (used by backward formulas) -------------------------------------------------
    def _op(self, name: str, other, reverse: bool = False) -> "NDArray":
        if isinstance(other, NDArray):
            return other.binary(name, self) if reverse else self.binary(name, other)
        return self.scalar(name, other, reverse)

    def __add__(self, other): return self._op("add", other)
    def __radd__(self, other): return self._op("add", other, True)
    def __sub__(self, other): return self._op("sub", other)
    def __rsub__(self, other): return self._op("sub", other, True)
    def __mul__(self, other): return self._op("mul", other)
    def __rmul__(self, other): return self._op("mul", other, True)
    def __truediv__(self, other): return self._op("div", other)
    def __rtruediv__(self, other): return self._op("div", other, True)
    def __pow__(self, other): return self._op("pow", other)
    def __neg__(self): return self.unary("neg")
    def __matmul__(self, other): return self.matmul(other)
    def __gt__(self, other): return self._op("gt", other)
    def __lt__(self, other): return self._op("lt", other)
    def __ge__(self, other): return self._op("ge", other)
    def __le__(self, other): return self._op("le", other)

    def exp(self): return self.unary("exp")
    def log(self): return self.unary("log")
    def sqrt(self): return self.unary("sqrt")
    def sin(self): return self.unary("sin")
    def cos(self): return self.unary("cos")
    def tanh(self): return self.unary("tanh")
    def sigmoid(self): return self.unary("sigmoid")
    def sign(self): return self.unary("sign")

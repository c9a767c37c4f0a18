"""NDArray: a backend buffer seen through a Layout, with a dtype and a device.

This is the strided array layer under Tensor, and the only door to the backends: nothing above
this file calls a backend or touches a buffer. It knows nothing of autograd: views only make a
new Layout over the same buffer, and every computation is one backend primitive (see
`deers.backend`, whose numbered items the methods below name). Op classes (deers/ops,
deers/fused), optimizers and collectives write everything they compute with these methods.
"""
from __future__ import annotations

from math import prod
from typing import Any, Sequence

import numpy as np

from .backend import COMPARISONS, backend_for, loaded_backends, seed_all
from .device import Device, as_device
from .dtype import DType, bool_, f32, f64, i64
from .errors import DeviceError, ShapeError
from .layout import Layout, broadcast_shapes
from .memory import track as _track_memory
from .memory import untrack as _untrack_memory


class NDArray:
    """A strided n-d view (`layout`) of a flat backend `buffer` holding `dtype` elements on `device`."""

    __slots__ = ("buffer", "layout", "dtype", "device", "backend")

    def __init__(self, buffer, layout: Layout, dtype: DType, device: Device, backend=None):
        self.buffer = buffer
        self.layout = layout
        self.dtype = dtype
        self.device = device
        self.backend = backend if backend is not None else backend_for(device)

    # ---- construction (items 1-3) ------------------------------------------------------------
    @staticmethod
    def from_numpy(array: np.ndarray, dtype: DType, device: "Device | str") -> "NDArray":
        """A copy of a host array on `device` (item 2)."""
        device = as_device(device)
        backend = backend_for(device)
        array = np.asarray(array)
        return NDArray(backend.from_numpy(array, dtype), Layout(array.shape), dtype, device, backend)._counted()

    @classmethod
    def full(cls, shape: tuple[int, ...], value, dtype: DType, device: "Device | str") -> "NDArray":
        """A dense array of `shape` filled with `value` (item 1)."""
        device = as_device(device)
        backend = backend_for(device)
        return cls(backend.full(prod(shape), value, dtype), Layout(tuple(shape)), dtype, device, backend)._counted()

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: DType, device: "Device | str") -> "NDArray":
        """A dense array of `shape` with unspecified values, to be written with `assign` (item 1)."""
        device = as_device(device)
        backend = backend_for(device)
        return NDArray(backend.empty(prod(shape), dtype), Layout(tuple(shape)), dtype, device, backend)._counted()

    @staticmethod
    def random(kind: str, shape: tuple[int, ...], dtype: DType, device: "Device | str") -> "NDArray":
        """Samples from the device's generator (item 3): kind "randn" (standard normal) or "rand" ([0, 1))."""
        device = as_device(device)
        backend = backend_for(device)
        sample = {"randn": backend.randn, "rand": backend.rand}[kind]
        return NDArray(sample(prod(shape), dtype), Layout(tuple(shape)), dtype, device, backend)._counted()

    @staticmethod
    def randint(shape: tuple[int, ...], low: int, high: int, device: "Device | str") -> "NDArray":
        """Uniform i64 integers in [low, high) from the device's generator (item 3)."""
        device = as_device(device)
        backend = backend_for(device)
        return NDArray(backend.randint(prod(shape), low, high), Layout(tuple(shape)), i64, device, backend)._counted()

    def _new(self, buffer, shape: tuple[int, ...], dtype: DType | None = None) -> "NDArray":
        """Wrap a fresh contiguous result buffer from this array's backend."""
        return NDArray(buffer, Layout(shape), dtype or self.dtype, self.device, self.backend)._counted()

    def _counted(self) -> "NDArray":
        """Count this array's fresh buffer in deers.memory until it is freed (views are never counted)."""
        _track_memory(self.buffer, int(self.buffer.size) * self.dtype.itemsize, self.device)
        return self

    def as_layout(self, layout: Layout) -> "NDArray":
        """The same buffer seen through another layout (shape ops make it; it must fit the buffer)."""
        return NDArray(self.buffer, layout, self.dtype, self.device, self.backend)

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (item 21; timing, profiling)."""
        self.backend.synchronize()

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
        """A fresh host copy (waits for the device)."""
        return self.backend.to_numpy(self.buffer, self.layout)

    def item(self) -> Any:
        """The single element as a Python number (a host read)."""
        if self.numel != 1:
            raise ValueError(f"item(): needs exactly one element, got shape {self.shape}")
        return self.numpy().reshape(-1)[0].item()

    def __repr__(self) -> str:
        return f"NDArray({self.numpy()!r}, dtype={self.dtype.name}, device={self.device})"

    # ---- views: new layout, same buffer --------------------------------------------------------
    def permute(self, axes: tuple[int, ...]) -> "NDArray":
        return self.as_layout(self.layout.permute(axes))

    def transpose(self, d0: int, d1: int) -> "NDArray":
        axes = list(range(self.ndim))
        axes[d0], axes[d1] = axes[d1], axes[d0]
        return self.permute(tuple(axes))

    def broadcast_to(self, shape: tuple[int, ...]) -> "NDArray":
        if tuple(shape) == self.shape:
            return self
        return self.as_layout(self.layout.broadcast_to(tuple(shape)))

    def narrow(self, dim: int, start: int, length: int) -> "NDArray":
        return self.as_layout(self.layout.narrow(dim, start, length))

    def strided_slice(self, dim: int, start: int, length: int, step: int) -> "NDArray":
        return self.as_layout(self.layout.slice(dim, start, length, step))

    def select(self, dim: int, index: int) -> "NDArray":
        return self.as_layout(self.layout.select(dim, index))

    def reshape(self, shape: tuple[int, ...]) -> "NDArray":
        """A view when the strides allow it, otherwise a compact copy."""
        shape = tuple(shape)
        if shape == self.shape:
            return self
        layout = self.layout.reshape(shape)
        if layout is None:
            return self.compact().as_layout(Layout(shape))
        return self.as_layout(layout)

    def compact(self) -> "NDArray":
        """The same object when already contiguous, otherwise one contiguous copy."""
        return self if self.layout.is_contiguous() else self.copy()

    def is_dense(self) -> bool:
        """Contiguous, starting at offset 0 and covering the whole buffer (a fresh result's shape)."""
        return self.layout.offset == 0 and self.buffer_size() == self.numel and self.layout.is_contiguous()

    def storage_id(self) -> int:
        """An id of the underlying buffer: equal for views of one buffer (writes show through)."""
        return id(self.buffer)

    def dense(self) -> "NDArray":
        """This array when it is dense, otherwise a copy that is (a buffer of its own, exactly numel)."""
        return self if self.is_dense() else self.copy()

    def copy(self) -> "NDArray":
        """A dense copy with a buffer of its own."""
        out = self.backend.empty(self.numel, self.dtype)
        self.backend.copy(self.buffer, self.layout, out, Layout(self.shape))
        return self._new(out, self.shape)

    def assign(self, src: "NDArray") -> "NDArray":
        """Write `src` (broadcast to this shape) into this view, in place (item 13); returns self."""
        if src.device != self.device:
            raise ValueError(f"assign: source on {src.device}, destination on {self.device}")
        src = src.cast(self.dtype).broadcast_to(self.shape)
        self.backend.copy(src.buffer, src.layout, self.buffer, self.layout)
        return self

    def buffer_size(self) -> int:
        """Elements in the underlying buffer (>= numel for a view)."""
        return int(self.buffer.size)

    def flat_region(self):
        """For transports (MPI, NCCL): a 1-D backend buffer that aliases this array's elements, or
        None when they are not one contiguous run (then compact, transfer, and `assign` back)."""
        if not self.layout.is_contiguous():
            return None
        start = self.layout.offset
        return self.buffer[start:start + self.numel]

    def write_region(self, region) -> None:
        """Write a flat buffer of numel elements (as `flat_region` gives, of a compact copy) into this view."""
        self.backend.copy(region, Layout(self.shape), self.buffer, self.layout)

    # ---- computation (each one backend primitive) ---------------------------------------------
    def unary(self, name: str) -> "NDArray":
        return self._new(self.backend.unary(name, self.buffer, self.layout), self.shape)

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
        """sum/max/min/argmax over `axes`; sums of integers or bools and argmax give i64.

        A 0-d array has one element and nothing to reduce over (dim 0 or -1 is accepted, as in
        PyTorch); max/min/argmax of an empty axis have no identity and raise ShapeError."""
        name = getattr(name, "value", name)  # a ReduceFn or its string
        if self.ndim == 0:
            axes = ()
            if name.startswith("arg"):  # the one element is at index 0
                return NDArray.full((), 0, i64, self.device)
        elif name != "sum" and any(self.shape[a] == 0 for a in axes):
            raise ShapeError(f"{name}: cannot reduce over an empty dim: axes {tuple(axes)} of shape {self.shape} "
                             f"{self.dtype.name} {self.device} (max/min of nothing is undefined; use a dim with "
                             f"elements)")
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

    def addmm_(self, a: "NDArray", b: "NDArray") -> "NDArray":
        """self += a @ b in place (item 10 with acc: on a GPU the GEMM adds into self, beta = 1);
        self must be dense and of the product's shape, dtype and device."""
        shape = a.shape[:-1] + (b.shape[-1],)
        if self.shape != shape or not self.is_dense() or self.dtype is not a.dtype or self.device != a.device:
            raise ShapeError(f"addmm_: the accumulator must be dense {shape} {a.dtype} on {a.device}, got "
                             f"{self.shape} {self.dtype} on {self.device} ({self.layout})")
        self.backend.matmul(a.buffer, a.layout, b.buffer, b.layout, self.buffer)
        return self

    def add_(self, other: "NDArray") -> "NDArray":
        """self += other in place (item 5 with out= aliasing self); self must be dense."""
        return self._update("add", other)

    def mul_(self, other: "NDArray") -> "NDArray":
        """self *= other in place (other broadcasts, e.g. a 0-d factor); any view of self's buffer."""
        return self._update("mul", other)

    def _update(self, name: str, other: "NDArray") -> "NDArray":
        other = other.cast(self.dtype).broadcast_to(self.shape)
        if not self.is_dense():  # a view: compute, then write back through the view
            return self.assign(self.binary(name, other))
        self.backend.binary(name, self.buffer, self.layout, other.buffer, other.layout, out=self.buffer)
        return self

    # ---- indexing (items 11-12) ------------------------------------------------------------------
    def index_select(self, dim: int, index: "NDArray") -> "NDArray":
        """Slices of self at `index` (1-D i64) along `dim`; IndexError out of range."""
        res = self.backend.index_select(self.buffer, self.layout, dim, index.buffer, index.layout)
        return self._new(res, self.shape[:dim] + index.shape + self.shape[dim + 1:])

    def index_add_into(self, shape: tuple[int, ...], dim: int, index: "NDArray") -> "NDArray":
        """zeros(shape) with self's slices added at `index` along `dim` (index_select's backward)."""
        res = self.backend.index_add(tuple(shape), self.dtype, dim, index.buffer, index.layout, self.buffer,
                                     self.layout)
        return self._new(res, tuple(shape))

    def gather(self, dim: int, index: "NDArray") -> "NDArray":
        """out[i][j] = self[index[i][j]][j] for dim 0 (torch.gather); IndexError out of range."""
        return self._new(self.backend.gather(self.buffer, self.layout, dim, index.buffer, index.layout),
                         index.shape)

    def scatter_add_into(self, shape: tuple[int, ...], dim: int, index: "NDArray") -> "NDArray":
        """zeros(shape).scatter_add_(dim, index, self) (gather's backward)."""
        res = self.backend.scatter_add(tuple(shape), self.dtype, dim, index.buffer, index.layout, self.buffer,
                                       self.layout)
        return self._new(res, tuple(shape))

    # ---- fused primitives (items 14-20, 22) -------------------------------------------------------
    def softmax(self, log: bool = False, causal: bool = False, scale: float = 1.0) -> "NDArray":
        """(log-)softmax of scale * self over the last dim; causal: (..., T, S) scores where row t
        sees s <= t + S - T."""
        return self._new(self.backend.softmax(self.buffer, self.layout, log, causal, scale), self.shape)

    def softmax_backward(self, g: "NDArray", log: bool = False, causal: bool = False,
                         scale: float = 1.0) -> "NDArray":
        """For y = self = (log-)softmax(scale * x) (causal: the masked one): dx from dy = g."""
        return self._new(self.backend.softmax_backward(self.buffer, self.layout, g.buffer, g.layout, log, causal,
                                                       scale), self.shape)

    def cross_entropy(self, targets: "NDArray", ignore_index: int, label_smoothing: float = 0.0,
                      overwrite_logits: bool = False) -> tuple["NDArray", "NDArray", "NDArray"]:
        """For logits self (N, C) and targets (N,): (loss_sum 0-d, count 0-d i64, dlogits / count (N, C)).

        All three stay on the device (no host read). With overwrite_logits the gradient may reuse
        this array's buffer: the logits must not be read afterwards.
        """
        loss_sum, count, grad = self.backend.cross_entropy(self.buffer, self.layout, targets.buffer, targets.layout,
                                                           ignore_index, label_smoothing, overwrite_logits)
        if overwrite_logits:  # the gradient may be these logits' memory under a new name: count it once
            _untrack_memory(self.buffer)
        acc = f64 if self.dtype is f64 else f32
        return self._new(loss_sum, (), acc), self._new(count, (), i64), self._new(grad, self.shape)

    def rms_norm(self, weight: "NDArray", eps: float) -> tuple["NDArray", "NDArray"]:
        """(y, rstd): y = self / sqrt(mean(self^2, last dim) + eps) * weight; rstd per row (rows,)."""
        y, rstd = self.backend.rmsnorm(self.buffer, self.layout, weight.buffer, weight.layout, eps)
        rows = self.numel // max(self.shape[-1], 1)
        return self._new(y, self.shape), self._new(rstd, (rows,), f32 if self.dtype.is_half else self.dtype)

    def rms_norm_backward(self, x: "NDArray", weight: "NDArray", rstd: "NDArray") -> tuple["NDArray", "NDArray"]:
        """For g = self, the incoming gradient of y = rms_norm(x, weight): (dx, dweight)."""
        gx, gw = self.backend.rmsnorm_backward(self.buffer, self.layout, x.buffer, x.layout, weight.buffer,
                                               weight.layout, rstd.buffer, rstd.layout)
        return self._new(gx, x.shape), self._new(gw, weight.shape)

    def rope(self, cos: "NDArray", sin: "NDArray", inverse: bool = False) -> "NDArray":
        """self (..., T, hd) rotated by the tables cos, sin (T, hd); inverse: the transpose (backward)."""
        return self._new(self.backend.rope(self.buffer, self.layout, cos.buffer, cos.layout, sin.buffer, sin.layout,
                                           inverse), self.shape)

    def causal_attention(self, k: "NDArray", v: "NDArray", scale: float) -> tuple["NDArray", "NDArray"]:
        """For q = self (..., T, hd), k (..., S, hd), v (..., S, hv) of one batch shape, S >= T:
        (y = p v (..., T, hv), p (..., T, S)) with p = causal_softmax(scale q k^T), row t seeing s <= t + S - T."""
        y, p = self.backend.causal_attention(self.buffer, self.layout, k.buffer, k.layout, v.buffer, v.layout, scale)
        return self._new(y, self.shape[:-1] + v.shape[-1:]), self._new(p, self.shape[:-1] + k.shape[-2:-1])

    def causal_attention_backward(self, k: "NDArray", v: "NDArray", p: "NDArray", dy: "NDArray",
                                  scale: float) -> tuple["NDArray", "NDArray", "NDArray"]:
        """For q = self and the forward's k, v and p, the gradients (dq, dk, dv) from dy = dL/dy."""
        grads = self.backend.causal_attention_backward(self.buffer, self.layout, k.buffer, k.layout, v.buffer,
                                                       v.layout, p.buffer, p.layout, dy.buffer, dy.layout, scale)
        return tuple(self._new(g, a.shape) for g, a in zip(grads, (self, k, v)))

    @staticmethod
    def adamw_steps_(params: "Sequence[NDArray]", grads: "Sequence[NDArray]", exp_avgs: "Sequence[NDArray]",
                     exp_avg_sqs: "Sequence[NDArray]", lr: float, beta1: float, beta2: float, eps: float,
                     weight_decay: float, step: int) -> None:
        """One AdamW update of many dense parameters and their moments, in place: one backend call
        per (device, parameter dtype, moment dtype) group, so a GPU does each group in one launch."""
        groups: dict = {}  # (device, param dtype, moment dtype) -> indices into params
        for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            if not (p.device == g.device == m.device == v.device):
                raise DeviceError(f"adamw_step: parameter on {p.device}, grad on {g.device}, moments on "
                                  f"{m.device} and {v.device}")
            if p.shape != g.shape or p.shape != m.shape or p.shape != v.shape:
                raise ShapeError(f"adamw_step: parameter {p.shape}, grad {g.shape}, moments {m.shape} and {v.shape}")
            if g.dtype is not p.dtype:  # a gradient kept in another dtype: update in the parameter's
                g = g.cast(p.dtype)
            groups.setdefault((p.device, p.dtype, m.dtype), []).append((p, g, m, v))
        for members in groups.values():
            backend = members[0][0].backend
            pairs = [[(a.buffer, a.layout) for a in column] for column in zip(*members)]
            backend.adamw_step(*pairs, lr, beta1, beta2, eps, weight_decay, step)

    @staticmethod
    def sum_of_squares(arrays: "Sequence[NDArray]") -> "NDArray":
        """sum(x^2) over every element of every array (all on one device), as a 0-d f32 array (f64
        when one of them is f64): the squared global norm of gradient clipping, in one call."""
        first = arrays[0]
        for a in arrays:
            if a.device != first.device:
                raise DeviceError(f"sum_of_squares: arrays on {first.device} and {a.device}")
        acc = f64 if any(a.dtype is f64 for a in arrays) else f32
        return first._new(first.backend.sum_of_squares([(a.buffer, a.layout) for a in arrays]), (), acc)

    @staticmethod
    def scale_(arrays: "Sequence[NDArray]", factor: "NDArray") -> None:
        """Multiply every (dense) array in place by the 0-d f32/f64 `factor`, on the device, in one call."""
        for a in arrays:
            if a.device != factor.device:
                raise DeviceError(f"scale_: array on {a.device}, factor on {factor.device}")
            if not a.is_dense():
                raise ValueError(f"scale_: arrays must be dense (own their whole buffer), got {a.layout}")
        if factor.numel != 1 or factor.dtype not in (f32, f64):
            raise ValueError(f"scale_: factor must be one f32/f64 number, got {factor.shape} {factor.dtype}")
        if arrays:
            factor.backend.scale_([(a.buffer, a.layout) for a in arrays], factor.dense().buffer)

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


# ---- the generators of every device ------------------------------------------------------------
def seed_all_devices(seed: int) -> None:
    """Seed every device's generator, including devices first used later."""
    backend_for("cpu")
    seed_all(seed)


def rng_states() -> dict:
    """Each used device's generator state, keyed by its unique backend name ("cpu", "cuda:0", ...)."""
    return {backend.name: backend.get_rng_state() for backend in loaded_backends()}


def set_rng_states(states: dict) -> None:
    """Restore generator states saved by `rng_states` (a state saved under the old shared name
    "cuda" belongs to cuda:0)."""
    for backend in loaded_backends():
        state = states.get(backend.name)
        if state is None and backend.name == "cuda:0":
            state = states.get("cuda")
        if state is not None:
            backend.set_rng_state(state)

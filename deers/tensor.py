"""Tensor: an NDArray plus its place in the autograd graph. Var: a trainable leaf tensor.

Every method here is a thin, documented entry to a function in `deers.ops`, where each op is one
`Op` subclass with its forward and backward. `apply` is the single place where an op runs and,
when gradients are needed, is recorded in the graph.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .array import NDArray
from .autograd import Grads, Op, UnitGrad, grad_mode
from .backend import BinaryFn
from .device import Device, as_device
from .dtype import DType, as_dtype, is_dtype_name
from .errors import DeviceError, DTypeError, ShapeError, describe
from .hooks import RemovableHandle, add_hook
from .profiler import profiling


def apply(op: Op, *inputs: "Tensor") -> "Tensor":
    """Run `op` on the inputs' arrays; record it in the graph when any input requires grad.

    An op that says `differentiable = False` (comparisons, argmax, casts to an integer type) is
    never recorded, so its output never requires grad.
    """
    needs = tuple([t.requires_grad for t in inputs])
    record = grad_mode.enabled and True in needs and op.differentiable
    op.needs_input_grad = needs if record else (False,) * len(inputs)  # forward saves only what backward needs
    arrays = [t.data for t in inputs]
    session = profiling.session  # None unless inside deers.profiler.profile(): the only cost when not profiling
    out = op.forward(*arrays) if session is None else session.run("forward", op, op.forward, arrays)
    if record:
        if _inplace.writes_seen():  # before any in-place write every saved array is at version 0
            _inplace.snapshot(op)  # the versions of what it saved: backward refuses if they change in place
        return Tensor(out, requires_grad=True, _op=op, _inputs=inputs)
    return Tensor(out)


class Tensor:
    """An n-d array on a device that can record the operations applied to it."""

    __slots__ = ("data", "requires_grad", "_op", "_inputs", "_grad_hooks", "__weakref__")
    __array_ufunc__ = None  # so `numpy_value * tensor` defers to Tensor.__rmul__ instead of looping

    def __init__(self, data: "NDArray | Tensor", requires_grad: bool = False, _op: Op | None = None,
                 _inputs: tuple = ()):
        if isinstance(data, Tensor):
            data = data.data
        if not isinstance(data, NDArray):
            raise TypeError(f"Tensor() wraps an NDArray or a Tensor; use deers.tensor(...) for {type(data).__name__}")
        if requires_grad and not data.dtype.is_float:
            raise DTypeError(f"only floating-point tensors can require grad, got {data.dtype.name}")
        self.data = data
        self.requires_grad = requires_grad
        self._op = _op
        self._inputs = _inputs
        self._grad_hooks: dict | None = None  # register_hook's functions, by handle key

    # ---- metadata ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.layout.shape

    @property
    def dtype(self) -> DType:
        return self.data.dtype

    @property
    def device(self) -> Device:
        return self.data.device

    @property
    def ndim(self) -> int:
        return len(self.data.layout.shape)

    def numel(self) -> int:
        return self.data.numel

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        """The sub-tensors along dim 0 (views), like PyTorch; a 0-d tensor is not iterable."""
        if not self.shape:
            raise TypeError(f"iteration over a 0-d tensor ({describe(self)}); use .item()")
        return (self[i] for i in range(self.shape[0]))

    def is_contiguous(self) -> bool:
        return self.data.is_contiguous()

    @property
    def is_leaf(self) -> bool:
        return self._op is None

    # ---- host access ---------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A NumPy copy of the values (moves from the device to the host)."""
        return self.data.numpy()

    def item(self) -> float | int | bool:
        if self.numel() != 1:
            raise ShapeError(f"item: needs a tensor with one element, got {describe(self)}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """np.asarray(tensor): a host copy of the values."""
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        return bool(self.item())

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({np.array2string(self.numpy(), separator=', ')}, dtype={self.dtype.name}, device={self.device}{grad})"

    __hash__ = object.__hash__

    # ---- autograd --------------------------------------------------------------------------------
    def backward(self, grad: "Tensor | None" = None, grads: Grads | None = None,
                 retain_graph: bool = False) -> Grads:
        """Gradients of this tensor with respect to every leaf that requires grad.

        A non-scalar tensor needs an explicit `grad` of its shape. Passing `grads=` accumulates
        into an existing store (gradient accumulation over several backward calls).
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no Var or attached tensor "
                               "reaches it, or it was computed under no_grad)")
        if grad is None:
            if self.numel() != 1:
                raise ShapeError(f"backward: a non-scalar tensor ({describe(self)}) needs an explicit grad")
            seed = UnitGrad.full(self.shape, 1.0, self.dtype, self.device)
        else:
            if tuple(grad.shape) != self.shape:
                raise ShapeError(f"backward: grad {describe(grad)} does not match the tensor {describe(self)}")
            if grad.device != self.device:
                raise DeviceError(f"backward: grad {describe(grad)} is not on the device of {describe(self)}")
            seed = grad.data.cast(self.dtype)
        _inplace.check_graph(self)  # no saved array was changed in place since its op saved it
        return run_backward(self, seed, grads if grads is not None else Grads(), retain_graph)

    def register_hook(self, fn) -> RemovableHandle:
        """Call fn(grad) when backward has computed this tensor's whole gradient (every use summed);
        a Tensor it returns replaces the gradient passed on (a leaf's: the one stored in Grads)."""
        if not self.requires_grad:
            raise RuntimeError(f"register_hook: {describe(self)} does not require grad, so no gradient reaches it")
        if self._grad_hooks is None:
            self._grad_hooks = {}
        return add_hook(self._grad_hooks, fn)

    def detach(self) -> "Tensor":
        """The same values, cut from the graph (shares the buffer)."""
        return Tensor(self.data)

    def attach(self) -> "Tensor":
        """A leaf tensor sharing this buffer that records operations and receives a gradient."""
        return Tensor(self.data, requires_grad=True)

    # ---- moves and casts -------------------------------------------------------------------------
    def to_device(self, device: "Device | str") -> "Tensor":
        return _convert.to_device(self, as_device(device))

    def to(self, target) -> "Tensor":
        """`to("cuda")` moves, `to(deers.f16)` casts, PyTorch style."""
        if isinstance(target, DType) or (isinstance(target, str) and is_dtype_name(target)):
            return self.to_dtype(target)
        return self.to_device(target)  # anything else must be a device ("gpu" is a DeviceError)

    def to_dtype(self, dtype: "DType | str") -> "Tensor":
        return _convert.cast(self, as_dtype(dtype))

    def float(self) -> "Tensor":
        return self.to_dtype("f32")

    def double(self) -> "Tensor":
        return self.to_dtype("f64")

    def long(self) -> "Tensor":
        return self.to_dtype("i64")

    # ---- element-wise: unary (deers/ops/unary.py) ----------------------------------------------
    def neg(self) -> "Tensor": return _unary.unary(_unary.Neg, self)
    def exp(self) -> "Tensor": return _unary.unary(_unary.Exp, self)
    def log(self) -> "Tensor": return _unary.unary(_unary.Log, self)
    def sqrt(self) -> "Tensor": return _unary.unary(_unary.Sqrt, self)
    def sin(self) -> "Tensor": return _unary.unary(_unary.Sin, self)
    def cos(self) -> "Tensor": return _unary.unary(_unary.Cos, self)
    def tanh(self) -> "Tensor": return _unary.unary(_unary.Tanh, self)
    def sigmoid(self) -> "Tensor": return _unary.unary(_unary.Sigmoid, self)
    def relu(self) -> "Tensor": return _unary.unary(_unary.Relu, self)
    def softplus(self, beta: float = 1.0, threshold: float = 20.0) -> "Tensor":
        return _unary.softplus(self, beta, threshold)
    def abs(self) -> "Tensor": return _unary.unary(_unary.Abs, self)
    def sign(self) -> "Tensor": return _unary.unary(_unary.Sign, self)
    def rsqrt(self) -> "Tensor": return _unary.rsqrt(self)
    def square(self) -> "Tensor": return _unary.square(self)

    # ---- element-wise: binary (deers/ops/binary.py), with a Tensor or a Python number -----------
    def add(self, other, alpha=1) -> "Tensor": return _binary.add(self, other, alpha)
    def sub(self, other, alpha=1) -> "Tensor": return _binary.sub(self, other, alpha)
    def mul(self, other) -> "Tensor": return _binary.mul(self, other)
    def div(self, other, rounding_mode: str | None = None) -> "Tensor":
        return _binary.div(self, other, rounding_mode)
    def floor_divide(self, other) -> "Tensor": return _binary.floor_divide(self, other)
    def remainder(self, other) -> "Tensor": return _binary.remainder(self, other)
    def pow(self, exponent) -> "Tensor": return _binary.pow(self, exponent)
    def powf(self, exponent: float) -> "Tensor": return _binary.pow(self, float(exponent))
    def maximum(self, other) -> "Tensor": return _binary.maximum(self, other)
    def minimum(self, other) -> "Tensor": return _binary.minimum(self, other)
    def clamp(self, min=None, max=None) -> "Tensor": return _binary.clamp(self, min, max)

    # ---- masks (deers/ops/compare.py): comparisons give bool tensors, where selects by one ------
    def eq(self, other) -> "Tensor": return _compare.compare(BinaryFn.EQ, self, other)
    def ne(self, other) -> "Tensor": return _compare.compare(BinaryFn.NE, self, other)
    def lt(self, other) -> "Tensor": return _compare.compare(BinaryFn.LT, self, other)
    def le(self, other) -> "Tensor": return _compare.compare(BinaryFn.LE, self, other)
    def gt(self, other) -> "Tensor": return _compare.compare(BinaryFn.GT, self, other)
    def ge(self, other) -> "Tensor": return _compare.compare(BinaryFn.GE, self, other)
    def masked_fill(self, mask: "Tensor", value) -> "Tensor": return _compare.masked_fill(self, mask, value)
    def where(self, condition: "Tensor", other) -> "Tensor": return _compare.where(condition, self, other)

    # ---- bitwise and logical (deers/ops/bitwise.py): integers and bool; &, |, ^ commute ---------
    def bitwise_and(self, other) -> "Tensor": return _bitwise.bitwise_and(self, other)
    def bitwise_or(self, other) -> "Tensor": return _bitwise.bitwise_or(self, other)
    def bitwise_xor(self, other) -> "Tensor": return _bitwise.bitwise_xor(self, other)
    def bitwise_not(self) -> "Tensor": return _bitwise.bitwise_not(self)
    def logical_and(self, other) -> "Tensor": return _bitwise.logical_and(self, other)
    def logical_or(self, other) -> "Tensor": return _bitwise.logical_or(self, other)
    def logical_xor(self, other) -> "Tensor": return _bitwise.logical_xor(self, other)
    def logical_not(self) -> "Tensor": return _bitwise.logical_not(self)
    __and__ = __rand__ = bitwise_and
    __or__ = __ror__ = bitwise_or
    __xor__ = __rxor__ = bitwise_xor
    __invert__ = bitwise_not

    __add__ = add
    __sub__ = sub
    __mul__ = mul
    __truediv__ = div
    __floordiv__ = floor_divide
    __mod__ = remainder
    __pow__ = pow
    __neg__ = neg
    __abs__ = abs
    def __eq__(self, other):  # element-wise, like PyTorch; tensors hash by identity
        return False if other is None else self.eq(other)  # `x == None` is False, as in PyTorch

    def __ne__(self, other):
        return True if other is None else self.ne(other)

    __lt__ = lt
    __le__ = le
    __gt__ = gt
    __ge__ = ge

    def __radd__(self, other) -> "Tensor": return _binary.add(self, other)
    def __rsub__(self, other) -> "Tensor": return _binary.rsub(self, other)
    def __rmul__(self, other) -> "Tensor": return _binary.mul(self, other)
    def __rtruediv__(self, other) -> "Tensor": return _binary.rdiv(self, other)
    def __rfloordiv__(self, other) -> "Tensor": return _binary.rfloor_divide(self, other)
    def __rmod__(self, other) -> "Tensor": return _binary.rremainder(self, other)
    def __rpow__(self, other) -> "Tensor": return _binary.rpow(self, other)

    # ---- matmul, indexing ------------------------------------------------------------------------
    def matmul(self, other: "Tensor") -> "Tensor": return _linalg.matmul(self, other)
    __matmul__ = matmul

    def gather(self, dim: int, index: "Tensor") -> "Tensor": return _index.gather(self, dim, index)
    def index_select(self, dim: int, index: "Tensor") -> "Tensor": return _index.index_select(self, dim, index)
    def __getitem__(self, key) -> "Tensor": return _shape.getitem(self, key)

    # ---- in place (deers/ops/inplace.py): the same buffer and identity; not recorded in the graph ---
    def add_(self, other, alpha=1) -> "Tensor": return _inplace.add_(self, other, alpha)
    def sub_(self, other, alpha=1) -> "Tensor": return _inplace.sub_(self, other, alpha)
    def mul_(self, other) -> "Tensor": return _inplace.mul_(self, other)
    def div_(self, other) -> "Tensor": return _inplace.div_(self, other)
    def floor_divide_(self, other) -> "Tensor": return _inplace.floor_divide_(self, other)
    def remainder_(self, other) -> "Tensor": return _inplace.remainder_(self, other)
    def bitwise_and_(self, other) -> "Tensor": return _inplace.bitwise_and_(self, other)
    def bitwise_or_(self, other) -> "Tensor": return _inplace.bitwise_or_(self, other)
    def bitwise_xor_(self, other) -> "Tensor": return _inplace.bitwise_xor_(self, other)
    def clamp_(self, min=None, max=None) -> "Tensor": return _inplace.clamp_(self, min, max)
    def fill_(self, value) -> "Tensor": return _inplace.fill_(self, value)
    def zero_(self) -> "Tensor": return _inplace.zero_(self)
    def copy_(self, src: "Tensor") -> "Tensor": return _inplace.copy_(self, src)
    def __setitem__(self, key, value) -> None: _inplace.setitem(self, key, value)
    def __iadd__(self, other) -> "Tensor": return _inplace.augmented("add_", self, other)
    def __isub__(self, other) -> "Tensor": return _inplace.augmented("sub_", self, other)
    def __imul__(self, other) -> "Tensor": return _inplace.augmented("mul_", self, other)
    def __itruediv__(self, other) -> "Tensor": return _inplace.augmented("div_", self, other)
    def __ifloordiv__(self, other) -> "Tensor": return _inplace.augmented("floor_divide_", self, other)
    def __imod__(self, other) -> "Tensor": return _inplace.augmented("remainder_", self, other)
    def __iand__(self, other) -> "Tensor": return _inplace.augmented("bitwise_and_", self, other)
    def __ior__(self, other) -> "Tensor": return _inplace.augmented("bitwise_or_", self, other)
    def __ixor__(self, other) -> "Tensor": return _inplace.augmented("bitwise_xor_", self, other)

    # ---- reductions --------------------------------------------------------------------------------
    def sum(self, dim=None, keepdim: bool = False, dtype=None) -> "Tensor": return _reduce.sum(self, dim, keepdim, dtype)
    def mean(self, dim=None, keepdim: bool = False, dtype=None) -> "Tensor":
        return _reduce.mean(self, dim, keepdim, dtype)
    def max(self, dim=None, keepdim: bool = False, other: "Tensor | None" = None):
        """x.max(): the largest value; x.max(dim): the pair (values, indices); x.max(other_tensor)
        (or other=): the element-wise maximum, like PyTorch."""
        return _reduce.max(self, dim if other is None else other, keepdim)
    def min(self, dim=None, keepdim: bool = False, other: "Tensor | None" = None):
        """x.min(): the smallest value; x.min(dim): the pair (values, indices); x.min(other_tensor)
        (or other=): the element-wise minimum, like PyTorch."""
        return _reduce.min(self, dim if other is None else other, keepdim)
    def amax(self, dim=None, keepdim: bool = False) -> "Tensor": return _reduce.amax(self, dim, keepdim)
    def amin(self, dim=None, keepdim: bool = False) -> "Tensor": return _reduce.amin(self, dim, keepdim)
    def argmax(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        return _reduce.argmax(self, dim, keepdim)
    def argmin(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        return _reduce.argmin(self, dim, keepdim)
    def logsumexp(self, dim=None, keepdim: bool = False) -> "Tensor": return _reduce.logsumexp(self, dim, keepdim)

    # ---- ordering (deers/ops/sort.py): (values, indices) pairs like torch.return_types ---------------
    def sort(self, dim: int = -1, descending: bool = False, stable: bool = False):
        return _sort.sort(self, dim, descending, stable)
    def argsort(self, dim: int = -1, descending: bool = False, stable: bool = False) -> "Tensor":
        return _sort.argsort(self, dim, descending, stable)
    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
        return _sort.topk(self, k, dim, largest, sorted)
    def softmax(self, dim: int = -1, dtype=None) -> "Tensor": return _reduce.softmax(self, dim, dtype)
    def log_softmax(self, dim: int = -1, dtype=None) -> "Tensor": return _reduce.log_softmax(self, dim, dtype)

    # ---- everyday functions (deers/ops/stats.py, scan.py, split.py, flip.py, triangle.py) ----------
    def var(self, dim=None, correction: "float | None" = 1, keepdim: bool = False,
            unbiased: bool | None = None) -> "Tensor":
        return _stats.var(self, dim, correction, keepdim, unbiased)
    def std(self, dim=None, correction: "float | None" = 1, keepdim: bool = False,
            unbiased: bool | None = None) -> "Tensor":
        return _stats.std(self, dim, correction, keepdim, unbiased)
    def norm(self, p=2, dim=None, keepdim: bool = False) -> "Tensor": return _stats.norm(self, p, dim, keepdim)
    def cumsum(self, dim: int, dtype=None) -> "Tensor": return _scan.cumsum(self, dim, dtype)
    def split(self, split_size, dim: int = 0) -> tuple: return _split.split(self, split_size, dim)
    def chunk(self, chunks: int, dim: int = 0) -> tuple: return _split.chunk(self, chunks, dim)
    def unbind(self, dim: int = 0) -> tuple: return _split.unbind(self, dim)
    def flip(self, *args, dims=None) -> "Tensor": return _flip.flip(self, _dims(args, dims, "flip", "dims"))
    def tril(self, diagonal: int = 0) -> "Tensor": return _triangle.tril(self, diagonal)
    def triu(self, diagonal: int = 0) -> "Tensor": return _triangle.triu(self, diagonal)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Make this leaf record operations and receive a gradient (or stop), in place; returns self."""
        if not self.is_leaf:
            if requires_grad:
                return self  # already part of a graph that requires grad
            raise RuntimeError(f"requires_grad_(False) on a non-leaf tensor ({describe(self)}); use detach()")
        if requires_grad and not self.dtype.is_float:
            raise DTypeError(f"requires_grad_: only floating-point tensors can require grad, got {describe(self)}")
        self.requires_grad = bool(requires_grad)
        return self

    # ---- views and shape ---------------------------------------------------------------------------
    def permute(self, *args, dims=None) -> "Tensor": return _shape.permute(self, _dims(args, dims, "permute", "dims"))
    def transpose(self, dim0: int, dim1: int) -> "Tensor": return _shape.transpose(self, dim0, dim1)
    def broadcast_to(self, *shape) -> "Tensor": return _shape.broadcast_to(self, _dims(shape))
    def expand(self, *args, size=None) -> "Tensor":
        return _shape.broadcast_to(self, _dims(args, size, "expand", "size"))
    def reshape(self, *args, shape=None) -> "Tensor": return _shape.reshape(self, _dims(args, shape, "reshape", "shape"))
    view = reshape
    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        return _shape.flatten(self, start_dim, end_dim)
    def squeeze(self, dim=None) -> "Tensor": return _shape.squeeze(self, dim)
    def unsqueeze(self, dim: int) -> "Tensor": return _shape.unsqueeze(self, dim)
    def narrow(self, dim: int, start, length: int) -> "Tensor": return _shape.narrow(self, dim, start, length)
    def compact(self) -> "Tensor": return _shape.compact(self)
    contiguous = compact

    @property
    def T(self) -> "Tensor":
        return _shape.permute(self, tuple(reversed(range(self.ndim))))


class Var(Tensor):
    """A trainable leaf tensor: always requires grad; optimizers update its buffer in place."""

    __slots__ = ()

    def __init__(self, value: "Tensor | NDArray", requires_grad: bool = True):
        data = value.data if isinstance(value, Tensor) else value
        super().__init__(data, requires_grad=requires_grad)

    def set_data(self, value: "Tensor | NDArray") -> None:
        """Replace the values in place (same buffer, same id), e.g. when loading a checkpoint."""
        src = value.data if isinstance(value, Tensor) else value
        if src.shape != self.shape:
            raise ShapeError(f"set_data: value of shape {src.shape} does not fit Var of shape {self.shape}")
        if src.device != self.device:
            src = NDArray.from_numpy(src.numpy(), self.dtype, self.device)
        self.data.assign(src)


def _dims(args: Sequence, keyword=None, op: str = "", name: str = "") -> tuple[int, ...]:
    """Accept x.reshape(2, 3), x.reshape((2, 3)) and, as PyTorch's keyword, x.reshape(shape=(2, 3))."""
    if keyword is not None:
        if args:
            raise TypeError(f"{op}: give the {name} either positionally or as {name}=, not both")
        return tuple(keyword) if isinstance(keyword, (tuple, list)) else (keyword,)
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


# The op modules import Tensor and apply from this file, so they are bound after the class exists.
from .ops import binary as _binary  # noqa: E402
from .ops import bitwise as _bitwise  # noqa: E402
from .ops import compare as _compare  # noqa: E402
from .ops import convert as _convert  # noqa: E402
from .ops import indexing as _index  # noqa: E402
from .ops import inplace as _inplace  # noqa: E402
from .ops import linalg as _linalg  # noqa: E402
from .ops import reduce as _reduce  # noqa: E402
from .ops import shape as _shape  # noqa: E402
from .ops import flip as _flip  # noqa: E402
from .ops import scan as _scan  # noqa: E402
from .ops import sort as _sort  # noqa: E402
from .ops import split as _split  # noqa: E402
from .ops import stats as _stats  # noqa: E402
from .ops import triangle as _triangle  # noqa: E402
from .ops import unary as _unary  # noqa: E402
# The engine backward runs: deers.autograd.run_backward's walk, with view gradients written into one
# buffer (fewer passes; the same gradients, tests/test_view_grads.py). It needs the view ops above.
from .view_grads import run_backward  # noqa: E402

"""Element-wise ops. Binary ops broadcast through `broadcast_pair`, which records a BroadcastTo
view on each input that needs one; its backward sums the gradient back (deers/ops/shape.py), so
no op here has to un-broadcast anything itself."""
from __future__ import annotations

import math
from numbers import Integral, Number

from ..array import NDArray
from ..autograd import Op
from ..device import Device
from ..dtype import DType, bool_, default_float, i64
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..layout import broadcast_shapes
from ..tensor import Tensor, apply
from .shape import broadcast_to

_FLOAT_ONLY = {"log", "exp", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "div", "pow"}


def require_float(name: str, t: Tensor) -> None:
    if not t.dtype.is_float:
        raise DTypeError(f"{name}: needs a floating-point tensor, got {describe(t)}; "
                         f"cast with .to_dtype(deers.f32)")


def broadcast_pair(name: str, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Check devices and dtypes of two operands and broadcast them to one shape (recorded)."""
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
    return broadcast_to(a, shape), broadcast_to(b, shape)


def _scalar_operand(name: str, t: Tensor, value) -> Tensor:
    """Type promotion with a Python number, like PyTorch: an int or bool tensor meeting a
    non-integer number becomes the default float type; a bool tensor in arithmetic becomes i64."""
    if t.dtype.is_float:
        return t
    if not isinstance(value, Integral):
        return cast(t, default_float())
    return cast(t, i64) if t.dtype is bool_ else t


def _check_operand(name: str, value) -> None:
    if not isinstance(value, Number):
        raise TypeError(f"{name}: expected a Tensor or a Python number, got {type(value).__name__}")


# ---- unary ---------------------------------------------------------------------------------------
class Unary(Op):
    """y = f(x) for the backend's unary primitives; the derivative per function below."""

    _READS_OUTPUT = frozenset(("exp", "sqrt", "rsqrt", "tanh", "sigmoid"))  # backward uses y, not x
    a = out = None  # saved by forward only when backward reads them

    def __init__(self, fn: str):
        self.name = fn

    def forward(self, a: NDArray) -> NDArray:
        out = a.unary(self.name)
        if self.name in self._READS_OUTPUT:
            self.out = out
        elif self.name != "neg":
            self.a = a
        return out

    def backward(self, g: NDArray):
        a, y, fn = self.a, self.out, self.name
        if fn == "neg":  # d(-x) = -1
            return (-g,)
        if fn == "exp":  # d exp(x) = exp(x)
            return (g * y,)
        if fn == "log":  # d log(x) = 1/x
            return (g / a,)
        if fn == "sqrt":  # d sqrt(x) = 1 / (2 sqrt(x))
            return (g / (y * 2.0),)
        if fn == "rsqrt":  # d x^-1/2 = -1/2 x^-3/2 = -y^3 / 2
            return (g * (y * y * y) * -0.5,)
        if fn == "sin":  # d sin = cos
            return (g * a.cos(),)
        if fn == "cos":  # d cos = -sin
            return (-(g * a.sin()),)
        if fn == "tanh":  # d tanh = 1 - tanh^2
            return (g * (1.0 - y * y),)
        if fn == "sigmoid":  # d s = s (1 - s)
            return (g * (y * (1.0 - y)),)
        if fn == "relu":  # d relu = [x > 0]
            return (g * (a > 0).cast(g.dtype),)
        if fn == "abs":  # d |x| = sign(x)
            return (g * a.sign(),)
        if fn == "square":  # d x^2 = 2x
            return (g * a * 2.0,)
        raise NotImplementedError(f"no derivative for {fn}")


def unary(fn: str, x: Tensor) -> Tensor:
    if fn in _FLOAT_ONLY:
        require_float(fn, x)
    return apply(Unary(fn), x)


def neg(x: Tensor) -> Tensor:
    return apply(Unary("neg"), x)


# ---- binary ----------------------------------------------------------------------------------------
class Add(Op):
    name = "add"

    def forward(self, a, b):
        return a + b

    def backward(self, g):  # d(a+b) = (1, 1)
        return g, g


class Sub(Op):
    name = "sub"

    def forward(self, a, b):
        return a - b

    def backward(self, g):  # d(a-b) = (1, -1)
        return g, -g


class Mul(Op):
    name = "mul"

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):  # d(ab) = (b, a)
        return (g * self.b if self.needs(0) else None), (g * self.a if self.needs(1) else None)


class Div(Op):
    name = "div"

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):  # d(a/b) = (1/b, -a/b^2)
        gb = g / self.b
        return gb, (-(gb * self.a / self.b) if self.needs(1) else None)


class Pow(Op):
    name = "pow"

    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a ** b
        return self.out

    def backward(self, g):  # d a^b = (b a^(b-1), a^b log a)
        da = g * self.b * (self.a ** (self.b - 1.0)) if self.needs(0) else None
        db = g * self.out * self.a.log() if self.needs(1) else None
        return da, db


class Maximum(Op):
    def __init__(self, fn: str):
        self.name = fn

    def forward(self, a, b):
        self.a, self.b = a, b
        return a.binary(self.name, b)

    def backward(self, g):  # the larger (smaller) operand gets the gradient; ties split it evenly
        dtype = g.dtype
        first = (self.a.binary("gt" if self.name == "maximum" else "lt", self.b)).cast(dtype)
        share = first + self.a.binary("eq", self.b).cast(dtype) * 0.5  # a's share of g: 1, 1/2 or 0
        return g * share, (g * (1.0 - share) if self.needs(1) else None)


def _binary(op: Op, a: Tensor, b: Tensor) -> Tensor:
    a, b = broadcast_pair(op.name, a, b)
    return apply(op, a, b)


def _scalar(name: str, a: Tensor, value, reverse: bool = False) -> Tensor:
    """a OP value (value OP a when reverse) with a Python number, promoted like PyTorch."""
    _check_operand(name, value)
    if name in _FLOAT_ONLY:
        require_float(name, a)
    return apply(ScalarOp(name, value, reverse), _scalar_operand(name, a, value))


def add(a: Tensor, b) -> Tensor:
    return _binary(Add(), a, b) if isinstance(b, Tensor) else _scalar("add", a, b)


def sub(a: Tensor, b) -> Tensor:
    return _binary(Sub(), a, b) if isinstance(b, Tensor) else _scalar("sub", a, b)


def rsub(a: Tensor, value) -> Tensor:
    return _scalar("sub", a, value, reverse=True)


def mul(a: Tensor, b) -> Tensor:
    return _binary(Mul(), a, b) if isinstance(b, Tensor) else _scalar("mul", a, b)


def div(a: Tensor, b) -> Tensor:
    require_float("div", a)
    return _binary(Div(), a, b) if isinstance(b, Tensor) else _scalar("div", a, b)


def rdiv(a: Tensor, value) -> Tensor:
    return _scalar("div", a, value, reverse=True)


def pow(a: Tensor, exponent) -> Tensor:
    require_float("pow", a)
    return _binary(Pow(), a, exponent) if isinstance(exponent, Tensor) else _scalar("pow", a, exponent)


def rpow(a: Tensor, base) -> Tensor:
    return _scalar("pow", a, base, reverse=True)


def maximum(a: Tensor, b) -> Tensor:
    if isinstance(b, Tensor):
        return _binary(Maximum("maximum"), a, b)
    _check_operand("maximum", b)
    return clamp(a, min=b)


def minimum(a: Tensor, b) -> Tensor:
    if isinstance(b, Tensor):
        return _binary(Maximum("minimum"), a, b)
    _check_operand("minimum", b)
    return clamp(a, max=b)


class ScalarOp(Op):
    """x OP c (or c OP x when reverse) with a Python number c."""

    a = out = None  # saved by forward only when backward reads them

    def __init__(self, fn: str, value, reverse: bool = False):
        self.name, self.value, self.reverse = fn, value, reverse

    def forward(self, a):
        out = a.scalar(self.name, self.value, self.reverse)
        if self.name == "pow" or (self.name == "div" and self.reverse):  # only these read them back
            self.a, self.out = a, out
        return out

    def backward(self, g):
        c, a, name = self.value, self.a, self.name
        if name == "add":  # d(x + c) = 1
            return (g,)
        if name == "mul":  # d(cx) = c
            return (g * c,)
        if name == "sub":  # d(x - c) = 1, d(c - x) = -1
            return (-g if self.reverse else g,)
        if name == "div" and not self.reverse:  # d(x / c) = 1/c
            return (g / c,)
        if name == "div":  # d(c / x) = -c / x^2 = -(c/x) / x
            return (-(g * self.out / a),)
        if name == "pow" and not self.reverse:  # d x^c = c x^(c-1) (and 0 for c = 0, even at x = 0)
            return (g * (a ** (c - 1.0)) * c,) if c != 0 else (g * 0.0,)
        if name == "pow":  # d c^x = c^x log c
            return (g * self.out * math.log(c),)
        raise NotImplementedError(f"ScalarOp has no derivative for {name}")


class Clamp(Op):
    name = "clamp"

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, a):
        out = a
        if self.low is not None:
            out = out.scalar("maximum", self.low)
        if self.high is not None:
            out = out.scalar("minimum", self.high)
        if self.needs(0):
            self.inside = out.binary("eq", a).cast(a.dtype)
        return out

    def backward(self, g):  # gradient passes where x was inside [low, high]
        return (g * self.inside,)


def clamp(x: Tensor, min=None, max=None) -> Tensor:
    """x limited to [min, max] (either bound may be None); bounds are Python numbers."""
    for bound in (min, max):
        if bound is not None:
            _check_operand("clamp", bound)
    return apply(Clamp(min, max), x)


# ---- comparisons, where, masked_fill ---------------------------------------------------------------
def compare(fn: str, a: Tensor, b) -> Tensor:
    """Element-wise comparison -> a bool mask (no gradient)."""
    if isinstance(b, Number):
        return Tensor(a.data.scalar(fn, b))
    a, b = broadcast_pair(fn, a.detach(), b.detach())
    return Tensor(a.data.binary(fn, b.data))


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
    """condition ? a : b, element-wise, with broadcasting (either side may be a Python number)."""
    from ..creation import full

    ref = a if isinstance(a, Tensor) else b
    if isinstance(a, Number):
        a = full((), a, dtype=ref.dtype, device=ref.device)
    if isinstance(b, Number):
        b = full((), b, dtype=ref.dtype, device=ref.device)
    if condition.dtype.name != "bool":
        condition = compare("ne", condition, 0)
    a, b = broadcast_pair("where", a, b)
    shape = broadcast_shapes(condition.shape, a.shape)
    if shape is None:
        raise ShapeError(f"where: condition {describe(condition)} does not broadcast with {describe(a)}")
    if condition.device != a.device:
        raise DeviceError(f"where: condition {describe(condition)} is not on the device of {describe(a)}")
    if shape != a.shape:
        a, b = broadcast_to(a, shape), broadcast_to(b, shape)
    return apply(Where(), condition.broadcast_to(shape), a, b)


def masked_fill(x: Tensor, mask: Tensor, value: float) -> Tensor:
    """x with `value` wherever mask is true (mask broadcasts against x)."""
    return where(mask, value, x)


# ---- casts and device moves --------------------------------------------------------------------------
class Cast(Op):
    name = "to_dtype"

    def __init__(self, dtype: DType):
        self.dtype = dtype

    def forward(self, a):
        self.source = a.dtype
        return a.cast(self.dtype)

    def backward(self, g):  # identity, cast back to the input's dtype
        return (g.cast(self.source) if self.source.is_float else None,)


def cast(x: Tensor, dtype: DType) -> Tensor:
    if x.dtype is dtype:
        return x
    if not dtype.is_float and x.requires_grad:
        return Tensor(x.data.cast(dtype))
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

"""Binary arithmetic ops: y = f(a, b) element-wise with broadcasting, one class per primitive of
`deers.backend.BinaryFn` (the comparisons are in compare.py, &, |, ^ in bitwise.py): + - * / **,
maximum, minimum, and // and % with Python's rounding (the quotient rounded down, the remainder
with the divisor's sign).

Either operand may be a Python number: it becomes a 0-d constant (operands.py), so `2 - x` is
the Sub op with the constant first and no op has a scalar special case. Both operands are first
promoted to one dtype by PyTorch's rules (`operands.result_type`): `i64 + f32` is f32, `f16 + f32`
is f32, true division of integers gives the default float. An operand that does not require grad
gets no gradient computed (`self.needs(i)`), a constant included.

clamp (and maximum/minimum with a number) is written from comparisons and where, without a
backward of its own.
"""
from __future__ import annotations

import math

from ..array import NDArray
from ..autograd import Op
from ..backend import BinaryFn
from ..tensor import Tensor, apply
from ..dtype import bool_, i64
from ..errors import DTypeError, describe
from .convert import cast
from .operands import as_operand, check_number, operands, result_type


class BinaryOp(Op):
    """y = fn(a, b) for one backend primitive fn; subclasses set fn, float_result and backward."""

    fn: BinaryFn
    float_result = False  # True: integer operands compute in the default float (true division)

    @property
    def name(self) -> str:
        return self.fn.value

    def forward(self, a: NDArray, b: NDArray) -> NDArray:
        return a.binary(self.fn, b)


class Add(BinaryOp):
    fn = BinaryFn.ADD

    def backward(self, g):  # d(a + b) = (1, 1)
        return g, g


class Sub(BinaryOp):
    """Its own op rather than a + (-b): one pass, and no Neg recorded in the graph."""

    fn = BinaryFn.SUB

    def backward(self, g):  # d(a - b) = (1, -1)
        return g, (-g if self.needs(1) else None)


class Mul(BinaryOp):
    fn = BinaryFn.MUL

    def forward(self, a, b):
        self.a = a if self.needs(1) else None  # db reads a
        self.b = b if self.needs(0) else None  # da reads b
        return a.binary(self.fn, b)

    def backward(self, g):  # d(ab) = (b, a)
        return (g * self.b if self.needs(0) else None), (g * self.a if self.needs(1) else None)


class Div(BinaryOp):
    fn, float_result = BinaryFn.DIV, True

    def forward(self, a, b):
        self.a = a if self.needs(1) else None
        self.b = b
        return a.binary(self.fn, b)

    def backward(self, g):  # d(a/b) = (1/b, -a/b^2)
        gb = g / self.b
        return gb, (-(gb * self.a / self.b) if self.needs(1) else None)


class Pow(BinaryOp):
    fn = BinaryFn.POW  # integers stay integers (i64 ** 2 is i64), as in PyTorch

    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a.binary(self.fn, b)
        return self.out

    def backward(self, g):  # d a^b = (b a^(b-1), a^b log a); the first is 0 where b = 0, even at a = 0
        da = db = None
        if self.needs(0):  # b - 1 becomes 0 where b = 0, so that term is 0 * a^0 = 0 (no inf, no warning)
            zero = NDArray.full((), 0, g.dtype, g.device)
            da = g * self.b * (self.a ** self.b.binary(BinaryFn.EQ, zero).where(zero, self.b - 1.0))
        if self.needs(1):
            db = g * self.out * self.a.log()
        return da, db


class FloorDivide(BinaryOp):
    """floor(a / b), Python's // (torch.floor_divide): integers stay integers (7 // -2 is -4),
    floats round the quotient down (7.5 // 2.0 is 3.0).

    Not differentiable, as in PyTorch: it is recorded like any op on tensors that require grad,
    but a backward that reaches it raises (PyTorch: "derivative for aten::floor_divide is not
    implemented") rather than quietly handing out the zeros of a piecewise-constant function."""

    fn = BinaryFn.FLOOR_DIVIDE

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape, a.dtype.name)
        return a.binary(self.fn, b)

    def backward(self, g):
        a_shape, b_shape, dtype = self.shapes
        raise RuntimeError(f"floor_divide: has no derivative, as in PyTorch (operands {a_shape} and {b_shape} "
                           f"{dtype}); compute it on .detach()ed operands or under deers.no_grad() when no "
                           "gradient should flow through it")


class Remainder(BinaryOp):
    """a - floor(a / b) b, Python's % (torch.remainder, not fmod): the result has b's sign
    (-7 % 3 is 2, 7 % -3 is -2)."""

    fn = BinaryFn.REMAINDER

    def forward(self, a, b):
        self.a, self.b = (a, b) if self.needs(1) else (None, None)  # only db reads them
        return a.binary(self.fn, b)

    def backward(self, g):  # d(a - floor(a/b) b) = (1, -floor(a/b)), floor being constant almost everywhere
        return g, (-(g * self.a.binary(BinaryFn.FLOOR_DIVIDE, self.b)) if self.needs(1) else None)


class _Extreme(BinaryOp):
    """max(a, b) or min(a, b): the winning operand gets the gradient; ties split it evenly."""

    wins: BinaryFn  # a wins where a `wins` b

    def forward(self, a, b):
        self.a, self.b = a, b
        return a.binary(self.fn, b)

    def backward(self, g):  # d max(a, b)/da = [a > b] + [a = b] / 2, and 1 minus that for b
        dtype = g.dtype
        share = self.a.binary(self.wins, self.b).cast(dtype) + self.a.binary(BinaryFn.EQ, self.b).cast(dtype) * 0.5
        return g * share, (g * (1.0 - share) if self.needs(1) else None)


class Maximum(_Extreme):
    fn, wins = BinaryFn.MAXIMUM, BinaryFn.GT


class Minimum(_Extreme):
    fn, wins = BinaryFn.MINIMUM, BinaryFn.LT


def binary(op: "type[BinaryOp]", a: Tensor, b, reverse: bool = False) -> Tensor:
    """op(a, b), or op(b, a) when reverse; b is a Tensor or a Python number (a 0-d constant); both
    in their promoted dtype."""
    _check_bools(op, a, b)
    a, b = operands(op.fn.value, a, b, op.float_result)
    return apply(op(), b, a) if reverse else apply(op(), a, b)


def _check_bools(op: "type[BinaryOp]", a, b) -> None:
    """PyTorch's refusals: subtraction with a bool operand, // and % of two bools."""
    if op is Sub and (_is_bool(a) or _is_bool(b)):
        raise DTypeError(f"sub: subtraction with a bool operand is not supported ({describe(a)}), as in PyTorch; "
                         "for masks use x ^ y or ~x, or cast to an integer type")
    if op in (FloorDivide, Remainder) and _is_bool(a) and _is_bool(b):
        raise DTypeError(f"{op.fn.value}: not defined for two bool operands ({describe(a)}), as in PyTorch; "
                         "cast to an integer type")


def _is_bool(x) -> bool:
    return x.dtype is bool_ if isinstance(x, Tensor) else isinstance(x, bool)


def _scaled(name: str, a: Tensor, b, alpha):
    """alpha * b for add/sub(a, b, alpha=), with PyTorch's rules: a float alpha needs a float result,
    and for bool results alpha acts as a bool."""
    if alpha is None or (alpha == 1 and not isinstance(alpha, bool)):
        return b
    check_number(name, alpha)
    dtype = result_type(a, b)
    if dtype is bool_:
        return (b & bool(alpha)) if isinstance(b, Tensor) else bool(b) and bool(alpha)
    if not dtype.is_float and isinstance(alpha, float):
        raise DTypeError(f"{name}: alpha={alpha} is a float but the result is {dtype.name} ({describe(a)}); "
                         "for integer results alpha must be an int, as in PyTorch")
    return cast(b, dtype) * alpha if isinstance(b, Tensor) else b * alpha  # scaled in the result's dtype


def add(a: Tensor, b, alpha=1) -> Tensor:
    """a + alpha * b (alpha a Python number, 1 by default, as in torch.add)."""
    return binary(Add, a, _scaled("add", a, b, alpha))


def sub(a: Tensor, b, alpha=1) -> Tensor:
    """a - alpha * b (alpha a Python number, 1 by default, as in torch.sub)."""
    _check_bools(Sub, a, b)  # before alpha turns a bool b into a number
    return binary(Sub, a, _scaled("sub", a, b, alpha))


def rsub(a: Tensor, value) -> Tensor:
    """value - a."""
    return binary(Sub, a, value, reverse=True)


def mul(a: Tensor, b) -> Tensor:
    return binary(Mul, a, b)


def div(a: Tensor, b, rounding_mode: "str | None" = None) -> Tensor:
    """a / b, like torch.div: true division (integers give the default float) when rounding_mode is
    None; "floor" rounds the quotient down (a // b), "trunc" rounds it toward zero; both keep
    integers integer. The rounded quotients are piecewise constant: they carry no gradient
    (PyTorch's is zero)."""
    if rounding_mode is None:
        return binary(Div, a, b)
    if rounding_mode not in ("floor", "trunc"):
        raise ValueError(f"div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
    a, b = a.detach(), (b.detach() if isinstance(b, Tensor) else b)
    floored = binary(FloorDivide, a, b)  # floor(a / b), in the promoted dtype
    if rounding_mode == "floor":
        return floored
    if floored.dtype.is_float:  # trunc(a / b) of the rounded true quotient, as PyTorch computes it
        from .compare import where

        quotient = binary(Div, a, b)
        rounded = where(quotient < 0, -binary(FloorDivide, -quotient, 1), binary(FloorDivide, quotient, 1))
        return where(quotient.abs() < math.inf, rounded, quotient)  # inf and nan stay as they are
    # integers: floor and trunc differ by one where the division is inexact and the signs differ
    b = as_operand(b, floored.dtype, a)  # a Python int as the divisor floor_divide used (-1 wraps in u8)
    inexact = binary(Remainder, a, b).ne(0)
    signs_differ = (a < 0) ^ (b < 0)
    return floored + (inexact & signs_differ).to_dtype(floored.dtype)


def rdiv(a: Tensor, value) -> Tensor:
    """value / a."""
    return binary(Div, a, value, reverse=True)


def pow(a: Tensor, exponent) -> Tensor:
    return _pow(a, exponent, reverse=False)


def rpow(a: Tensor, base) -> Tensor:
    """base ** a."""
    return _pow(a, base, reverse=True)


def _pow(a: Tensor, other, reverse: bool) -> Tensor:
    """a ** other (other ** a when reverse). Integer powers follow PyTorch: a negative exponent
    tensor gives 1 for base 1, +-1 for base -1 and 0 otherwise; a negative Python exponent raises."""
    from .compare import where

    if not isinstance(other, Tensor):
        check_number("pow", other)
    dtype = result_type(a, other)
    base, exponent = (other, a) if reverse else (a, other)
    if dtype is bool_:  # bool ** bool, as PyTorch: base ** True = base, base ** False = True
        return base | ~exponent if isinstance(exponent, Tensor) else (base | (not exponent))
    if dtype.is_float:
        return binary(Pow, a, other, reverse)
    if not isinstance(exponent, Tensor):
        if exponent < 0:
            raise DTypeError(f"pow: an integer tensor ({describe(a)}) to the negative power {exponent} is not "
                             "an integer, as in PyTorch; cast to a float dtype first")
        return binary(Pow, a, other, reverse)
    if exponent.dtype is not i64:  # u8 and bool exponents are never negative
        return binary(Pow, a, other, reverse)
    negative = exponent < 0
    safe = where(negative, 0, exponent)  # the exponent with its negative entries set to 0
    powers = binary(Pow, safe, base, reverse=True) if reverse else binary(Pow, base, safe)
    minus_one = 1 - binary(Remainder, exponent, 2) * 2  # (-1)^e for the base -1
    if isinstance(base, Tensor):  # 1 / base^|e| rounded toward zero
        special = cast(where(base == 1, 1, where(base == -1, minus_one, 0)), dtype)
    else:
        special = cast(minus_one, dtype) if base == -1 else (1 if base == 1 else 0)
    return where(negative, special, powers)


def floor_divide(a: Tensor, b) -> Tensor:
    """a // b, rounding the quotient down (b a Tensor or a Python number)."""
    return binary(FloorDivide, a, b)


def rfloor_divide(a: Tensor, value) -> Tensor:
    """value // a."""
    return binary(FloorDivide, a, value, reverse=True)


def remainder(a: Tensor, b) -> Tensor:
    """a % b, with the divisor's sign (b a Tensor or a Python number)."""
    return binary(Remainder, a, b)


def rremainder(a: Tensor, value) -> Tensor:
    """value % a."""
    return binary(Remainder, a, value, reverse=True)


def maximum(a: Tensor, b) -> Tensor:
    """Element-wise max; with a Python number, clamp(a, min=b) (the gradient goes to a at ties)."""
    if isinstance(b, Tensor):
        return binary(Maximum, a, b)
    check_number("maximum", b)
    return clamp(a, min=b)


def minimum(a: Tensor, b) -> Tensor:
    """Element-wise min; with a Python number, clamp(a, max=b) (the gradient goes to a at ties)."""
    if isinstance(b, Tensor):
        return binary(Minimum, a, b)
    check_number("minimum", b)
    return clamp(a, max=b)


def clamp(x: Tensor, min=None, max=None) -> Tensor:
    """x limited to [min, max] (either bound may be None); bounds are Python numbers or Tensors
    that broadcast against x. The result has the promoted dtype of x and the bounds, as in PyTorch
    (`tensor([1, 2, 3]).clamp(min=1.5)` is f32 [1.5, 2, 3]).

    where(x < min, min, x), then the same for max: the gradient is 1 where min <= x <= max (bounds
    included, as in PyTorch) and 0 outside, through Where's backward; a Tensor bound gets the
    gradient where it was picked.
    """
    from .compare import where

    bounds = [bound for bound in (min, max) if bound is not None]
    for bound in bounds:
        if not isinstance(bound, Tensor):
            check_number("clamp", bound)
    if not bounds:
        raise ValueError(f"clamp: give min, max or both for {describe(x)}")
    x = cast(x, result_type(x, *bounds))
    if min is not None:
        x = where(x < min, min, x)
    if max is not None:
        x = where(x > max, max, x)
    return x

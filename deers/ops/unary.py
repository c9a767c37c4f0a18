"""Unary ops: y = f(x) element-wise, one small class per primitive of `deers.backend.UnaryFn`.

Each class names its primitive (`fn`), says whether it needs a float tensor (`float_only`) and
what its backward reads (`saves`: the input x, the output y, or nothing), and writes df/dx in
`backward`. The forward is the base class's: one backend primitive through NDArray. Tensor
methods run them with `unary(Exp, x)`.

square and rsqrt are written from these and the binary ops (x * x, 1 / sqrt(x)), without a
backward of their own.
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..backend import UnaryFn
from ..dtype import bool_
from ..errors import DTypeError, describe
from ..tensor import Tensor, apply
from .operands import require_float


class UnaryOp(Op):
    """y = fn(x) for one backend primitive fn; subclasses set fn, float_only, saves and backward."""

    fn: UnaryFn
    float_only = False  # True: an integer tensor raises DTypeError before the op runs
    saves = None  # "input" (backward reads x), "output" (reads y) or None
    x = y = None

    @property
    def name(self) -> str:
        return self.fn.value

    def forward(self, a: NDArray) -> NDArray:
        y = a.unary(self.fn)
        if self.needs(0):  # keep only what backward reads, and only when it will run
            if self.saves == "input":
                self.x = a
            elif self.saves == "output":
                self.y = y
        return y


class Neg(UnaryOp):
    fn = UnaryFn.NEG

    def backward(self, g):  # d(-x)/dx = -1
        return (-g,)


class Exp(UnaryOp):
    fn, float_only, saves = UnaryFn.EXP, True, "output"

    def backward(self, g):  # d exp(x)/dx = exp(x) = y
        return (g * self.y,)


class Log(UnaryOp):
    fn, float_only, saves = UnaryFn.LOG, True, "input"

    def backward(self, g):  # d log(x)/dx = 1/x
        return (g / self.x,)


class Sqrt(UnaryOp):
    fn, float_only, saves = UnaryFn.SQRT, True, "output"

    def backward(self, g):  # d sqrt(x)/dx = 1 / (2 sqrt(x)) = 1 / (2y)
        return (g / (self.y * 2.0),)


class Sin(UnaryOp):
    fn, float_only, saves = UnaryFn.SIN, True, "input"

    def backward(self, g):  # d sin(x)/dx = cos(x)
        return (g * self.x.cos(),)


class Cos(UnaryOp):
    fn, float_only, saves = UnaryFn.COS, True, "input"

    def backward(self, g):  # d cos(x)/dx = -sin(x)
        return (-(g * self.x.sin()),)


class Tanh(UnaryOp):
    fn, float_only, saves = UnaryFn.TANH, True, "output"

    def backward(self, g):  # d tanh(x)/dx = 1 - tanh(x)^2 = 1 - y^2
        return (g * (1.0 - self.y * self.y),)


class Sigmoid(UnaryOp):
    fn, float_only, saves = UnaryFn.SIGMOID, True, "output"

    def backward(self, g):  # d s(x)/dx = s(x) (1 - s(x)) = y (1 - y)
        return (g * (self.y * (1.0 - self.y)),)


class Softplus(UnaryOp):
    """y = log(1 + exp(beta x)) / beta, and y = x where beta x > threshold (PyTorch's softplus:
    there the two differ by less than exp(-threshold) / beta)."""

    fn, float_only, saves = UnaryFn.SOFTPLUS, True, "input"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        self.beta, self.threshold = beta, threshold

    def forward(self, a: NDArray) -> NDArray:
        z = a * self.beta  # beta x
        if self.needs(0):
            self.x = a
        return (z > self.threshold).where(a, z.unary(self.fn) / self.beta)

    def backward(self, g):
        # d/dx log(1 + exp(beta x)) / beta = exp(beta x) / (1 + exp(beta x)) = sigmoid(beta x); 1 where linear
        z = self.x * self.beta
        return ((z > self.threshold).where(g, g * z.unary(UnaryFn.SIGMOID)),)


class Relu(UnaryOp):
    fn, saves = UnaryFn.RELU, "output"

    def backward(self, g):  # d max(x, 0)/dx = [x > 0] = [y > 0] = sign(y), as y >= 0: 2 passes, not 3
        return (g * self.y.sign(),)


class Abs(UnaryOp):
    fn, saves = UnaryFn.ABS, "input"

    def backward(self, g):  # d |x|/dx = sign(x)
        return (g * self.x.sign(),)


class Sign(UnaryOp):
    fn = UnaryFn.SIGN

    def backward(self, g):  # d sign(x)/dx = 0 (everywhere but at 0, where PyTorch also says 0)
        return (NDArray.full(g.shape, 0, g.dtype, g.device),)


def unary(op: "type[UnaryOp]", x: Tensor) -> Tensor:
    """op(x) for a UnaryOp class, e.g. unary(Exp, x)."""
    if op.float_only:
        require_float(op.fn.value, x)
    if x.dtype is bool_:
        if op is Neg:
            raise DTypeError(f"neg: negating a bool tensor is not supported ({describe(x)}), as in PyTorch; "
                             "use ~x for logical not")
        if op in (Relu, Abs):
            raise DTypeError(f"{op.fn.value}: not defined for a bool tensor ({describe(x)}), as in PyTorch; "
                             "cast it first (x.to_dtype('i64'))")
        if op is Sign:  # sign(True) = True, sign(False) = False: the values themselves, as PyTorch gives
            return x.detach() * True
    return apply(op(), x)


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta element-wise, linear (x) where beta x > threshold, as
    torch.nn.functional.softplus."""
    require_float("softplus", x)
    return apply(Softplus(beta, threshold), x)


# ---- composite: written from the ops above and the binary ops, no backward of their own ---------
def square(x: Tensor) -> Tensor:
    """x^2 = x * x (the engine sums Mul's two gradients: 2x); a bool tensor squares as i64, as in PyTorch."""
    if x.dtype is bool_:
        x = x.to_dtype("i64")
    return x * x


def rsqrt(x: Tensor) -> Tensor:
    """1 / sqrt(x)."""
    require_float("rsqrt", x)
    return 1.0 / unary(Sqrt, x)

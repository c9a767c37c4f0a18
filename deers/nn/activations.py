"""Parameter-free layers: ReLU, GELU (tanh approximation or exact), SiLU, Softplus, Dropout, Identity, Flatten.

The exact GELU needs erf, which is not a backend primitive, so it is one Op here whose forward
evaluates the normal CDF as erfc(-x / sqrt 2) / 2 (deers/ops/special.py: accurate to the dtype's
rounding, f64 included) and whose backward uses the exact derivative Phi(x) + x phi(x).
"""
from __future__ import annotations

import math

from ..autograd import Op
from ..creation import rand
from ..ops.operands import require_float
from ..ops.special import erfc
from ..ops.unary import softplus
from ..tensor import Tensor, apply
from .module import Module

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GeluExact(Op):
    """y = x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2, the normal CDF."""

    name = "gelu"

    def forward(self, a):
        self.a = a
        self.cdf = erfc(a * -_INV_SQRT_2) * 0.5  # Phi(x) = erfc(-x / sqrt 2) / 2: no cancellation for x << 0
        return a * self.cdf

    def backward(self, g):  # d x Phi(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)
        a = self.a
        density = (a * a * -0.5).exp() * _INV_SQRT_2PI
        return (g * (self.cdf + a * density),)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU like torch.nn.functional.gelu: exact (erf) or approximate="tanh"."""
    require_float("gelu", x)
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inner = (x + x * x * x * 0.044715) * _SQRT_2_OVER_PI
        return x * 0.5 * (inner.tanh() + 1.0)
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply(GeluExact(), x)


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x)."""
    return x * x.sigmoid()


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (identity when not training).

    The mask comes from deers' generator on x's device, so deers.manual_seed makes it reproducible.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = (rand(*x.shape, dtype=x.dtype, device=x.device) >= p).to_dtype(x.dtype)  # (x.shape) of 0/1
    return x * (keep * (1.0 / (1.0 - p)))


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class GELU(Module):
    """GELU, exact by default; GELU(approximate="tanh") for the GPT-2 tanh approximation."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """x * sigmoid(x) (also called swish)."""

    def forward(self, x: Tensor) -> Tensor:
        return silu(x)


class Softplus(Module):
    """log(1 + exp(beta x)) / beta, linear where beta x > threshold (deers.nn.softplus)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x: Tensor) -> Tensor:
        return softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class Dropout(Module):
    """Dropout(p): active in training mode, the identity after .eval()."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Identity(Module):
    """Returns its input unchanged (a placeholder where a layer is optional)."""

    def __init__(self, *args: object, **kwargs: object):  # PyTorch's Identity ignores its arguments too
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x


class Flatten(Module):
    """x.flatten(start_dim, end_dim); by default keeps the batch dim: (N, C, H, W) -> (N, C*H*W)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

"""Fused RMSNorm: one backend kernel forward (contract item 16) and one backward.

    y = x / sqrt(mean(x^2, last dim) + eps) * w

Written from core ops (`rms_norm_reference`) this is six ops and six saved activations per call;
the fused kernel keeps only x, w and the per-row 1/rms (`rstd`), which is what makes it worth
its own Op.
"""
from __future__ import annotations

from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..tensor import Tensor, apply


class RMSNormOp(Op):
    """RMSNorm over the last dim of x (..., D) with a gain w (D,)."""

    name = "rms_norm"
    fused = True  # runs backend primitive 16

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, x, w):
        y, rstd = x.rms_norm(w, self.eps)  # y like x, rstd (rows,)
        if self.needs(0) or self.needs(1):
            self.x, self.w, self.rstd = x, w, rstd
        return y

    def backward(self, g):
        # xhat = x * rstd; dw = sum_rows(g * xhat); dx = rstd * (g w - xhat * mean(g w xhat))
        return g.rms_norm_backward(self.x, self.w, self.rstd)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm(x) = x / sqrt(mean(x^2, last dim) + eps) * weight, fused (see RMSNormOp)."""
    if x.ndim == 0 or weight.shape != (x.shape[-1],):
        raise ShapeError(f"rms_norm: weight {describe(weight)} must be (D,) for x {describe(x)} with D its last dim")
    if x.device != weight.device:
        raise DeviceError(f"rms_norm: x {describe(x)} and weight {describe(weight)} are on different devices")
    if not x.dtype.is_float or x.dtype is not weight.dtype:
        raise DTypeError(f"rms_norm: needs x and weight of one floating-point dtype, got x {describe(x)} "
                         f"and weight {describe(weight)}")
    return apply(RMSNormOp(float(eps)), x, weight)


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """The same from core ops: x * rsqrt(mean(x^2) + eps) * weight."""
    mean_square = (x * x).mean(dim=-1, keepdim=True)  # (..., 1)
    return x * (mean_square + eps).rsqrt() * weight

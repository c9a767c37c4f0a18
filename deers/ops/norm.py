"""Fused RMSNorm: one backend kernel forward (contract item 16) and one backward.

    y = x / sqrt(mean(x^2, last dim) + eps) * w

Written from primitives this would be six ops and six saved activations per call; the fused
kernel keeps only x, w and the per-row 1/rms (`rstd`), which is what makes it worth its own Op.
"""
from __future__ import annotations

from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..tensor import Tensor, apply


class RMSNormOp(Op):
    """RMSNorm over the last dim of x (..., D) with a gain w (D,)."""

    name = "rms_norm"

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, x, w):
        self.shape = x.shape
        self.d = x.shape[-1]
        self.rows = x.numel // max(self.d, 1)
        self.x = x.contiguous_buffer()  # flat, row-major (rows, D)
        self.w = w.contiguous_buffer()  # flat (D,)
        y, self.rstd = x.backend.rmsnorm(self.x, self.w, self.rows, self.d, self.eps)
        self.weight_shape = w.shape
        return x._new(y, x.shape)

    def backward(self, g):
        # xhat = x * rstd; dw = sum_rows(g * xhat); dx = rstd * (g w - xhat * mean(g w xhat))
        gx, gw = g.backend.rmsnorm_backward(g.contiguous_buffer(), self.x, self.w, self.rstd, self.rows, self.d)
        return g._new(gx, self.shape), g._new(gw, self.weight_shape)


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

"""Fused pieces of causal self-attention: rotary position embedding and the masked softmax.

Both could be written from primitive ops (narrow, neg, cat, mul, add, where, softmax); each is
one Op here so the attention of a GPT block records two graph nodes instead of a dozen and keeps
no intermediate copies for its backward.
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..layout import Layout
from ..tensor import Tensor, apply


def _rotate_half(a: NDArray) -> NDArray:
    """rotate_half(x) = cat(-x[..., hd/2:], x[..., :hd/2]) along the last dim, on arrays."""
    hd = a.shape[-1]
    half = hd // 2
    last = a.ndim - 1
    out = a._new(a.backend.empty(a.numel, a.dtype), a.shape)
    upper = -a.narrow(last, half, half)
    a.backend.copy(upper.buffer, upper.layout, out.buffer, out.layout.narrow(last, 0, half))
    lower = a.narrow(last, 0, half)
    a.backend.copy(lower.buffer, lower.layout, out.buffer, out.layout.narrow(last, half, half))
    return out


class RoPE(Op):
    """Rotary position embedding, rotate-half convention: y = x * cos + rotate_half(x) * sin.

    x is (..., T, hd); cos and sin are (T, hd) tables (constants: they get no gradient).
    """

    name = "rope"

    def forward(self, x, cos, sin):
        self.cos, self.sin = cos, sin
        return x * cos + _rotate_half(x) * sin

    def backward(self, g):
        # rotate_half is a linear map R with R^T = -R, so dx = g * cos + R^T(g * sin) = g * cos - R(g * sin)
        return g * self.cos - _rotate_half(g * self.sin), None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., T, hd) by the position tables cos, sin (T, hd)."""
    T, hd = x.shape[-2], x.shape[-1]
    if hd % 2 or cos.shape != (T, hd) or sin.shape != (T, hd):
        raise ShapeError(f"rope: x {describe(x)} needs an even last dim and cos/sin tables of shape ({T}, {hd}), "
                         f"got cos {describe(cos)} and sin {describe(sin)}")
    if cos.device != x.device or sin.device != x.device:
        raise DeviceError(f"rope: x {describe(x)} and cos {describe(cos)} are on different devices")
    if cos.dtype is not x.dtype or sin.dtype is not x.dtype:
        raise DTypeError(f"rope: x {describe(x)} and the tables cos {describe(cos)} differ in dtype")
    return apply(RoPE(), x, cos, sin)


class MaskedSoftmax(Op):
    """softmax(scores * scale + mask) over the last dim, with an additive mask (0 or -inf).

    With `causal_offset` the caller promises mask[t, s] = -inf for every s > t + causal_offset
    (causal attention over a cache of `causal_offset` earlier positions). The op then works in
    blocks of query rows and skips the key columns no row of the block can see: about half the
    scores of a causal square are never exponentiated, and their probability is exactly 0.
    (The backward has no exp and stays one dense pass.)
    """

    name = "masked_softmax"
    ROW_BLOCK = 32  # query rows per block in the causal path

    def __init__(self, scale: float, causal_offset: int | None = None):
        self.scale = scale
        self.offset = causal_offset

    def forward(self, scores, mask):
        if self.offset is None:
            z = scores * self.scale + mask  # (..., Tq, Tk), -inf where masked
            self.out = z._new(z.backend.softmax(z.buffer, z.layout, False), z.shape)
            return self.out
        backend, rows, cols = scores.backend, scores.ndim - 2, scores.ndim - 1
        out = NDArray.full(scores.shape, 0, scores.dtype, scores.device)  # probability 0 where skipped
        for r0, r1, width in self._blocks(scores.shape):
            z = scores.narrow(rows, r0, r1 - r0).narrow(cols, 0, width) * self.scale  # (..., rows, width)
            z = z + mask.narrow(0, r0, r1 - r0).narrow(1, 0, width)
            y = backend.softmax(z.buffer, z.layout, False)
            backend.copy(y, Layout(z.shape), out.buffer, out.layout.narrow(rows, r0, r1 - r0).narrow(cols, 0, width))
        self.out = out
        return out

    def backward(self, g):
        # d softmax(z) = y (g - sum(g y)); dz/dscores = scale; masked (and skipped) entries have y = 0,
        # so one dense pass gives them exactly 0: no exp here, so no blocks are needed
        y = self.out
        gz = y._new(y.backend.softmax_backward(y.buffer, g.contiguous_buffer(), y.shape, False), y.shape)
        return gz * self.scale, None

    def _blocks(self, shape: tuple[int, ...]):
        """(first row, end row, visible key columns) per block of query rows."""
        t, s = shape[-2], shape[-1]
        for r0 in range(0, t, self.ROW_BLOCK):
            r1 = min(t, r0 + self.ROW_BLOCK)
            yield r0, r1, max(1, min(s, r1 + self.offset))


def masked_softmax(scores: Tensor, mask: Tensor, scale: float = 1.0, causal_offset: int | None = None) -> Tensor:
    """softmax(scores * scale + mask, dim=-1); mask (Tq, Tk) holds 0 where allowed and -inf where not.

    causal_offset: the mask is causal (-inf wherever s > t + causal_offset), so fully masked key
    columns are skipped block by block (see MaskedSoftmax).
    """
    if mask.shape != scores.shape[-2:]:
        raise ShapeError(f"masked_softmax: mask {describe(mask)} must match the last two dims of {describe(scores)}")
    if mask.device != scores.device:
        raise DeviceError(f"masked_softmax: scores {describe(scores)} and mask {describe(mask)} "
                          "are on different devices")
    if not scores.dtype.is_float or mask.dtype is not scores.dtype:
        raise DTypeError(f"masked_softmax: needs float scores and a mask of the same dtype, got scores "
                         f"{describe(scores)} and mask {describe(mask)}")
    return apply(MaskedSoftmax(float(scale), causal_offset), scores, mask)

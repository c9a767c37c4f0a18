"""Fused pieces of causal self-attention: the rotary position embedding, the causal softmax, and
the whole attention softmax(scale q k^T) v with the causal mask.

Each can be written from core ops (`apply_rope_reference`, `causal_softmax_reference`,
`causal_attention_reference`: narrow, neg, cat, mul, add, where, logsumexp, exp, matmul; what
`GPT(config, fused=False)` runs); each is one Op
here, so the attention of a GPT block records two graph nodes instead of a dozen, keeps no
intermediate copies for its backward, and never computes the scores a query cannot see (the
CPU backend's attention skips them in its GEMMs too, contract item 22).
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Op
from ..backend.reference import check_rope
from ..creation import tensor
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..ops.compare import where
from ..ops.shape import cat
from ..tensor import Tensor, apply


class RoPE(Op):
    """Rotary position embedding, rotate-half convention: y = x * cos + rotate_half(x) * sin.

    x is (..., T, hd); cos and sin are (T, hd) tables repeating [c, c] and [s, s] along hd
    (constants: they get no gradient).
    """

    name = "rope"
    fused = True  # runs backend primitive 17

    def forward(self, x, cos, sin):
        self.cos, self.sin = cos, sin
        return x.rope(cos, sin)

    def backward(self, g):
        # y = x cos + R x sin with R^T = -R and R commuting with the [s, s] table: dx = g cos - R(g) sin
        return g.rope(self.cos, self.sin, inverse=True), None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., T, hd) by the position tables cos, sin (T, hd)."""
    _check_rope(x, cos, sin)
    return apply(RoPE(), x, cos, sin)


def apply_rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The same from core ops: x * cos + cat(-x[..., hd/2:], x[..., :hd/2]) * sin."""
    _check_rope(x, cos, sin)
    half = x.shape[-1] // 2
    last = x.ndim - 1
    rotated = cat([-x.narrow(last, half, half), x.narrow(last, 0, half)], last)  # rotate_half(x)
    return x * cos + rotated * sin


def _check_rope(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    check_rope(x.shape, cos.shape, sin.shape)  # the shape rule, shared with the backends' rope (ShapeError)
    if cos.device != x.device or sin.device != x.device:
        raise DeviceError(f"rope: x {describe(x)} and cos {describe(cos)} are on different devices")
    if cos.dtype is not x.dtype or sin.dtype is not x.dtype:
        raise DTypeError(f"rope: x {describe(x)} and the tables cos {describe(cos)} differ in dtype")


class CausalSoftmax(Op):
    """softmax(scores * scale) over the last dim of (..., T, S) scores, where query row t sees the
    key columns s <= t + S - T only (S - T earlier positions come from a KV cache); the others get
    probability exactly 0. The backend skips the columns no row can see (contract item 14)."""

    name = "causal_softmax"
    fused = True  # runs backend primitive 14

    def __init__(self, scale: float):
        self.scale = scale

    def forward(self, scores):
        self.out = scores.softmax(causal=True, scale=self.scale)  # (..., T, S); the scale costs no pass
        return self.out

    def backward(self, g):
        # y = softmax(scale * s): ds = scale y (g - sum(g y)); masked entries have y = 0, so they get 0
        return (self.out.softmax_backward(g, causal=True, scale=self.scale),)


def causal_softmax(scores: Tensor, scale: float = 1.0) -> Tensor:
    """Causal attention probabilities softmax(scores * scale, dim=-1) for scores (..., T, S), S >= T."""
    if scores.ndim < 2 or scores.shape[-1] < scores.shape[-2]:
        raise ShapeError(f"causal_softmax: needs scores (..., T, S) with S >= T, got {describe(scores)}")
    if not scores.dtype.is_float:
        raise DTypeError(f"causal_softmax: needs floating-point scores, got {describe(scores)}")
    return apply(CausalSoftmax(float(scale)), scores)


def causal_softmax_reference(scores: Tensor, scale: float = 1.0) -> Tensor:
    """The same from core ops: a = where(s <= t + S - T, scores * scale, -inf), then the softmax
    exp(a - logsumexp(a)) (logsumexp subtracts the row max, so exp cannot overflow)."""
    T, S = scores.shape[-2], scores.shape[-1]
    visible = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)  # (T, S) bool
    mask = tensor(visible, device=scores.device)
    masked = where(mask, scores * scale, float("-inf"))  # (..., T, S)
    return (masked - masked.logsumexp(dim=-1, keepdim=True)).exp()


class CausalAttention(Op):
    """y = causal_softmax(scale q k^T) v for q (..., T, hd), k (..., S, hd), v (..., S, hv): one
    backend call forward (item 22), one backward; the probabilities p are kept for the backward."""

    name = "causal_attention"
    fused = True  # runs backend primitive 22

    def __init__(self, scale: float):
        self.scale = scale

    def forward(self, q, k, v):
        y, self.p = q.causal_attention(k, v, self.scale)  # (..., T, hv), (..., T, S)
        self.q, self.k, self.v = q, k, v
        return y

    def backward(self, g):
        # y = p v, p = softmax(s), s = scale q k^T: dv = p^T g, ds = p (g v^T - sum(g v^T p)),
        # dq = scale ds k, dk = scale ds^T q
        return self.q.causal_attention_backward(self.k, self.v, self.p, g, self.scale)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Causal attention softmax(scale q k^T + mask) v, scale 1/sqrt(hd) by default, for q (..., T, hd)
    and k (..., S, hd), v (..., S, hv) with S >= T: query t sees keys s <= t + S - T (the last T
    keys are the queries' own positions, the first S - T cached ones). Batch dims broadcast.

    Like PyTorch's F.scaled_dot_product_attention(q, k, v, is_causal=True) when S == T (for
    S > T PyTorch aligns the mask to the top left instead, which no KV cache wants)."""
    batch = _check_attention(q, k, v)
    q, k, v = (x if x.shape[:-2] == batch else x.broadcast_to(batch + x.shape[-2:]) for x in (q, k, v))
    return apply(CausalAttention(float(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)), q, k, v)


def causal_attention_reference(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """The same from core ops: causal_softmax_reference(q @ k^T, scale) @ v."""
    _check_attention(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return causal_softmax_reference(q @ k.transpose(-2, -1), scale) @ v


def _check_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, ...]:
    """The batch shape q, k and v broadcast to, or a ShapeError / DeviceError / DTypeError naming them."""
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2 or k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2] \
            or k.shape[-2] < q.shape[-2]:
        raise ShapeError(f"causal_attention: needs q (..., T, hd), k (..., S, hd), v (..., S, hv) with S >= T, "
                         f"got q {describe(q)}, k {describe(k)}, v {describe(v)}")
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ShapeError(f"causal_attention: the batch dims of q {describe(q)}, k {describe(k)} and "
                         f"v {describe(v)} do not broadcast") from None
    if k.device != q.device or v.device != q.device:
        raise DeviceError(f"causal_attention: q {describe(q)}, k {describe(k)} and v {describe(v)} "
                          f"are on different devices")
    if not q.dtype.is_float or k.dtype is not q.dtype or v.dtype is not q.dtype:
        raise DTypeError(f"causal_attention: needs q, k and v of one floating-point dtype, "
                         f"got q {describe(q)}, k {describe(k)}, v {describe(v)}")
    return batch

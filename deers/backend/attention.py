"""Causal attention (contract item 22) written from items 10 and 14, and the shape rule of its operands.

    y = p v with p = causal_softmax(scale q k^T): q (..., T, hd), k (..., S, hd), v (..., S, hv),
    S >= T, and query row t sees the key positions s <= t + S - T (the last T of S are the
    queries' own; the first S - T come from a KV cache).

The CUDA and MLX backends compute it this way, with their own GEMM and causal softmax; the
reference backend writes the same math over whole NumPy arrays, and the fast CPU backend has a
blocked kernel of its own (cpu_attention.py), tested against both.
Every operand is a (buffer, layout) pair of the calling backend, as in the contract.
"""
from __future__ import annotations

from typing import Any

from ..layout import Layout


def check_attention(lq: Layout, lk: Layout, lv: Layout) -> None:
    """q (..., T, hd), k (..., S, hd), v (..., S, hv) with one batch shape and S >= T, or ValueError."""
    if lq.ndim < 2 or lk.ndim != lq.ndim or lv.ndim != lq.ndim:
        raise ValueError(f"causal_attention: q, k and v must be (..., T, hd), (..., S, hd), (..., S, hv) "
                         f"of one rank, got shapes {lq.shape}, {lk.shape}, {lv.shape}")
    batch, (t, hd), (s, hk), (sv, _) = lq.shape[:-2], lq.shape[-2:], lk.shape[-2:], lv.shape[-2:]
    if lk.shape[:-2] != batch or lv.shape[:-2] != batch or hk != hd or sv != s or s < t:
        raise ValueError(f"causal_attention: q (..., T, hd), k (..., S, hd), v (..., S, hv) need one batch shape, "
                         f"one hd, one S and S >= T, got shapes {lq.shape}, {lk.shape}, {lv.shape}")


def transposed(layout: Layout) -> Layout:
    """The view with the last two dims swapped (a matrix transpose, no copy)."""
    axes = tuple(range(layout.ndim - 2)) + (layout.ndim - 1, layout.ndim - 2)
    return layout.permute(axes)


def causal_attention(backend: Any, q: Any, lq: Layout, k: Any, lk: Layout, v: Any, lv: Layout,
                     scale: float) -> tuple[Any, Any]:
    """(y, p) on `backend`: scores = q k^T, p = its causal softmax at `scale`, y = p v."""
    check_attention(lq, lk, lv)
    scores = Layout(lq.shape[:-1] + (lk.shape[-2],))  # (..., T, S), dense
    p = backend.softmax(backend.matmul(q, lq, k, transposed(lk)), scores, False, True, scale)
    return backend.matmul(p, scores, v, lv), p


def causal_attention_backward(backend: Any, q: Any, lq: Layout, k: Any, lk: Layout, v: Any, lv: Layout,
                              p: Any, lp: Layout, dy: Any, ldy: Layout, scale: float) -> tuple[Any, Any, Any]:
    """(dq, dk, dv) on `backend` from the forward's inputs, its p and the gradient dy of y."""
    check_attention(lq, lk, lv)
    scores = Layout(lp.shape)  # (..., T, S), dense
    dp = backend.matmul(dy, ldy, v, transposed(lv))  # y = p v: dp = dy v^T
    ds = backend.softmax_backward(p, lp, dp, scores, False, True, scale)  # d(q k^T), the scale included
    dq = backend.matmul(ds, scores, k, lk)  # dq = ds k
    dk = backend.matmul(ds, transposed(scores), q, lq)  # dk = ds^T q
    dv = backend.matmul(p, transposed(lp), dy, ldy)  # dv = p^T dy
    return dq, dk, dv

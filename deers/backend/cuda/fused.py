"""The fused primitives of the CUDA backend (contract items 14-18), one kernel each.

A base class of CUDABackend (backend.py), split off only to keep files short: its methods use the
backend's runtime `self.rt` and helpers. Each method computes in float (double for f64) and
returns buffers of the input dtype, like the CPU backend.
"""
from __future__ import annotations

import math

import numpy as np

from ...layout import Layout
from . import plan


def _acc(np_dtype) -> type:
    """NumPy type of a float dtype's compute type: float32 for f16/bf16/f32, float64 for f64."""
    return plan.ACC_NUMPY[plan.suffix(np_dtype)]


def _rows(layout: Layout) -> tuple[int, int]:
    """(rows, last dim) of a layout read row by row over its last dim."""
    cols = layout.shape[-1] if layout.shape else 1
    return math.prod(layout.shape[:-1]), cols


class FusedKernels:
    """softmax, cross_entropy, rmsnorm, rope and adamw_step on the GPU (contract items 14-18).

    Every operand comes as (buffer, layout); the kernels that read rows contiguously get their
    operands through `self._flat`, which copies only when the layout is not already dense.
    """

    # 14. softmax -------------------------------------------------------------------------------
    def softmax(self, a, la: Layout, log: bool, causal: bool = False):
        """(log-)softmax over the last dim of any layout. causal: `la` is (..., T, S) attention
        scores and query row t only sees key positions s <= t + S - T (the rest get probability 0,
        log -inf, and are never read; a row that sees nothing is all 0)."""
        if causal and la.ndim < 2:
            raise ValueError(f"softmax: causal needs (..., T, S) scores, got shape {la.shape}")
        rows, cols = _rows(la)
        out = self.rt.empty(la.numel, a.dtype)
        if out.size:
            meta = plan.row_meta(la.shape, la.strides, la.offset, len(la.shape) - 1)
            grid, block = plan.row_launch(rows, cols, cap=1024)
            causal_rows = np.int64(la.shape[-2] if causal else 0)
            self.rt.launch(plan.kernel("softmax", plan.suffix(a.dtype)), grid, block,
                           (np.int64(rows), np.int64(cols), out, a, self.rt.meta(meta), np.int32(log), causal_rows))
        return out

    def softmax_backward(self, y, ly: Layout, g, lg: Layout, log: bool, causal: bool = False):
        """softmax: y (g - sum(g y)); log_softmax: g - exp(y) sum(g). causal: y came from a causal
        softmax; masked entries get no gradient and their g is left out of the sum."""
        if causal and ly.ndim < 2:
            raise ValueError(f"softmax_backward: causal needs (..., T, S) scores, got shape {ly.shape}")
        rows, cols = _rows(ly)
        out = self.rt.empty(ly.numel, y.dtype)
        if out.size:
            y, g = self._flat(y, ly), self._flat(g, lg)
            grid, block = plan.row_launch(rows, cols, cap=1024)
            causal_rows = np.int64(ly.shape[-2] if causal else 0)
            self.rt.launch(plan.kernel("softmax_backward", plan.suffix(y.dtype)), grid, block,
                           (np.int64(rows), np.int64(cols), out, y, g, np.int32(log), causal_rows))
        return out

    # 15. cross-entropy -------------------------------------------------------------------------
    def cross_entropy(self, logits, llogits: Layout, targets, ltargets: Layout, ignore_index: int,
                      label_smoothing: float, overwrite_logits: bool = False):
        """(loss_sum, count, dlogits / count) in one pass over the logits per row; loss_sum a
        1-element f32 buffer (f64 for f64 logits) summed on the device, count a 1-element i64 buffer.

        Nothing waits for the device: a one-block kernel counts the rows that are not ignored and
        checks the targets, and a target outside [0, C) raises IndexError at the next sync point
        (deferred.py), as an out-of-range index does.
        """
        del overwrite_logits  # a memory hint the contract allows; this kernel writes a fresh gradient
        n, c = llogits.shape
        logits, targets = self._flat(logits, llogits), self._flat(targets, ltargets)
        acc = _acc(logits.dtype)
        grad = self.rt.empty(n * c, logits.dtype)
        count = self.rt.empty(1, np.dtype(np.int64))
        if n == 0:
            self._fill(count, 0)
            return self._zeros(1, np.dtype(acc)), count, grad
        _, block = plan.row_launch(1, n, cap=1024)
        self.rt.launch(plan.kernel("cross_entropy_targets", "i64"), (1,), block,
                       (np.int64(n), np.int64(c), targets, np.int64(ignore_index), count, self.errors.flag,
                        self.errors.call("cross_entropy", c)))
        losses = self.rt.empty(n, np.dtype(acc))  # 0 for ignored rows
        grid, block = plan.row_launch(n, c, cap=1024)
        self.rt.launch(plan.kernel("cross_entropy", plan.suffix(logits.dtype)), grid, block,
                       (np.int64(n), np.int64(c), grad, losses, logits, targets, np.int64(ignore_index),
                        acc(label_smoothing), count))
        return self.reduce("sum", losses, Layout((n,)), (0,)), count, grad

    # 16. RMSNorm -------------------------------------------------------------------------------
    def rmsnorm(self, x, lx: Layout, w, lw: Layout, eps: float):
        """(y, rstd) with rstd = 1/sqrt(mean(x^2) + eps) per row, kept in f32 (f64 for f64 inputs)."""
        rows, d = _rows(lx)
        y = self.rt.empty(rows * d, x.dtype)
        rstd = self.rt.empty(rows, np.dtype(_acc(x.dtype)))
        if rows and d:
            x, w = self._flat(x, lx), self._flat(w, lw)
            grid, block = plan.row_launch(rows, d)
            self.rt.launch(plan.kernel("rmsnorm_forward", plan.suffix(x.dtype)), grid, block,
                           (np.int64(rows), np.int64(d), y, rstd, x, w, _acc(x.dtype)(eps)))
        return y, rstd

    def rmsnorm_backward(self, g, lg: Layout, x, lx: Layout, w, lw: Layout, rstd, lrstd: Layout):
        """(dx, dw) in two launches: dx and dw's per-chunk column partials, then a finish (no atomics)."""
        sfx = plan.suffix(x.dtype)
        rows, d = _rows(lx)
        dx = self.rt.empty(rows * d, x.dtype)
        gw = self.rt.empty(d, w.dtype)
        if rows == 0 or d == 0:
            self._fill(gw, 0)
            return dx, gw
        g, x, w, rstd = self._flat(g, lg), self._flat(x, lx), self._flat(w, lw), self._flat(rstd, lrstd)
        chunk_rows, chunks, grid, block = plan.rmsnorm_backward_launch(rows, d)
        partial = self.rt.empty(chunks * d, np.dtype(_acc(x.dtype)))
        self.rt.launch(plan.kernel("rmsnorm_backward", sfx), grid, block,
                       (np.int64(rows), np.int64(d), np.int64(chunk_rows), dx, partial, g, x, w, rstd))
        grid, block = plan.elementwise_launch(d)
        self.rt.launch(plan.kernel("rmsnorm_weight_finish", sfx), grid, block,
                       (np.int64(d), np.int64(chunks), gw, partial))
        return dx, gw

    # 17. RoPE ----------------------------------------------------------------------------------
    def rope(self, x, lx: Layout, cos, lcos: Layout, sin, lsin: Layout, inverse: bool = False):
        """Rotate x (..., T, hd), any layout, by (T, hd) cos/sin tables in x's dtype, rotate-half
        convention; inverse applies the transpose (the backward). The kernel reads the first half of
        each table row only: the contract's tables repeat [c, c] / [s, s] along hd."""
        if lx.ndim < 2 or lx.shape[-1] % 2 or lcos.shape != lx.shape[-2:] or lsin.shape != lx.shape[-2:]:
            raise ValueError(f"rope: x of shape {lx.shape} needs an even last dim and cos/sin tables of shape "
                             f"{lx.shape[-2:]}, got {lcos.shape} and {lsin.shape}")
        if cos.dtype != x.dtype or sin.dtype != x.dtype:
            raise TypeError(f"rope: the tables ({cos.dtype}, {sin.dtype}) must have x's dtype {x.dtype}")
        seq_len, hd = lx.shape[-2], lx.shape[-1]
        out = self.rt.empty(lx.numel, x.dtype)
        pairs = lx.numel // 2
        if pairs:
            cos, sin = self._flat(cos, lcos), self._flat(sin, lsin)
            meta = plan.row_meta(lx.shape, lx.strides, lx.offset, len(lx.shape) - 1)
            self._elementwise(plan.kernel("rope", plan.suffix(x.dtype)), pairs,
                              (np.int64(pairs), np.int64(seq_len), np.int64(hd), out, x, self.rt.meta(meta), cos,
                               sin, np.int32(inverse)))
        return out

    # 18. AdamW ---------------------------------------------------------------------------------
    def adamw_step(self, param, lparam: Layout, grad, lgrad: Layout, m, lm: Layout, v, lv: Layout, lr: float,
                   beta1: float, beta2: float, eps: float, weight_decay: float, step: int) -> None:
        """In place on the dense param, m and v (param/grad of one dtype, m/v of one dtype); grad may
        be any layout of param's shape (compacted first)."""
        for buf, layout, what in ((param, lparam, "param"), (m, lm, "exp_avg"), (v, lv, "exp_avg_sq")):
            if layout.offset != 0 or not layout.is_contiguous() or layout.numel != buf.size:
                raise ValueError(f"adamw_step: {what} must be dense (offset 0, contiguous, covering its buffer "
                                 f"of {buf.size} elements), got {layout}")
        if grad.dtype != param.dtype or v.dtype != m.dtype:
            raise TypeError(f"adamw_step: grad ({grad.dtype}) must match param ({param.dtype}) and "
                            f"v ({v.dtype}) must match m ({m.dtype})")
        k = plan.kernel("adamw", plan.suffix(param.dtype), plan.suffix(m.dtype))
        grad = self._flat(grad, lgrad)
        f64 = np.float64
        self._elementwise(k, param.size, (np.int64(param.size), param, grad, m, v, f64(lr), f64(beta1), f64(beta2),
                                          f64(eps), f64(weight_decay), f64(1.0 - beta1 ** step),
                                          f64(1.0 - beta2 ** step)))

"""The fused primitives of the CUDA backend (contract items 14-17, plus RoPE), one kernel each.

A base class of CUDABackend (backend.py), split off only to keep files short: its methods use the
backend's runtime `self.rt` and helpers. Each method computes in float (double for f64) and
returns buffers of the input dtype, like the CPU backend.
"""
from __future__ import annotations

import numpy as np

from ...layout import Layout
from . import plan


def _acc(np_dtype) -> type:
    """NumPy type of a float dtype's compute type: float32 for f16/bf16/f32, float64 for f64."""
    return plan.ACC_NUMPY[plan.suffix(np_dtype)]


class FusedKernels:
    """softmax, cross_entropy, rmsnorm, rope and adamw_step on the GPU."""

    # 14. softmax -------------------------------------------------------------------------------
    def softmax(self, a, la: Layout, log: bool, causal: bool = False):
        """(log-)softmax over the last dim of any layout. causal: `la` is (..., T, S) attention
        scores and query row t only sees key positions s <= t + S - T (the rest get probability 0)."""
        cols = la.shape[-1]
        rows = la.numel // max(cols, 1)
        out = self.rt.empty(la.numel, a.dtype)
        if out.size:
            meta = plan.row_meta(la.shape, la.strides, la.offset, len(la.shape) - 1)
            grid, block = plan.row_launch(rows, cols, cap=1024)
            causal_rows = np.int64(la.shape[-2] if causal else 0)
            self.rt.launch(plan.kernel("softmax", plan.suffix(a.dtype)), grid, block,
                           (np.int64(rows), np.int64(cols), out, a, self.rt.meta(meta), np.int32(log), causal_rows))
        return out

    def softmax_backward(self, y, g, shape: tuple[int, ...], log: bool, causal: bool = False):
        """softmax: y (g - sum(g y)); log_softmax: g - exp(y) sum(g); y and g contiguous."""
        cols = shape[-1]
        rows = y.size // max(cols, 1)
        out = self.rt.empty(y.size, y.dtype)
        if out.size:
            grid, block = plan.row_launch(rows, cols, cap=1024)
            causal_rows = np.int64(shape[-2] if causal else 0)
            self.rt.launch(plan.kernel("softmax_backward", plan.suffix(y.dtype)), grid, block,
                           (np.int64(rows), np.int64(cols), out, y, g, np.int32(log), causal_rows))
        return out

    # 15. cross-entropy -------------------------------------------------------------------------
    def cross_entropy(self, logits, targets, n: int, c: int, ignore_index: int,
                      label_smoothing: float, overwrite_logits: bool = False) -> tuple[float, int, object]:
        """(summed loss, counted rows, gradient / count) in one pass over the logits per row.

        The targets are copied to the host first (n int64s) to count the rows and range-check
        them exactly as the CPU backend does; the per-row losses come back and are summed in f64.
        """
        del overwrite_logits  # a memory hint the contract allows; this kernel writes a fresh gradient
        host_targets = self.rt.download(targets)[:n]
        valid = host_targets != ignore_index
        count = int(valid.sum())
        picked = host_targets[valid]
        if picked.size and (picked.min() < 0 or picked.max() >= c):
            raise IndexError(f"cross_entropy: target out of range for {c} classes "
                             f"(got values in [{picked.min()}, {picked.max()}])")
        grad = self.rt.empty(n * c, logits.dtype)
        if n == 0:
            return 0.0, 0, grad
        acc = _acc(logits.dtype)
        losses = self.rt.empty(n, np.dtype(acc))
        grid, block = plan.row_launch(n, c, cap=1024)
        self.rt.launch(plan.kernel("cross_entropy", plan.suffix(logits.dtype)), grid, block,
                       (np.int64(n), np.int64(c), grad, losses, logits, targets, np.int64(ignore_index),
                        acc(label_smoothing), acc(1.0 / max(count, 1))))
        loss_sum = float(self.rt.download(losses)[valid].sum(dtype=np.float64))
        return loss_sum, count, grad

    # 16. RMSNorm -------------------------------------------------------------------------------
    def rmsnorm(self, x, w, rows: int, d: int, eps: float):
        """(y, rstd) with rstd = 1/sqrt(mean(x^2) + eps) per row, kept in f32 (f64 for f64 inputs)."""
        y = self.rt.empty(rows * d, x.dtype)
        rstd = self.rt.empty(rows, np.dtype(_acc(x.dtype)))
        if rows and d:
            grid, block = plan.row_launch(rows, d)
            self.rt.launch(plan.kernel("rmsnorm_forward", plan.suffix(x.dtype)), grid, block,
                           (np.int64(rows), np.int64(d), y, rstd, x, w, _acc(x.dtype)(eps)))
        return y, rstd

    def rmsnorm_backward(self, g, x, w, rstd, rows: int, d: int):
        """(dx, dw): one block per row for dx; dw from per-chunk column partials, then a finish."""
        sfx = plan.suffix(x.dtype)
        dx = self.rt.empty(rows * d, x.dtype)
        gw = self.rt.empty(d, w.dtype)
        if rows == 0 or d == 0:
            self._fill(gw, 0)
            return dx, gw
        grid, block = plan.row_launch(rows, d)
        self.rt.launch(plan.kernel("rmsnorm_backward", sfx), grid, block,
                       (np.int64(rows), np.int64(d), dx, g, x, w, rstd))
        chunk_rows, chunks, grid, block = plan.rmsnorm_weight_launch(rows, d)
        partial = self.rt.empty(chunks * d, np.dtype(_acc(x.dtype)))
        self.rt.launch(plan.kernel("rmsnorm_weight_partial", sfx), grid, block,
                       (np.int64(rows), np.int64(d), np.int64(chunk_rows), partial, g, x, rstd))
        grid, block = plan.elementwise_launch(d)
        self.rt.launch(plan.kernel("rmsnorm_weight_finish", sfx), grid, block,
                       (np.int64(d), np.int64(chunks), gw, partial))
        return dx, gw

    # RoPE (beyond the numbered contract: the attention op may call it when a backend has it) ----
    def rope(self, x, lx: Layout, cos, sin, inverse: bool = False):
        """Rotate x (..., T, hd) by contiguous (T, hd) cos/sin tables in x's dtype, rotate-half
        convention; inverse applies the transpose (the backward). Returns a contiguous buffer."""
        seq_len, hd = lx.shape[-2], lx.shape[-1]
        if hd % 2:
            raise ValueError(f"rope: the last dim must be even, got shape {lx.shape}")
        out = self.rt.empty(lx.numel, x.dtype)
        pairs = lx.numel // 2
        meta = plan.row_meta(lx.shape, lx.strides, lx.offset, len(lx.shape) - 1)
        self._elementwise(plan.kernel("rope", plan.suffix(x.dtype)), pairs,
                          (np.int64(pairs), np.int64(seq_len), np.int64(hd), out, x, self.rt.meta(meta), cos, sin,
                           np.int32(inverse)))
        return out

    # 17. AdamW ---------------------------------------------------------------------------------
    def adamw_step(self, param, grad, m, v, lr: float, beta1: float, beta2: float, eps: float,
                   weight_decay: float, step: int) -> None:
        """In-place AdamW on flat buffers (param/grad of one dtype, m/v of one dtype)."""
        k = plan.kernel("adamw", plan.suffix(param.dtype), plan.suffix(m.dtype))
        if grad.dtype != param.dtype or v.dtype != m.dtype:
            raise TypeError(f"adamw_step: grad ({grad.dtype}) must match param ({param.dtype}) and "
                            f"v ({v.dtype}) must match m ({m.dtype})")
        f64 = np.float64
        self._elementwise(k, param.size, (np.int64(param.size), param, grad, m, v, f64(lr), f64(beta1), f64(beta2),
                                          f64(eps), f64(weight_decay), f64(1.0 - beta1 ** step),
                                          f64(1.0 - beta2 ** step)))

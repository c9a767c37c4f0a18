"""The fused primitives of the CUDA backend (contract items 14-20), one kernel each.

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
    """softmax, cross_entropy, rmsnorm, rope, adamw_step, sum_of_squares and scale_ on the GPU (items 14-20).

    Every operand comes as (buffer, layout); the kernels that read rows contiguously get their
    operands through `self._flat`, which copies only when the layout is not already dense.
    """

    # 14. softmax -------------------------------------------------------------------------------
    def softmax(self, a, la: Layout, log: bool, causal: bool = False, scale: float = 1.0):
        """(log-)softmax of scale * a over the last dim of any layout (the scale in the same launch).
        causal: `la` is (..., T, S) attention scores and query row t only sees key positions
        s <= t + S - T (the rest get probability 0, log -inf, and are never read; a row that sees
        nothing is all 0)."""
        if causal and la.ndim < 2:
            raise ValueError(f"softmax: causal needs (..., T, S) scores, got shape {la.shape}")
        rows, cols = _rows(la)
        out = self.rt.empty(la.numel, a.dtype)
        if out.size:
            meta = plan.row_meta(la.shape, la.strides, la.offset, len(la.shape) - 1)
            grid, block = plan.row_launch(rows, cols, cap=1024)
            causal_rows = np.int64(la.shape[-2] if causal else 0)
            self.rt.launch(plan.kernel("softmax", plan.suffix(a.dtype)), grid, block,
                           (np.int64(rows), np.int64(cols), out, a, self.rt.meta(meta), np.int32(log), causal_rows,
                            np.float64(scale)))
        return out

    def softmax_backward(self, y, ly: Layout, g, lg: Layout, log: bool, causal: bool = False, scale: float = 1.0):
        """softmax: scale y (g - sum(g y)); log_softmax: scale (g - exp(y) sum(g)). causal: y came from a causal
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
                           (np.int64(rows), np.int64(cols), out, y, g, np.int32(log), causal_rows, np.float64(scale)))
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

    # 18-20. multi-tensor: AdamW and gradient clipping over many arrays in one launch --------------
    def adamw_step(self, params, grads, exp_avgs, exp_avg_sqs, lr: float, beta1: float, beta2: float, eps: float,
                   weight_decay: float, step: int) -> None:
        """One launch for every (param, grad, m, v): in place on the dense params and moments (one
        param/grad dtype, one moment dtype per call); a grad of another layout is compacted first."""
        flat_grads = []
        for (param, lparam), (grad, lgrad), (m, lm), (v, lv) in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            for buf, layout, what in ((param, lparam, "param"), (m, lm, "exp_avg"), (v, lv, "exp_avg_sq")):
                _check_dense("adamw_step", buf, layout, what)
            if grad.dtype != param.dtype or v.dtype != m.dtype:
                raise TypeError(f"adamw_step: grad ({grad.dtype}) must match param ({param.dtype}) and "
                                f"v ({v.dtype}) must match m ({m.dtype})")
            flat_grads.append(self._flat(grad, lgrad))  # kept alive until the launch is queued
        if not params:
            return
        buffers = [[p for p, _ in params], flat_grads, [m for m, _ in exp_avgs], [v for v, _ in exp_avg_sqs]]
        dtypes = {(p.dtype, m.dtype) for p, m in zip(buffers[0], buffers[2])}
        if len(dtypes) != 1:
            raise TypeError(f"adamw_step: one call takes one parameter dtype and one moment dtype, got {dtypes}")
        k = plan.kernel("adamw", plan.suffix(buffers[0][0].dtype), plan.suffix(buffers[2][0].dtype))
        table, total = self._table(buffers)
        if total:
            f64 = np.float64
            grid, block = plan.multi_tensor_launch(total)
            self.rt.launch(k, grid, block, (table, f64(lr), f64(beta1), f64(beta2), f64(eps), f64(weight_decay),
                                            f64(1.0 - beta1 ** step), f64(1.0 - beta2 ** step)))

    def sum_of_squares(self, arrays):
        """sum(x^2) over all arrays into a 1-element f32 buffer (f64 when any array is f64): one
        partial-sum launch per dtype among the arrays, then one launch adding the partials in a
        fixed order (bit-identical from run to run)."""
        acc = np.float64 if any(buf.dtype == np.float64 for buf, _ in arrays) else np.float32
        by_dtype: dict = {}  # dtype -> flat buffers (compacted when not dense)
        for buf, layout in arrays:
            by_dtype.setdefault(buf.dtype, []).append(self._flat(buf, layout))
        launches = []
        for dtype, bufs in by_dtype.items():
            table, total = self._table([bufs])
            if total:
                launches.append((dtype, table, plan.multi_tensor_launch(total, plan.MULTI_TENSOR_PARTIALS)))
        out = self.rt.empty(1, acc)
        partials = self.rt.empty(max(1, sum(grid[0] for _, _, (grid, _) in launches)), acc)
        first = 0
        for dtype, table, (grid, block) in launches:
            k = plan.kernel("sum_of_squares", plan.suffix(dtype), plan.suffix(acc))
            self.rt.launch(k, grid, block, (table, partials, np.int64(first)))
            first += grid[0]
        self.rt.launch(plan.kernel("sum_partials", plan.suffix(acc)), (1,), (1024,), (np.int64(first), partials, out))
        return out

    def scale_(self, arrays, factor) -> None:
        """Every dense array *= factor[0] in place: one launch per dtype among the arrays."""
        by_dtype: dict = {}
        for buf, layout in arrays:
            _check_dense("scale_", buf, layout, "array")
            by_dtype.setdefault(buf.dtype, []).append(buf)
        for dtype, bufs in by_dtype.items():
            table, total = self._table([bufs])
            if total:
                grid, block = plan.multi_tensor_launch(total)
                k = plan.kernel("scale", plan.suffix(dtype), plan.suffix(factor.dtype))
                self.rt.launch(k, grid, block, (table, factor))

    def _table(self, slots: list[list]) -> tuple[object, int]:
        """The device table of multi_tensor.cu for arrays given per slot (each slot: one dense
        buffer per array), and the arrays' total element count. Cached like a layout meta: the
        addresses repeat from step to step (CuPy's memory pool hands the same blocks back)."""
        sizes = tuple(buf.size for buf in slots[0])
        addresses = tuple(tuple(self.rt.address(buf) for buf in slot) for slot in slots)
        return self.rt.meta(plan.multi_tensor_table(sizes, addresses)), sum(sizes)


def _check_dense(op: str, buf, layout: Layout, what: str) -> None:
    if layout.offset != 0 or not layout.is_contiguous() or layout.numel != buf.size:
        raise ValueError(f"{op}: {what} must be dense (offset 0, contiguous, covering its buffer "
                         f"of {buf.size} elements), got {layout}")

"""The CUDA backend: the numbered primitives of `deers.backend` on a GPU.

Buffers are flat 1-D CuPy arrays. Every primitive reads its operands through their layouts as
they are (permuted, broadcast, narrowed) with hand-written kernels from this folder's .cu files;
matmul goes to cuBLAS (the call planned from the layouts in gemm.py). The host side of each
kernel call (which kernel, how the layout is packed, launch sizes) is in plan.py; memory, transfers and launches go through a runtime object (kernels.py), so
this file has no CuPy call of its own. The fused kernels (softmax, cross-entropy, RMSNorm, RoPE,
AdamW) are in fused.py.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ...dtype import DType, as_dtype, i64
from ...errors import BackendUnavailable
from ...layout import Layout
from .. import attention, not_implemented
from . import gemm, plan
from .deferred import DeferredErrors
from .fused import FusedKernels


class MatmulSettings:
    """Process-wide GEMM switches, set through `set_allow_tf32` (like torch.backends.cuda.matmul)."""

    allow_tf32 = False


def set_allow_tf32(allow: bool) -> None:
    """Let float32 matmuls use TF32 tensor cores (about 10 mantissa bits; off by default)."""
    MatmulSettings.allow_tf32 = bool(allow)


def get_allow_tf32() -> bool:
    return MatmulSettings.allow_tf32


def _cupy_runtime(index: int):
    try:
        from .kernels import CupyRuntime
    except ImportError as exc:
        raise BackendUnavailable(
            f"device cuda:{index} needs CuPy: pip install 'deers[cuda12]' (or 'deers[cuda13]') ({exc})") from exc
    return CupyRuntime(index)


class CUDABackend(FusedKernels):
    """CuPy/CUDA implementation of the backend contract (see deers.backend).

    `runtime` defaults to the CuPy runtime of GPU `index`; the tests pass a CPU emulation of it.
    `name` is "cuda:{index}": random-number states are saved and restored per GPU by it.
    """

    unary_names = frozenset(plan.UNARY_OPS)  # the UnaryFn names with a kernel code in elementwise.cu

    def __init__(self, index: int = 0, runtime=None):
        self.index = index
        self.name = f"cuda:{index}"
        self.rt = runtime if runtime is not None else _cupy_runtime(index)
        self.errors = DeferredErrors(self)  # out-of-range indices, raised at the next sync point
        self.seed(int.from_bytes(os.urandom(8), "little"))

    # ---- helpers -------------------------------------------------------------------------------
    def _zeros(self, numel: int, np_dtype: np.dtype):
        buf = self.rt.empty(numel, np_dtype)
        self._fill(buf, 0)
        return buf

    def _fill(self, buf, value) -> None:
        if buf.size:
            k = plan.kernel("fill", plan.suffix(buf.dtype))
            grid, block = plan.elementwise_launch(buf.size)
            self.rt.launch(k, grid, block, (np.int64(buf.size), buf, plan.scalar_arg(value, buf.dtype)))

    def _elementwise(self, k: plan.Kernel, n: int, args: tuple) -> None:
        if n:
            grid, block = plan.elementwise_launch(n)
            self.rt.launch(k, grid, block, args)

    def _flat(self, buf, layout: Layout):
        """A buffer holding exactly the layout's elements in row-major order (no copy if it is one)."""
        if layout.offset == 0 and layout.numel == buf.size and layout.is_contiguous():
            return buf
        out = self.rt.empty(layout.numel, buf.dtype)
        self._copy_kernel(buf, layout, out, Layout(layout.shape))
        return out

    def _copy_kernel(self, src, lsrc: Layout, dst, ldst: Layout) -> None:
        k = plan.kernel("copy", plan.suffix(src.dtype), plan.suffix(dst.dtype))
        meta = plan.elementwise_meta(ldst.shape, [(ldst.offset, ldst.strides), (lsrc.offset, lsrc.strides)])
        self._elementwise(k, ldst.numel, (np.int64(ldst.numel), dst, src, self.rt.meta(meta)))

    # 1. allocation ---------------------------------------------------------------------------
    def empty(self, numel: int, dtype: DType):
        return self.rt.empty(numel, dtype.numpy)

    def full(self, numel: int, value, dtype: DType):
        buf = self.rt.empty(numel, dtype.numpy)
        self._fill(buf, value)
        return buf

    # 2. host transfer --------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray, dtype: DType):
        return self.rt.upload(np.ascontiguousarray(array, dtype=dtype.numpy).reshape(-1))

    def to_numpy(self, buf, layout: Layout) -> np.ndarray:
        """The host copy waits for the device: the moment to raise a kernel's deferred IndexError."""
        host = self.rt.download(self._flat(buf, layout)).reshape(layout.shape)
        self.errors.raise_pending()
        return host

    # 3. random: Philox4x32-10 with state (seed, offset), see random.cu ------------------------
    def seed(self, seed: int) -> None:
        self.rng_state = {"seed": int(seed) & ((1 << 64) - 1), "offset": 0}

    def get_rng_state(self) -> dict:
        return dict(self.rng_state)

    def set_rng_state(self, state: dict) -> None:
        self.rng_state = {"seed": int(state["seed"]), "offset": int(state["offset"])}

    def _random(self, family: str, numel: int, np_dtype, extra: tuple = ()):
        out = self.rt.empty(numel, np_dtype)
        k = plan.kernel(family, plan.suffix(np_dtype))
        key0, key1 = plan.philox_key(self.rng_state["seed"])
        offset = np.uint64(self.rng_state["offset"])
        self._elementwise(k, numel, (np.int64(numel), out, key0, key1, offset) + extra)
        self.rng_state["offset"] += numel
        return out

    def randn(self, numel: int, dtype: DType):
        return self._random("random_normal", numel, dtype.numpy)

    def rand(self, numel: int, dtype: DType):
        return self._random("random_uniform", numel, dtype.numpy)

    def randint(self, numel: int, low: int, high: int):
        if high <= low:
            raise ValueError(f"randint: high ({high}) must be greater than low ({low})")
        return self._random("random_int", numel, np.dtype(np.int64), (np.int64(low), np.uint64(high - low)))

    # 4-8. element-wise -------------------------------------------------------------------------
    def unary(self, name: str, a, la: Layout, out=None):
        if name not in self.unary_names:
            raise not_implemented(name, self)
        sfx = plan.suffix(a.dtype)
        if name == "bitwise_not" and sfx == "bool":  # not b is b ^ true (the bool kernels compute in int)
            return self.scalar("bitwise_xor", a, la, True, out=out)
        code = plan.unary_code(name, sfx)
        res = self.rt.empty(la.numel, a.dtype) if out is None else out
        meta = plan.elementwise_meta(la.shape, [(la.offset, la.strides)])
        self._elementwise(plan.kernel("unary", sfx, op=name), la.numel,
                          (np.int32(code), np.int64(la.numel), res, a, self.rt.meta(meta)))
        return res

    def binary(self, name: str, a, la: Layout, b, lb: Layout, out=None):
        sfx = plan.suffix(a.dtype)
        meta = self.rt.meta(plan.elementwise_meta(la.shape, [(la.offset, la.strides), (lb.offset, lb.strides)]))
        n = np.int64(la.numel)
        if name in plan.COMPARE_OPS:
            res = self.rt.empty(la.numel, np.dtype(np.bool_)) if out is None else out
            k = plan.kernel("compare", sfx, op=name)
            self._elementwise(k, la.numel, (np.int32(plan.COMPARE_OPS[name]), n, res, a, b, meta))
            return res
        code = plan.binary_code(name, sfx)
        res = self.rt.empty(la.numel, a.dtype) if out is None else out
        self._elementwise(plan.kernel("binary", sfx, op=name), la.numel, (np.int32(code), n, res, a, b, meta))
        return res

    def scalar(self, name: str, a, la: Layout, value, reverse: bool = False, out=None):
        sfx = plan.suffix(a.dtype)
        meta = self.rt.meta(plan.elementwise_meta(la.shape, [(la.offset, la.strides)]))
        n = np.int64(la.numel)
        if name in plan.COMPARE_OPS:
            res = self.rt.empty(la.numel, np.dtype(np.bool_)) if out is None else out
            op = plan.FLIPPED_COMPARE[name] if reverse else name
            if sfx in plan.FLOATS:
                value = plan.scalar_arg(value, a.dtype)
            else:
                decided = plan.integer_compare(op, value)
                if isinstance(decided, bool):  # e.g. integers == 2.5: a constant
                    self._fill(res, decided)
                    return res
                op, value = decided
                value = plan.ACC_NUMPY[sfx](value)
            k = plan.kernel("compare_scalar", sfx, op=name)
            self._elementwise(k, la.numel, (np.int32(plan.COMPARE_OPS[op]), n, res, a, value, meta))
            return res
        code = plan.binary_code(name, sfx)
        res = self.rt.empty(la.numel, a.dtype) if out is None else out
        args = (np.int32(code), n, res, a, plan.scalar_arg(value, a.dtype), np.int32(reverse), meta)
        self._elementwise(plan.kernel("scalar", sfx, op=name), la.numel, args)
        return res

    def where(self, c, lc: Layout, a, la: Layout, b, lb: Layout):
        if c.dtype != np.bool_:
            c, lc = self.scalar("ne", c, lc, 0), Layout(lc.shape)
        res = self.rt.empty(la.numel, a.dtype)
        meta = plan.elementwise_meta(la.shape, [(lc.offset, lc.strides), (la.offset, la.strides),
                                                (lb.offset, lb.strides)])
        self._elementwise(plan.kernel("where", plan.suffix(a.dtype)), la.numel,
                          (np.int64(la.numel), res, c, a, b, self.rt.meta(meta)))
        return res

    def cast(self, a, la: Layout, dtype: DType):
        out = self.rt.empty(la.numel, dtype.numpy)
        self._copy_kernel(a, la, out, Layout(la.shape))
        return out

    # 9. reductions -----------------------------------------------------------------------------
    def reduce(self, name: str, a, la: Layout, axes: tuple[int, ...]):
        sfx = plan.suffix(a.dtype)
        if sfx in ("u8", "bool"):  # reduce in i64 (sum keeps i64; max/min/argmax go back)
            wide = self.reduce(name, self.cast(a, la, i64), Layout(la.shape), axes)
            if name in ("sum", "argmax"):
                return wide
            return self.cast(wide, Layout((wide.size,)), _dtype_of(a.dtype))
        rows = math.prod(s for d, s in enumerate(la.shape) if d not in axes)
        cols = math.prod(la.shape[d] for d in axes)
        out_dtype = np.dtype(np.int64) if name == "argmax" else a.dtype
        if rows == 0:
            return self.rt.empty(0, out_dtype)
        if cols == 0:
            if name != "sum":
                raise ValueError(f"{name}: zero-size reduction over axes {axes} of shape {la.shape} has no identity")
            return self._zeros(rows, a.dtype)
        exact = name != "sum" or sfx in ("f32", "f64", "i64")
        p = plan.reduction_plan(la.shape, la.strides, la.offset, tuple(axes), exact)
        meta = self.rt.meta(p.meta)
        if name == "argmax":
            out = self.rt.empty(rows, out_dtype)
            grid, block = plan.row_launch(rows, cols)
            self.rt.launch(plan.kernel("argmax_rows", sfx), grid, block, (np.int64(rows), np.int64(cols), out, a, meta))
            return out
        op = np.int32(plan.REDUCE_OPS[name])
        if p.kind == "cols":
            out = self.rt.empty(rows, out_dtype)
            self._elementwise(plan.kernel("reduce_cols", sfx), rows, (op, np.int64(rows), np.int64(cols), out, a, meta))
            return out
        out = self.rt.empty(rows * p.split, out_dtype)
        grid, block = plan.row_launch(rows * p.split, -(-cols // p.split))
        self.rt.launch(plan.kernel("reduce_rows", sfx), grid, block,
                       (op, np.int64(rows), np.int64(cols), np.int64(p.split), out, a, meta))
        if p.split > 1:  # reduce the (rows, split) partial results
            return self.reduce(name, out, Layout((rows, p.split)), (1,))
        return out

    # 10. matmul --------------------------------------------------------------------------------
    def matmul(self, a, la: Layout, b, lb: Layout, acc=None):
        """Float GEMMs go straight to cuBLAS (gemm.py) reading both operands through their layouts:
        transposed views as transpose flags, broadcast batches as stride 0, in one
        cublasGemmStridedBatchedEx; batch dims that do not collapse to one stride as one
        pointer-array cublas<S|D>gemmBatched (f32/f64) or a few strided-batched calls over the
        inner batch dims (f16/bf16); only an operand none of these can express is copied.
        f16/bf16 multiply on tensor cores and accumulate in f32; f32 uses TF32 when
        `set_allow_tf32(True)`, for every GEMM alike. With `acc` every call runs with beta = 1:
        the product is added into acc (no temporary, no add kernel)."""
        out_shape = la.shape[:-1] + (lb.shape[-1],)
        sfx = plan.suffix(a.dtype)
        if acc is not None:
            if acc.size != math.prod(out_shape) or acc.dtype != a.dtype:
                raise ValueError(f"matmul: acc must be a buffer of {math.prod(out_shape)} {a.dtype} elements, "
                                 f"got {acc.size} {acc.dtype}")
            if sfx not in plan.FLOATS or la.shape[-1] == 0:  # integers (no cuBLAS), or nothing to add
                if la.shape[-1]:
                    dense = Layout((acc.size,))
                    self.binary("add", acc, dense, self.matmul(a, la, b, lb), dense, out=acc)
                return acc
        out = acc if acc is not None else self.rt.empty(math.prod(out_shape), a.dtype)
        accumulate = acc is not None
        if out.size == 0:
            return out
        if sfx not in plan.FLOATS:  # cuBLAS has no integer GEMM: CuPy's matmul on strided views
            x_shape, x_strides = plan.matmul_operand(la.shape, la.strides)
            y_shape, y_strides = plan.matmul_operand(lb.shape, lb.strides)
            x = self.rt.view(a, x_shape, x_strides, la.offset)
            y = self.rt.view(b, y_shape, y_strides, lb.offset)
            self.rt.matmul(x, y, out.reshape(out_shape))
            return out
        if la.shape[-1] == 0:  # k = 0: a sum of nothing
            self._fill(out, 0)
            return out
        pointer_arrays = sfx in gemm.POINTER_ARRAY_DTYPES
        call = gemm.plan_gemm(la.shape, la.strides, la.offset, lb.shape, lb.strides, lb.offset, pointer_arrays)
        if isinstance(call, gemm.BatchedGemm):
            self.rt.gemm_batched(call, a, b, out, sfx, MatmulSettings.allow_tf32, accumulate)
            return out
        if isinstance(call, gemm.SplitGemm):  # f16/bf16 batch dims that do not collapse: a few calls
            for part in call.calls:
                self.rt.gemm(part, a, b, out, sfx, MatmulSettings.allow_tf32, accumulate)
            return out
        if not isinstance(call, gemm.Gemm):  # copy only the operand(s) cuBLAS cannot read as they are
            copy_a, copy_b = call
            if copy_a:
                a, la = self._flat(a, la), Layout(la.shape)
            if copy_b:
                b, lb = self._flat(b, lb), Layout(lb.shape)
            call = gemm.plan_gemm(la.shape, la.strides, la.offset, lb.shape, lb.strides, lb.offset)
        self.rt.gemm(call, a, b, out, sfx, MatmulSettings.allow_tf32, accumulate)
        return out

    # 11-12. indexing ---------------------------------------------------------------------------
    def _index_copy(self, op: str, a, la: Layout, dim: int, idx, shape: tuple[int, ...], per_element: bool):
        """out (contiguous, `shape`) = a read at the index along dim; the index kernels of indexing.cu."""
        out = self.rt.empty(math.prod(shape), a.dtype)
        if out.size:
            meta = plan.index_meta(shape, dim, la.shape[dim], (la.offset, la.strides), plan.dense(shape))
            self._elementwise(plan.kernel("index_copy", plan.suffix(a.dtype)), out.size,
                              (np.int64(out.size), out, a, idx, self.rt.meta(meta), np.int32(per_element),
                               self.errors.flag, self.errors.call(op, la.shape[dim])))
        return out

    def _index_accumulate(self, op: str, shape: tuple[int, ...], dtype: DType, dim: int, idx, src, lsrc: Layout,
                          per_element: bool):
        """zeros(shape) with src added at the index along dim (atomics in f32/f64/i64)."""
        sfx = plan.suffix(dtype.numpy)
        acc = {"f16": "f32", "bf16": "f32", "u8": "i64", "bool": "i64"}.get(sfx, sfx)
        acc_dtype = np.dtype({"f32": np.float32, "f64": np.float64, "i64": np.int64}[acc])
        if src.dtype != acc_dtype:
            src, lsrc = self.cast(src, lsrc, _dtype_of(acc_dtype)), Layout(lsrc.shape)
        out = self._zeros(math.prod(shape), acc_dtype)
        if lsrc.numel:
            meta = plan.index_meta(lsrc.shape, dim, shape[dim], (lsrc.offset, lsrc.strides), plan.dense(shape))
            self._elementwise(plan.kernel("index_accumulate", acc), lsrc.numel,
                              (np.int64(lsrc.numel), out, src, idx, self.rt.meta(meta), np.int32(per_element),
                               self.errors.flag, self.errors.call(op, shape[dim])))
        return out if acc_dtype == dtype.numpy else self.cast(out, Layout((out.size,)), dtype)

    def index_select(self, a, la: Layout, dim: int, idx, lidx: Layout):
        shape = la.shape[:dim] + (lidx.numel,) + la.shape[dim + 1:]
        return self._index_copy("index_select", a, la, dim, self._flat(idx, lidx), shape, per_element=False)

    def index_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx, lidx: Layout, src, lsrc: Layout):
        return self._index_accumulate("index_add", tuple(shape), dtype, dim, self._flat(idx, lidx), src, lsrc,
                                      per_element=False)

    def gather(self, a, la: Layout, dim: int, idx, lidx: Layout):
        return self._index_copy("gather", a, la, dim, self._flat(idx, lidx), lidx.shape, per_element=True)

    def scatter_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx, lidx: Layout, src, lsrc: Layout):
        return self._index_accumulate("scatter_add", tuple(shape), dtype, dim, self._flat(idx, lidx), src, lsrc,
                                      per_element=True)

    # 13. copy ----------------------------------------------------------------------------------
    def copy(self, src, lsrc: Layout, dst, ldst: Layout) -> None:
        if lsrc.shape != ldst.shape:
            lsrc = lsrc.broadcast_to(ldst.shape)
        if src is dst and _overlap(lsrc, ldst):  # x[1:] = x[:-1]: read everything before writing
            src, lsrc = self.cast(src, lsrc, _dtype_of(src.dtype)), Layout(lsrc.shape)
        self._copy_kernel(src, lsrc, dst, ldst)

    # 21. synchronize ---------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for every kernel queued on this GPU (for timing); raises a kernel's deferred IndexError."""
        self.rt.synchronize()
        self.errors.raise_pending()

    # 22. causal attention ----------------------------------------------------------------------
    def causal_attention(self, q, lq: Layout, k, lk: Layout, v, lv: Layout, scale: float):
        """(y, p): two cuBLAS GEMMs around the causal softmax kernel (attention.py)."""
        return attention.causal_attention(self, q, lq, k, lk, v, lv, scale)

    def causal_attention_backward(self, q, lq: Layout, k, lk: Layout, v, lv: Layout, p, lp: Layout, dy,
                                  ldy: Layout, scale: float):
        """(dq, dk, dv): four cuBLAS GEMMs and the causal softmax backward kernel (attention.py)."""
        return attention.causal_attention_backward(self, q, lq, k, lk, v, lv, p, lp, dy, ldy, scale)


def _dtype_of(np_dtype) -> DType:
    return as_dtype(np.dtype(np_dtype))


def _overlap(a: Layout, b: Layout) -> bool:
    """Whether two views of one buffer may touch a common element (by their spans)."""
    if a.numel == 0 or b.numel == 0:
        return False
    return a.offset < b.offset + b.span() and b.offset < a.offset + a.span()

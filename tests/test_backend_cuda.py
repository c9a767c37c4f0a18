"""The CUDA backend's host side, on every machine: layout -> kernel-argument planning (plan.py),
op codes against the .cu sources, and the errors when CuPy or a GPU is missing.

The backend itself against the CPU oracle is in tests/test_cuda_kernels.py, test_cuda_fused.py and
test_cuda_models.py (on a real GPU when there is one, and always on the CPU emulation of the
kernels, tests/cuda_emulator.py); compilation of the .cu files in tests/test_cuda_compile.py.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import deers
from deers.backend.cuda import plan
from deers.layout import Layout

KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deers", "backend", "cuda")


# ---- Python mirrors of the kernels' index decoding (common.cuh, indexing.cu) ---------------------------
def decode_elementwise(meta: tuple[int, ...], i: int, k: int) -> int:
    """strided_offsets<N> of common.cuh: the buffer offset of operand k's element i."""
    ndim = meta[0]
    base = 1 + ndim + k * (ndim + 1)
    off = meta[base]
    if ndim == 0:
        return off + i
    for d in reversed(range(ndim)):
        size = meta[1 + d]
        off += (i % size) * meta[base + 1 + d]
        i //= size
    return off


def decode_row(meta: tuple[int, ...], r: int, c: int) -> int:
    """row_base(r) + col_offset(c) of common.cuh."""
    n = meta[0]
    inner = meta[1 + 2 * n:]
    n_inner = inner[0]
    off = inner[1 + 2 * n_inner]
    for d in reversed(range(n)):
        off += (r % meta[1 + d]) * meta[1 + n + d]
        r //= meta[1 + d]
    for d in reversed(range(n_inner)):
        off += (c % inner[1 + d]) * inner[1 + n_inner + d]
        c //= inner[1 + d]
    return off


def offsets_of(layout: Layout) -> np.ndarray:
    """Every element's buffer offset in row-major order, straight from the layout."""
    grid = np.indices(layout.shape).reshape(len(layout.shape), -1) if layout.shape else np.zeros((0, 1), int)
    return layout.offset + (np.array(layout.strides, dtype=np.int64)[:, None] * grid).sum(0)


def random_layouts(seed: int, count: int):
    """Views of many kinds: permuted, narrowed, strided, broadcast, with size-1 dims."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        ndim = int(rng.integers(1, 5))
        shape = tuple(int(s) for s in rng.integers(1, 5, ndim))
        layout = Layout(tuple(s + 2 for s in shape), offset=int(rng.integers(0, 4)))
        for d, size in enumerate(shape):
            layout = layout.narrow(d, int(rng.integers(0, 3)), size)
        layout = layout.permute(tuple(int(a) for a in rng.permutation(ndim)))
        if rng.random() < 0.3:
            d = int(rng.integers(0, ndim))
            layout = layout.slice(d, 0, max(1, layout.shape[d] // 2), 2)
        if rng.random() < 0.3:
            layout = Layout(layout.shape[:0] + (1,) + layout.shape[1:], (0,) + layout.strides[1:], layout.offset) \
                .broadcast_to((3,) + layout.shape[1:])
        yield layout


# ---- coalescing and meta packing -----------------------------------------------------------------
def test_coalesce_merges_contiguous_runs_and_keeps_transposes_apart():
    assert plan.coalesce((2, 3, 4), [(12, 4, 1)]) == ((24,), [(1,)])
    assert plan.coalesce((2, 1, 4), [(4, 99, 1)]) == ((8,), [(1,)])  # size-1 dims carry any stride
    assert plan.coalesce((3, 4), [(1, 3)]) == ((3, 4), [(1, 3)])  # a transpose stays 2-D
    assert plan.coalesce((2, 3, 4), [(12, 4, 1), (0, 0, 1)]) == ((6, 4), [(4, 1), (0, 1)])  # broadcast rows
    assert plan.coalesce((5, 6), [(0, 0)]) == ((30,), [(0,)])  # fully broadcast


def test_elementwise_meta_takes_the_contiguous_fast_path_only_when_every_operand_is_dense():
    assert plan.elementwise_meta((2, 3, 4), [(0, (12, 4, 1)), (5, (12, 4, 1))]) == (0, 0, 5)
    assert plan.elementwise_meta((), [(7, ())]) == (0, 7)
    assert plan.elementwise_meta((3, 4), [(0, (4, 1)), (0, (1, 3))])[0] == 2
    assert plan.elementwise_meta((3, 4), [(0, (4, 1)), (0, (0, 1))]) == (2, 3, 4, 0, 4, 1, 0, 0, 1)


@pytest.mark.parametrize("seed", range(4))
def test_elementwise_meta_decodes_to_every_layouts_offsets(seed):
    layouts = list(random_layouts(seed, 40))
    for a in layouts:
        b = Layout(a.shape)  # the dense output the element-wise kernels write
        meta = plan.elementwise_meta(a.shape, [(a.offset, a.strides), (b.offset, b.strides)])
        got_a = [decode_elementwise(meta, i, 0) for i in range(a.numel)]
        got_b = [decode_elementwise(meta, i, 1) for i in range(a.numel)]
        np.testing.assert_array_equal(got_a, offsets_of(a), err_msg=repr(a))
        np.testing.assert_array_equal(got_b, np.arange(a.numel), err_msg=repr(a))


@pytest.mark.parametrize("seed", range(4))
def test_reduction_plan_rows_decode_to_the_kept_then_reduced_elements(seed):
    for layout in random_layouts(100 + seed, 30):
        rng = np.random.default_rng(seed)
        axes = tuple(sorted(set(int(a) for a in rng.integers(0, layout.ndim, int(rng.integers(1, layout.ndim + 1))))))
        p = plan.reduction_plan(layout.shape, layout.strides, layout.offset, axes)
        values = np.arange(10_000, dtype=np.int64)  # element value = its buffer offset
        expected = np.sum(values[offsets_of(layout)].reshape(layout.shape), axis=axes, keepdims=True).reshape(-1)
        got = [sum(values[decode_row(p.meta, r, c)] for c in range(p.cols)) for r in range(p.rows)]
        np.testing.assert_array_equal(got, expected, err_msg=f"{layout} axes {axes}")
        assert p.rows * p.cols == layout.numel


def test_reduction_plan_picks_a_kernel_by_memory_order():
    # summing a (N, D) gradient over N: one thread per column reads neighbouring elements
    assert plan.reduction_plan((1024, 768), (768, 1), 0, (0,)).kind == "cols"
    # a row-wise sum of the last dim: one block per row
    assert plan.reduction_plan((1024, 64), (64, 1), 0, (1,)).kind == "rows"
    # many tiny rows: a thread per row
    assert plan.reduction_plan((4096, 3), (3, 1), 0, (1,)).kind == "cols"
    # one huge row is split into chunks reduced in two passes, unless partials would lose precision
    big = plan.reduction_plan((50257 * 768,), (1,), 0, (0,))
    assert big.kind == "rows" and big.split == 1024
    assert plan.reduction_plan((50257 * 768,), (1,), 0, (0,), exact_partials=False).split == 1


def test_row_meta_for_softmax_rows_of_a_transposed_view():
    layout = Layout((4, 3)).permute((1, 0))  # (3, 4) with strides (1, 3)
    meta = plan.row_meta(layout.shape, layout.strides, layout.offset, 1)
    for r, c in itertools.product(range(3), range(4)):
        assert decode_row(meta, r, c) == r + 3 * c


def test_index_meta_layout():
    meta = plan.index_meta((2, 5), 1, 7, (3, (10, 2)), (0, (5, 1)))
    assert meta == (2, 1, 7, 2, 5, 3, 10, 2, 0, 5, 1)


def test_matmul_operand_shrinks_broadcast_batch_dims_only():
    assert plan.matmul_operand((4, 3, 5, 6), (0, 30, 6, 1)) == ((1, 3, 5, 6), (0, 30, 6, 1))
    assert plan.matmul_operand((5, 6), (0, 1)) == ((5, 6), (0, 1))  # a matrix dim is never shrunk


# ---- kernels, op codes and dtypes ------------------------------------------------------------------
def _defines(file: str) -> dict[str, int]:
    with open(os.path.join(KERNEL_DIR, file)) as f:
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define (\w+) (\d+)\n", f.read())}


def test_op_codes_match_the_cu_defines():
    defines = {**_defines("elementwise.cu"), **_defines("common.cuh")}
    for table, prefix in ((plan.UNARY_OPS, "UNARY_"), (plan.BINARY_OPS, "BINARY_"), (plan.COMPARE_OPS, "COMPARE_"),
                          (plan.REDUCE_OPS, "REDUCE_")):
        for name, code in table.items():
            assert defines[prefix + name.upper()] == code, name
        assert sorted(k for k in defines if k.startswith(prefix)) == sorted(prefix + n.upper() for n in table)


def test_kernel_names_and_unsupported_dtypes():
    assert plan.kernel("copy", "bf16", "f32") == plan.Kernel("elementwise.cu", "copy_bf16_f32")
    assert plan.kernel("adamw", "bf16", "f32").name == "adamw_bf16_f32"
    with pytest.raises(TypeError, match="softmax"):
        plan.kernel("softmax", "i64")
    with pytest.raises(TypeError, match="needs a floating-point"):
        plan.unary_code("exp", "i64")
    assert plan.unary_code("neg", "i64") == 0
    with pytest.raises(TypeError):
        plan.binary_code("div", "i64")
    assert [plan.suffix(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int64, np.uint8, np.bool_)] == \
        ["f16", "f32", "f64", "i64", "u8", "bool"]
    if deers.bf16.available:
        assert plan.suffix(deers.bf16.numpy) == "bf16"
    with pytest.raises(TypeError, match="int32"):
        plan.suffix(np.int32)
    assert len(plan.all_kernel_names()) == len(set(plan.all_kernel_names()))


def test_scalar_arguments_are_rounded_to_the_array_dtype_and_typed():
    assert type(plan.scalar_arg(0.1, np.float32)) is np.float32
    assert plan.scalar_arg(0.1, np.float16) == np.float32(np.float16(0.1))
    assert type(plan.scalar_arg(0.1, np.float64)) is np.float64 and plan.scalar_arg(0.1, np.float64) == 0.1
    assert type(plan.scalar_arg(3, np.int64)) is np.int64
    assert plan.scalar_arg(2.7, np.int64) == 2  # like np.int64(2.7)
    assert type(plan.scalar_arg(True, np.bool_)) is np.int32
    if deers.bf16.available:
        assert plan.scalar_arg(0.1, deers.bf16.numpy) == np.float32(np.asarray(0.1, deers.bf16.numpy))


@pytest.mark.parametrize("value", [2.5, -2.5, 3.0, -3, 7, 0.0, float("nan"), float("inf"), -float("inf"), 1e30])
@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_integer_compare_with_a_float_matches_numpy(op, value):
    x = np.arange(-5, 6, dtype=np.int64)
    expected = getattr(np, {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
                            "ge": "greater_equal"}[op])(x, value)
    decided = plan.integer_compare(op, value)
    if isinstance(decided, bool):
        got = np.full(x.shape, decided)
    else:
        new_op, v = decided
        assert isinstance(v, int)
        got = {"eq": x == v, "ne": x != v, "lt": x < v, "le": x <= v, "gt": x > v, "ge": x >= v}[new_op]
    np.testing.assert_array_equal(got, expected)


# ---- launch sizes ---------------------------------------------------------------------------------
def test_launch_sizes():
    assert plan.elementwise_launch(1) == ((1,), (256,))
    assert plan.elementwise_launch(1000) == ((4,), (256,))
    assert plan.elementwise_launch(10 ** 12)[0][0] == plan.MAX_BLOCKS  # the grid-stride loop does the rest
    assert [plan.row_block(c, 1024) for c in (1, 32, 33, 200, 50257)] == [32, 32, 64, 256, 1024]
    assert plan.row_block(50257, 256) == 256
    assert plan.row_launch(10 ** 6, 10) == ((plan.MAX_BLOCKS,), (32,))


@pytest.mark.parametrize("rows,d", [(1, 8), (15, 3), (16, 768), (1000, 192), (123457, 64)])
def test_rmsnorm_backward_chunks_cover_every_row_once(rows, d):
    chunk_rows, chunks, grid, block = plan.rmsnorm_backward_launch(rows, d)
    assert chunks * chunk_rows >= rows > (chunks - 1) * chunk_rows
    assert grid == (chunks,) and chunks <= 1024 and block[0] % 32 == 0 and block[0] <= 256


def test_philox_key_splits_the_seed():
    assert plan.philox_key(0x0123456789ABCDEF) == (np.uint32(0x89ABCDEF), np.uint32(0x01234567))
    assert plan.philox_key(-1) == (np.uint32(0xFFFFFFFF), np.uint32(0xFFFFFFFF))


# ---- availability -------------------------------------------------------------------------------------
def test_cuda_without_cupy_raises_backend_unavailable_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    monkeypatch.delitem(sys.modules, "deers.backend.cuda.kernels", raising=False)
    with pytest.raises(deers.BackendUnavailable, match=r"deers\[cuda12\]"):
        deers.zeros(2, device="cuda:5")


def test_import_deers_needs_no_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import deers, deers.backend.cuda\n"
            "x = deers.ones(2) * 2\n"
            "assert x.numpy().tolist() == [2.0, 2.0]\n"
            "assert 'cupy' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _gpu_count() -> int | None:
    """None without CuPy; 0 when CuPy has no usable GPU."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def test_cupy_without_a_gpu_raises_a_clear_error():
    if _gpu_count() != 0:
        pytest.skip("needs CuPy installed on a machine without a usable GPU")
    with pytest.raises(deers.BackendUnavailable, match="no usable CUDA GPU"):
        deers.zeros(2, device="cuda:6")


def test_tf32_flag_defaults_off_and_can_be_switched():
    from deers.backend.cuda import get_allow_tf32, set_allow_tf32

    assert get_allow_tf32() is False
    try:
        set_allow_tf32(True)
        assert get_allow_tf32() is True
    finally:
        set_allow_tf32(False)


# ---- GEMM planning (gemm.py): layouts -> one cublasGemmStridedBatchedEx ----------------------------------
def test_gemm_plan_reads_transposed_views_and_broadcast_batches_without_copies():
    from deers.backend.cuda import gemm

    x, w = Layout((6, 5)), Layout((4, 5)).permute((1, 0))  # x @ W.T: W's rows are read as columns
    call = gemm.plan_gemm(x.shape, x.strides, x.offset, w.shape, w.strides, w.offset)
    assert (call.m, call.n, call.k, call.batch) == (4, 6, 5, 1)
    assert call.first == gemm.Operand(gemm.OP_T, 5, 0, 0) and call.second == gemm.Operand(gemm.OP_N, 5, 0, 0)
    assert (call.ldc, call.stride_c) == (4, 24)
    k_t = Layout((2, 3, 5, 4), offset=7).permute((0, 1, 3, 2))  # k^T of a batched (B, nh, T, hd)
    q = Layout((2, 3, 6, 4))
    call = gemm.plan_gemm(q.shape, q.strides, 0, k_t.shape, k_t.strides, k_t.offset)
    assert call.batch == 6 and call.first == gemm.Operand(gemm.OP_T, 4, 20, 7)
    shared = Layout((1, 5, 6), (0, 6, 1)).broadcast_to((3, 5, 6))
    a = Layout((3, 4, 5))
    call = gemm.plan_gemm(a.shape, a.strides, 0, shared.shape, shared.strides, 0)
    assert call.first.batch_stride == 0 and call.second.batch_stride == 20


def test_gemm_plan_names_only_the_operand_cublas_cannot_read():
    from deers.backend.cuda import gemm

    v = Layout((2, 4, 3, 5), (180, 45, 5, 1), 30).permute((0, 2, 1, 3))  # (B, nh, T, hd) in qkv
    att = Layout((2, 3, 4, 4))
    split = gemm.plan_gemm(att.shape, att.strides, 0, v.shape, v.strides, v.offset)  # no pointer arrays
    assert isinstance(split, gemm.SplitGemm) and len(split.calls) == 2  # one call per sequence, no copy
    huge = Layout((gemm.SPLIT_MAX_CALLS + 1, 4, 3, 5), (180, 45, 5, 1), 30).permute((0, 2, 1, 3))
    big_att = Layout((gemm.SPLIT_MAX_CALLS + 1, 3, 4, 4))
    assert gemm.plan_gemm(big_att.shape, big_att.strides, 0, huge.shape, huge.strides, huge.offset) == (False, True)
    every_other = Layout((4, 10)).slice(1, 0, 5, 2)  # neither stride is 1
    b = Layout((5, 3))
    assert gemm.plan_gemm(every_other.shape, every_other.strides, 0, b.shape, b.strides, 0) == (True, False)

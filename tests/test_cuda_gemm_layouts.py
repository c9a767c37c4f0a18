"""Every GEMM layout a GPT training step uses reaches cuBLAS without an operand copy.

gemm.py plans one cublasGemmStridedBatchedEx when both operands' batch dims collapse to one
stride, and one pointer-array cublas<S|D>gemmBatched when an operand's matrices are readable but
its batch dims do not (the v view of the qkv buffer; a gradient arriving through the heads'
transpose and reshape). The planner is checked on its own (no backend), then a small GPT trains a
step on the emulated CUDA device (tests/cuda_emulator.py) with the backend's matmul recorded:
which cuBLAS call ran, which kernels it launched (a copy would show), and its result against
NumPy's product of the same operands, in f32, f64, f16 and bf16 (bf16 needs ml_dtypes). CuPy's
public binding has no gemmBatchedEx, so f16/bf16 GEMMs whose batch dims do not collapse are split
into a few strided-batched calls (one per sequence, each over the heads) instead: no copy either.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import deers
from cuda_emulator import HostRuntime, cuda_backend_fixture
from deers.backend.cuda import gemm, plan
from deers.layout import Layout
from deers.models.gpt import GPT, GPTConfig

CUDA = deers.Device.cuda(0)
FLOATS = [deers.f32, deers.f64] + [d for d in (deers.f16, deers.bf16) if d.available]
TOL = {"f32": 1e-5, "f64": 1e-12, "f16": 2e-3, "bf16": 1e-2}  # relative to the sum of |products|
SMALLEST_NORMAL = {"float16": 2.0 ** -14, "float32": 2.0 ** -126}  # below it an f16 result rounds absolutely
B, nh, T, hd = 2, 3, 4, 8  # (B, nh, T, hd) heads of a D = nh hd model
D = nh * hd


@pytest.fixture(scope="module", params=["emulated"])
def cuda(request):
    yield from cuda_backend_fixture(request)


def _plan(a: Layout, b: Layout, pointer_arrays: bool = True):
    return gemm.plan_gemm(a.shape, a.strides, a.offset, b.shape, b.strides, b.offset, pointer_arrays)


def _v_view() -> Layout:
    """v of a GPT block: (B, nh, T, hd) inside the (B, T, 3D) qkv buffer, batch strides (T 3D, hd)."""
    qkv = Layout((B, T, 3 * D)).narrow(2, 2 * D, D)  # (B, T, D) at offset 2D
    return Layout((B, T, nh, hd), (qkv.strides[0], qkv.strides[1], hd, 1), qkv.offset).permute((0, 2, 1, 3))


def _heads_grad() -> Layout:
    """The gradient of y = att @ v arriving through y.transpose(1, 2).reshape(B, T, D): a dense
    (B, T, nh, hd) seen as (B, nh, T, hd), batch strides (T D, hd)."""
    return Layout((B, T, nh, hd)).permute((0, 2, 1, 3))


def _t(layout: Layout) -> Layout:
    return layout.permute(tuple(range(layout.ndim - 2)) + (layout.ndim - 1, layout.ndim - 2))


# ---- the planner: which call for which layout (no backend) -----------------------------------------
def test_contiguous_and_transposed_operands_take_one_strided_batched_call():
    a, b = Layout((2, 3, 6, 5)), Layout((2, 3, 5, 4))
    call = _plan(a, b)
    assert isinstance(call, gemm.Gemm) and (call.m, call.n, call.k, call.batch) == (4, 6, 5, 6)
    assert call.first == gemm.Operand(gemm.OP_N, 4, 20, 0) and call.second == gemm.Operand(gemm.OP_N, 5, 30, 0)
    x, w_t = Layout((6, 5)), _t(Layout((4, 5)))  # x @ W.T: W's rows are read as columns
    call = _plan(x, w_t)
    assert isinstance(call, gemm.Gemm) and call.first == gemm.Operand(gemm.OP_T, 5, 0, 0)


def test_a_broadcast_batch_stays_strided_batched_with_stride_0():
    a = Layout((3, 4, 5))
    shared = Layout((1, 5, 6)).broadcast_to((3, 5, 6))
    call = _plan(a, shared)
    assert isinstance(call, gemm.Gemm) and call.first.batch_stride == 0 and call.second.batch_stride == 20


def test_the_v_view_takes_pointer_arrays_and_no_copy():
    att, v = Layout((B, nh, T, T)), _v_view()
    split = _plan(att, v, pointer_arrays=False)  # f16/bf16: one strided-batched call per sequence
    assert isinstance(split, gemm.SplitGemm) and len(split.calls) == B
    for b, part in enumerate(split.calls):
        assert (part.batch, part.first.op, part.first.ld, part.first.batch_stride) == (nh, gemm.OP_N, 3 * D, hd)
        assert part.first.offset == 2 * D + b * T * 3 * D and part.second.offset == b * nh * T * T
        assert part.c_offset == b * nh * T * hd and part.stride_c == T * hd
    call = _plan(att, v)
    assert isinstance(call, gemm.BatchedGemm) and (call.m, call.n, call.k, call.batch) == (hd, T, T, B * nh)
    assert (call.first.op, call.first.ld) == (gemm.OP_N, 3 * D)  # v's rows, 3D apart
    assert call.first.offsets == tuple(2 * D + b * T * 3 * D + h * hd for b in range(B) for h in range(nh))
    assert (call.second.op, call.second.ld) == (gemm.OP_N, T)
    assert call.second.offsets == tuple(range(0, B * nh * T * T, T * T))
    assert call.ldc == hd and call.c_offsets == tuple(range(0, B * nh * T * hd, T * hd))
    call = _plan(Layout((B, nh, T, hd)), _t(v))  # d att = g @ v^T: v transposed, op T
    assert isinstance(call, gemm.BatchedGemm) and (call.first.op, call.first.ld) == (gemm.OP_T, 3 * D)


def test_the_heads_gradient_takes_pointer_arrays_on_either_side():
    g, att = _heads_grad(), Layout((B, nh, T, T))
    call = _plan(_t(att), g)  # d v = att^T @ g
    assert isinstance(call, gemm.BatchedGemm)
    assert (call.first.op, call.first.ld) == (gemm.OP_N, D)
    assert call.first.offsets == tuple(b * T * D + h * hd for b in range(B) for h in range(nh))
    assert (call.second.op, call.second.ld) == (gemm.OP_T, T)
    call = _plan(g, _t(_v_view()))  # d att = g @ v^T: both operands through pointers
    assert isinstance(call, gemm.BatchedGemm) and call.second.ld == D and call.first.ld == 3 * D


def test_a_broadcast_operand_beside_a_non_collapsing_one_repeats_its_pointer():
    shared = Layout((1, 1, T, T)).broadcast_to((B, nh, T, T))
    call = _plan(shared, _v_view())
    assert isinstance(call, gemm.BatchedGemm) and call.second.offsets == (0,) * (B * nh)


def _one_row() -> Layout:
    """q of a decoding step (T = 1) in its qkv buffer: (B, nh, 1, hd), batch strides (3D, hd)."""
    qkv = Layout((B, 1, 3 * D)).narrow(2, 0, D)
    return Layout((B, 1, nh, hd), (qkv.strides[0], qkv.strides[1], hd, 1), qkv.offset).permute((0, 2, 1, 3))


def _one_column() -> Layout:
    """(B, nh, T, 1) seen through the heads' transpose: batch strides (T nh, 1), rows nh apart."""
    return Layout((B, T, nh, 1)).permute((0, 2, 1, 3))


def test_one_row_and_one_column_matrices_in_a_non_collapsing_batch():
    call = _plan(_one_row(), Layout((B, nh, hd, 5)))
    assert isinstance(call, gemm.BatchedGemm) and (call.second.op, call.second.ld) == (gemm.OP_N, hd)
    assert call.second.offsets == tuple(b * 3 * D + h * hd for b in range(B) for h in range(nh))
    call = _plan(_one_column(), Layout((B, nh, 1, 5)))
    assert isinstance(call, gemm.BatchedGemm) and (call.second.op, call.second.ld) == (gemm.OP_N, nh)
    assert call.second.offsets == tuple(b * T * nh + h for b in range(B) for h in range(nh))


def test_a_matrix_with_neither_stride_1_is_still_copied():
    every_other = Layout((2, 3, 4, 10)).slice(3, 0, 5, 2)  # column stride 2, row stride 10
    assert _plan(every_other, Layout((2, 3, 5, 3))) == (True, False)


def test_pointer_table_is_base_address_plus_offsets_in_cublas_order():
    call = _plan(Layout((B, nh, T, T)), _v_view())
    table = gemm.pointer_table(call, 1000, 5000, 9000, 4)
    n = B * nh
    assert table[:n] == tuple(5000 + 4 * o for o in call.first.offsets)  # cuBLAS's A: Deers' b
    assert table[n:2 * n] == tuple(1000 + 4 * o for o in call.second.offsets)  # cuBLAS's B: Deers' a
    assert table[2 * n:] == tuple(9000 + 4 * o for o in call.c_offsets)
    assert gemm.POINTER_ARRAY_DTYPES == {"f32", "f64"}  # CuPy 14 has sgemmBatched and dgemmBatched only


# ---- the emulated cuBLAS calls against NumPy ----------------------------------------------------
LAYOUTS = {  # name: (a, b), each a layout over a buffer of its own
    "att @ v (v in qkv)": lambda: (Layout((B, nh, T, T)), _v_view()),
    "g @ v^T (both through pointers)": lambda: (_heads_grad(), _t(_v_view())),
    "att^T @ g (heads gradient)": lambda: (_t(Layout((B, nh, T, T))), _heads_grad()),
    "shared @ v (broadcast beside pointers)": lambda: (Layout((1, 1, T, T)).broadcast_to((B, nh, T, T)), _v_view()),
    "one row": lambda: (_one_row(), Layout((B, nh, hd, 5))),
    "one column": lambda: (_one_column(), Layout((B, nh, 1, 5))),
}


def _storage(layout: Layout) -> int:
    return layout.offset + sum((size - 1) * stride for size, stride in zip(layout.shape, layout.strides)) + 1


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_non_collapsing_layout_multiplies_like_numpy(cuda, name, dtype):
    rng = np.random.default_rng(3)
    la, lb = LAYOUTS[name]()
    a = rng.standard_normal(_storage(la)).astype(dtype.numpy)
    b = rng.standard_normal(_storage(lb)).astype(dtype.numpy)
    view = lambda data, l: np.lib.stride_tricks.as_strided(  # noqa: E731
        data[l.offset:], l.shape, tuple(s * data.itemsize for s in l.strides)).astype(np.float64)
    expected = view(a, la) @ view(b, lb)
    before = len(cuda.rt.launches) if isinstance(cuda.rt, HostRuntime) else 0
    out = cuda.matmul(cuda.from_numpy(a, dtype), la, cuda.from_numpy(b, dtype), lb)
    got = cuda.to_numpy(out, Layout(expected.shape)).astype(np.float64)
    scale = np.abs(view(a, la)) @ np.abs(view(b, lb)) + SMALLEST_NORMAL["float16"]
    assert np.max(np.abs(got - expected) / scale) <= TOL[dtype.name]
    if isinstance(cuda.rt, HostRuntime) and dtype.name in gemm.POINTER_ARRAY_DTYPES:
        assert cuda.rt.launches[before:] == [] and isinstance(cuda.rt.gemms[-1], gemm.BatchedGemm)


# ---- a GPT training step on the emulated device, every GEMM recorded --------------------------------
class MatmulRecorder:
    """Wraps backend.matmul: per float GEMM, the operand layouts, the kernels launched inside it,
    the cuBLAS call, and the largest error against NumPy's float64 product of the same operands."""

    def __init__(self, backend):
        self.backend, self.matmul = backend, backend.matmul
        self.records: list[dict] = []

    def __call__(self, a, la: Layout, b, lb: Layout):
        rt = self.backend.rt
        launches, gemms = len(rt.launches), len(rt.gemms)
        out = self.matmul(a, la, b, lb)
        if a.dtype.name in ("float16", "bfloat16", "float32", "float64") and out.size:
            x = np.array(rt.view(a, la.shape, la.strides, la.offset), np.float64)  # host views: no launch
            y = np.array(rt.view(b, lb.shape, lb.strides, lb.offset), np.float64)
            expected = x @ y
            got = out.reshape(expected.shape).astype(np.float64)
            scale = np.abs(x) @ np.abs(y) + SMALLEST_NORMAL.get(a.dtype.name, SMALLEST_NORMAL["float32"])
            self.records.append({"a": la, "b": lb, "sfx": plan.suffix(a.dtype), "launched": rt.launches[launches:],
                                 "calls": rt.gemms[gemms:], "error": float(np.max(np.abs(got - expected) / scale))})
        return out


def _collapses(layout: Layout) -> bool:
    return gemm._batch_stride(layout.shape[:-2], layout.strides[:-2]) is not None


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_every_gemm_of_a_gpt_training_step_reaches_cublas_without_a_copy(cuda, dtype, monkeypatch):
    if not isinstance(cuda.rt, HostRuntime):
        pytest.skip("records the emulated runtime's calls")
    recorder = MatmulRecorder(cuda)
    monkeypatch.setattr(cuda, "matmul", recorder)
    config = GPTConfig(vocab_size=32, sequence_len=T, n_layer=1, n_head=nh, n_embd=D, mlp_hidden_dim=2 * D)
    deers.manual_seed(0)
    model = GPT(config, device=CUDA, dtype=dtype)
    data = np.random.default_rng(0).integers(0, config.vocab_size, (B, T + 1), dtype=np.int64)
    loss = model.loss(deers.tensor(data[:, :-1], device=CUDA), deers.tensor(data[:, 1:], device=CUDA))
    loss.backward()

    records = recorder.records
    assert len(records) >= 10, "the step's GEMMs were not seen"
    pointer_calls = [r for r in records if any(isinstance(c, gemm.BatchedGemm) for c in r["calls"])]
    non_collapsing = [r for r in records if not (_collapses(r["a"]) and _collapses(r["b"]))]
    assert non_collapsing, "the step has no attention GEMM whose batch dims do not collapse"
    for r in records:
        what = f"{r['a']} @ {r['b']} ({r['sfx']})"
        assert r["error"] <= TOL[r["sfx"]], f"{what}: relative error {r['error']:.2e}"
        assert r["launched"] == [], f"{what}: launched {r['launched']}"  # no copy, in any dtype
        if r in non_collapsing and r["sfx"] not in gemm.POINTER_ARRAY_DTYPES:  # split: one call per sequence
            assert len(r["calls"]) == B and all(isinstance(c, gemm.Gemm) for c in r["calls"]), what
        else:
            assert len(r["calls"]) == 1, f"{what}: {len(r['calls'])} cuBLAS calls"
    if dtype.name in gemm.POINTER_ARRAY_DTYPES:
        assert pointer_calls == non_collapsing  # every one of them through pointer arrays, nothing else
    else:
        assert pointer_calls == []


def test_the_pointer_array_call_honours_tf32_and_f64(cuda):
    if not isinstance(cuda.rt, HostRuntime):
        pytest.skip("records the emulated runtime's calls")
    from deers.backend.cuda import set_allow_tf32

    rng = np.random.default_rng(1)
    att = rng.standard_normal((B, nh, T, T))
    qkv = rng.standard_normal((B, T, 3 * D))
    v = qkv[:, :, 2 * D:].reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
    for dtype in (deers.f32, deers.f64):
        for allow in (False, True):
            set_allow_tf32(allow)
            try:
                out = cuda.matmul(cuda.from_numpy(att, dtype), Layout(att.shape), cuda.from_numpy(qkv, dtype),
                                  _v_view())
            finally:
                set_allow_tf32(False)
            assert isinstance(cuda.rt.gemms[-1], gemm.BatchedGemm) and cuda.rt.allow_tf32_seen[-1] is allow
            got = cuda.to_numpy(out, Layout((B, nh, T, hd)))
            np.testing.assert_allclose(got, att @ v, rtol=1e-5 if dtype is deers.f32 else 1e-12, atol=1e-6)
            assert math.prod(got.shape) == B * nh * T * hd


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_accumulating_gemms_run_with_beta_1_and_launch_nothing(cuda, dtype):
    """matmul(..., acc) adds the product into acc inside the cuBLAS call (beta = 1) for every call
    kind: strided-batched, pointer arrays (f32/f64) and split (f16/bf16) — no add kernel."""
    rng = np.random.default_rng(4)
    for la, lb in ((Layout((6, 5)), Layout((5, 4))), (Layout((B, nh, T, T)), _v_view())):
        a = rng.standard_normal(_storage(la)).astype(dtype.numpy)
        b = rng.standard_normal(_storage(lb)).astype(dtype.numpy)
        view = lambda data, l: np.lib.stride_tricks.as_strided(  # noqa: E731
            data[l.offset:], l.shape, tuple(s * data.itemsize for s in l.strides)).astype(np.float64)
        start = rng.standard_normal(la.shape[:-1] + lb.shape[-1:]).astype(dtype.numpy)
        acc = cuda.from_numpy(start, dtype)
        before = len(cuda.rt.launches) if isinstance(cuda.rt, HostRuntime) else 0
        result = cuda.matmul(cuda.from_numpy(a, dtype), la, cuda.from_numpy(b, dtype), lb, acc)
        assert result is acc
        expected = start.astype(np.float64) + view(a, la) @ view(b, lb)
        got = cuda.to_numpy(acc, Layout(expected.shape)).astype(np.float64)
        scale = np.abs(view(a, la)) @ np.abs(view(b, lb)) + np.abs(start.astype(np.float64)) + 1e-3
        assert np.max(np.abs(got - expected) / scale) <= TOL[dtype.name]
        if isinstance(cuda.rt, HostRuntime):
            assert cuda.rt.launches[before:] == []

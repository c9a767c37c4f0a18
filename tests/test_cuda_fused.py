"""The CUDA backend's fused kernels, random numbers, GEMM and in-place writes against references:
cross-entropy over a GPT-2 vocabulary, RMSNorm, causal softmax, RoPE, AdamW in every dtype pair,
two-pass reductions, f16/bf16 matmul with f32 accumulation and the TF32 switch, and Philox
against the Random123 known-answer vectors. Like test_cuda_kernels.py, each test runs on the
emulated kernels everywhere and on a real GPU when there is one.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from cuda_emulator import HostRuntime, cuda_backend_fixture
from deers.backend import backend_for
from deers.backend.cuda import CUDABackend, plan, set_allow_tf32
from deers.fused.attention import apply_rope
from deers.layout import Layout

CUDA = deers.Device.cuda(0)
LOW_PRECISION = [d for d in (deers.f16, deers.bf16) if d.available]
FLOATS = [deers.f32, deers.f64] + LOW_PRECISION
TOL = {"f32": (2e-5, 2e-5), "f64": (1e-10, 1e-10), "f16": (1e-2, 1e-2), "bf16": (6e-2, 3e-2)}
CPU = backend_for("cpu")


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    yield from cuda_backend_fixture(request)


def _up(cuda, array: np.ndarray, dtype: deers.DType):
    return cuda.from_numpy(np.asarray(array).astype(dtype.numpy), dtype)


def _down(cuda, buf) -> np.ndarray:
    return cuda.to_numpy(buf, Layout((buf.size,))).astype(np.float64)


def _close(got, expected, dtype: deers.DType, what: str = "") -> None:
    atol, rtol = TOL[dtype.name]
    np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol, err_msg=what)


# ---- random numbers ----------------------------------------------------------------------------------
def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """Reference Philox4x32-10 in Python (Salmon et al. 2011)."""
    mask = 0xFFFFFFFF
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & mask, p1 & mask, ((p0 >> 32) ^ c3 ^ k1) & mask, p0 & mask
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return c0, c1, c2, c3


def test_reference_philox_matches_the_random123_known_answers():
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_random_kernels_follow_philox_and_advance_the_offset(cuda):
    seed = 0x0123456789ABCDEF
    cuda.seed(seed)
    cuda.rand(5, deers.f32)  # consumes counters 0..4
    state = cuda.get_rng_state()
    assert state == {"seed": seed, "offset": 5}
    uniform = _down(cuda, cuda.rand(6, deers.f32))
    normal = _down(cuda, cuda.randn(4, deers.f64))
    ints = cuda.to_numpy(cuda.randint(5, -3, 1 << 40), Layout((5,)))
    key = (seed & 0xFFFFFFFF, seed >> 32)
    words = [philox4x32_10(((5 + i) & 0xFFFFFFFF, (5 + i) >> 32, 0, 0), key) for i in range(15)]
    np.testing.assert_array_equal(uniform, [(w[0] >> 8) / 2.0 ** 24 for w in words[:6]])
    def unit53(hi: int, lo: int) -> float:
        return ((hi >> 5) * 2.0 ** 26 + (lo >> 6)) / 2.0 ** 53

    u = [(1.0 - unit53(w[0], w[1]), unit53(w[2], w[3])) for w in words[6:10]]
    np.testing.assert_allclose(normal, [np.sqrt(-2 * np.log(a)) * np.cos(2 * np.pi * b) for a, b in u], rtol=1e-12)
    np.testing.assert_array_equal(ints, [-3 + (((w[1] << 32) | w[0]) % ((1 << 40) + 3)) for w in words[10:]])
    cuda.set_rng_state(state)
    np.testing.assert_array_equal(_down(cuda, cuda.rand(6, deers.f32)), uniform)


def test_manual_seed_reproducibility_and_sample_statistics(cuda):
    def draw():
        return [deers.randn(3, 4, device=CUDA).numpy(), deers.rand(5, device=CUDA, dtype=deers.f16).numpy(),
                deers.randint(0, 10, (6,), device=CUDA).numpy()]

    deers.manual_seed(123)
    first = draw()
    deers.manual_seed(123)
    for a, b in zip(first, draw()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], deers.randn(3, 4, device=CUDA).numpy())
    assert "cuda:0" in deers.get_rng_state()  # keyed per GPU
    z = deers.randn(20000, device=CUDA).numpy()
    u = deers.rand(20000, device=CUDA, dtype=deers.f64).numpy()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05
    assert abs(u.mean() - 0.5) < 0.02 and u.min() >= 0.0 and u.max() < 1.0
    with pytest.raises(ValueError, match="randint"):
        deers.randint(3, 3, (2,), device=CUDA)


# ---- in-place writes ---------------------------------------------------------------------------------
def test_copy_writes_into_a_strided_view_and_handles_overlap(cuda):
    dst = cuda.full(12, 0.0, deers.f32)
    src = _up(cuda, [1.0, 2.0, 3.0], deers.f32)
    target = Layout((3, 4)).permute((1, 0)).narrow(0, 1, 2)  # (2, 3) strided view at offset 1
    cuda.copy(src, Layout((3,)).broadcast_to((2, 3)), dst, target)
    expected = np.zeros((3, 4))
    expected[:, 1:3] = np.array([1.0, 2.0, 3.0])[:, None]
    np.testing.assert_array_equal(_down(cuda, dst).reshape(3, 4), expected)
    x = _up(cuda, np.arange(6.0), deers.f64)  # x[1:] = x[:-1] reads before it writes, like NumPy
    cuda.copy(x, Layout((5,)), x, Layout((5,), offset=1))
    np.testing.assert_array_equal(_down(cuda, x), [0, 0, 1, 2, 3, 4])
    bf = cuda.full(4, 0.0, deers.f16)  # a copy that converts
    cuda.copy(_up(cuda, [0.1, 0.2, 0.3, 0.4], deers.f64), Layout((4,)), bf, Layout((4,)))
    np.testing.assert_array_equal(cuda.to_numpy(bf, Layout((4,))), np.array([0.1, 0.2, 0.3, 0.4], np.float16))


@pytest.mark.parametrize("pair", plan.KERNELS["adamw"][1], ids="/".join)
def test_adamw_step_in_place_for_every_dtype_pair(cuda, pair):
    """Several parameters in one launch, sized to cross the kernel's chunks (4096 elements) and
    with an empty one, each checked against the CPU backend."""
    if "bf16" in pair and not deers.bf16.available:
        pytest.skip("bf16 needs ml_dtypes (pip install ml_dtypes)")
    p_dtype, m_dtype = (deers.dtype.as_dtype(s) for s in pair)
    rng = np.random.default_rng(0)
    sizes = (300, 0, 5000, 4097)
    columns, refs = [[], [], [], []], [[], [], [], []]  # param, grad, m, v
    for size in sizes:
        param, grad, m = (rng.standard_normal(size).astype(p_dtype.numpy) for _ in range(3))
        v = np.abs(rng.standard_normal(size))
        for slot, (a, dtype) in enumerate(((param, p_dtype), (grad, p_dtype), (m, m_dtype), (v, m_dtype))):
            columns[slot].append(_up(cuda, a, dtype))
            refs[slot].append(a.astype(dtype.numpy).astype(np.float64))
    held = list(columns[0])
    for step in (1, 2, 3):
        CPU.adamw_step(*([(a, Layout(a.shape)) for a in column] for column in refs), 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
        cuda.adamw_step(*([(b, Layout((b.size,))) for b in column] for column in columns), 1e-2, 0.9, 0.95, 1e-8,
                        0.1, step)
    assert all(a is b for a, b in zip(columns[0], held))
    assert cuda.rt.launches.count(f"adamw_{pair[0]}_{pair[1]}") == 3  # one launch per step for all four
    tolerance = {"f32": 1e-5, "f64": 1e-12}.get(pair[0], 1e-2)
    for column, ref in zip(columns, refs):
        for got, expected in zip(column, ref):
            np.testing.assert_allclose(_down(cuda, got), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_clipping_primitives_for_every_dtype(cuda, dtype):
    """sum_of_squares (partials, then one fixed-order sum) and scale_ over arrays crossing chunks."""
    if dtype is deers.bf16 and not deers.bf16.available:
        pytest.skip("bf16 needs ml_dtypes (pip install ml_dtypes)")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n).astype(dtype.numpy) for n in (7, 0, 9000)]
    bufs = [_up(cuda, a, dtype) for a in arrays]
    pairs = [(b, Layout((b.size,))) for b in bufs]
    total = cuda.to_numpy(cuda.sum_of_squares(pairs), Layout(()))
    wide = [a.astype(np.float64) for a in arrays]
    np.testing.assert_allclose(total, sum((w ** 2).sum() for w in wide), rtol=1e-5)
    factor = _up(cuda, np.array([0.5]), deers.f32)
    cuda.scale_(pairs, factor)
    for buf, w in zip(bufs, wide):
        np.testing.assert_allclose(_down(cuda, buf), w * 0.5, rtol=1e-2 if dtype.is_half else 1e-6)


# ---- fused losses and norms ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_over_the_gpt2_vocabulary(cuda, dtype, smoothing):
    n, c = 4, 50257
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype.numpy)
    targets = np.array([50256, -100, 0, 777], np.int64)
    reference_dtype = np.float64 if dtype is deers.f64 else np.float32
    rows, cols = Layout((n, c)), Layout((n,))
    loss, count, grad = CPU.cross_entropy(logits.astype(reference_dtype).reshape(-1), rows, targets, cols, -100,
                                          smoothing)
    got = cuda.cross_entropy(_up(cuda, logits, dtype), rows, _up(cuda, targets, deers.i64), cols, -100, smoothing)
    assert cuda.to_numpy(got[1], Layout((1,)))[0] == count[0] == 3  # 1-element device buffers
    assert got[0].dtype == (np.float64 if dtype is deers.f64 else np.float32) and got[0].size == 1
    np.testing.assert_allclose(_down(cuda, got[0]), loss, rtol=1e-5)  # accumulated in f32 (f64) whatever the dtype
    assert got[2].dtype == dtype.numpy
    _close(_down(cuda, got[2]), grad, dtype)
    assert not _down(cuda, got[2]).reshape(n, c)[1].any()  # the ignored row has no gradient
    launched = cuda.cross_entropy(_up(cuda, logits, dtype), rows, _up(cuda, targets + 2, deers.i64), cols, -98,
                                  smoothing)  # target 50258 of 50257 classes: recorded on the device, no wait
    assert launched[0].size == 1
    with pytest.raises(IndexError, match="cross_entropy: index 50258 is out of range for a dimension of size 50257"):
        cuda.synchronize()  # the next sync point raises it
    cuda.synchronize()  # and only once


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("rows,d", [(5, 768), (300, 48)])
def test_rmsnorm_forward_and_backward(cuda, dtype, rows, d):
    rng = np.random.default_rng(0)
    x, g = (rng.standard_normal((rows, d)).astype(dtype.numpy) for _ in range(2))
    w = rng.uniform(0.5, 1.5, d).astype(dtype.numpy)
    reference_dtype = np.float64 if dtype is deers.f64 else np.float32
    ref_x, ref_g, ref_w = (a.astype(reference_dtype).reshape(-1) for a in (x, g, w))
    lx, lw, lr = Layout((rows, d)), Layout((d,)), Layout((rows,))
    y, rstd = CPU.rmsnorm(ref_x, lx, ref_w, lw, 1e-5)
    dx, dw = CPU.rmsnorm_backward(ref_g, lx, ref_x, lx, ref_w, lw, rstd, lr)
    got_y, got_rstd = cuda.rmsnorm(_up(cuda, x, dtype), lx, _up(cuda, w, dtype), lw, 1e-5)
    assert got_rstd.dtype == rstd.dtype and got_rstd.size == rows  # f32 for f16/bf16, like the CPU
    got_dx, got_dw = cuda.rmsnorm_backward(_up(cuda, g, dtype), lx, _up(cuda, x, dtype), lx, _up(cuda, w, dtype), lw,
                                           got_rstd, lr)
    for got, expected, what in ((got_y, y, "y"), (got_rstd, rstd, "rstd"), (got_dx, dx, "dx")):
        _close(_down(cuda, got), expected, dtype, what)
    atol, rtol = TOL[dtype.name]
    np.testing.assert_allclose(_down(cuda, got_dw), dw, atol=atol * np.sqrt(rows), rtol=rtol, err_msg="dw")


def _causal_softmax_reference(x: np.ndarray, log: bool) -> np.ndarray:
    T, S = x.shape[-2:]
    visible = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)
    z = np.where(visible, x, -np.inf)
    z = z - z.max(-1, keepdims=True)
    out = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return out if log else np.exp(out)


@pytest.mark.parametrize("dtype", [deers.f32] + LOW_PRECISION, ids=lambda d: d.name)
@pytest.mark.parametrize("log", [False, True])
def test_causal_softmax_forward_and_backward(cuda, dtype, log):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7))  # (B, nh, T, S) with S - T = 2 positions already cached
    g = rng.standard_normal(x.shape)
    storage = np.ascontiguousarray(x.transpose(0, 2, 1, 3))  # read through a permuted view
    layout = Layout((2, 5, 3, 7)).permute((0, 2, 1, 3))
    y = cuda.softmax(_up(cuda, storage, dtype), layout, log, causal=True)
    expected = _causal_softmax_reference(x, log)
    got = _down(cuda, y).reshape(x.shape)
    _close(np.where(np.isinf(expected), 0, got), np.where(np.isinf(expected), 0, expected), dtype)
    assert (np.isinf(got) == np.isinf(expected)).all()
    dense = Layout(x.shape)
    dx = _down(cuda, cuda.softmax_backward(y, dense, _up(cuda, g, dtype), dense, log, causal=True)).reshape(x.shape)
    p = np.exp(_causal_softmax_reference(x, True))
    visible = p > 0
    if log:
        expected_dx = np.where(visible, g - p * np.where(visible, g, 0).sum(-1, keepdims=True), 0)
    else:
        expected_dx = p * (g - (g * p).sum(-1, keepdims=True))
    _close(dx, expected_dx, dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_rope_kernel_matches_the_rope_op_forward_and_backward(cuda, dtype):
    rng = np.random.default_rng(0)
    B, nh, T, hd = 2, 3, 4, 6
    x = rng.standard_normal((B, T, nh, hd))  # stored (B, T, nh, hd), viewed as (B, nh, T, hd)
    angle = np.arange(T)[:, None] * np.tile(10000.0 ** (-np.arange(hd // 2) * 2 / hd), 2)[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    xt = deers.tensor(x, dtype=deers.f64).permute(0, 2, 1, 3).attach()
    y = apply_rope(xt, deers.tensor(cos, dtype=deers.f64), deers.tensor(sin, dtype=deers.f64))
    g = rng.standard_normal(y.shape)
    dx = y.backward(deers.tensor(g, dtype=deers.f64))[xt]
    layout = Layout((B, T, nh, hd)).permute((0, 2, 1, 3))
    tables = [_up(cuda, cos, dtype), Layout((T, hd)), _up(cuda, sin, dtype), Layout((T, hd))]
    got = cuda.rope(_up(cuda, x, dtype), layout, *tables)
    _close(_down(cuda, got).reshape(y.shape), y.numpy(), dtype, "forward")
    got_dx = cuda.rope(_up(cuda, g, dtype), Layout(y.shape), *tables, inverse=True)
    _close(_down(cuda, got_dx).reshape(y.shape), dx.numpy(), dtype, "backward")


# ---- reductions and GEMM ---------------------------------------------------------------------------------
def test_two_pass_reductions_of_a_long_row(cuda):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000).astype(np.float32)
    buf = _up(cuda, x, deers.f32)
    p = plan.reduction_plan((x.size,), (1,), 0, (0,))
    assert p.split > 1
    np.testing.assert_allclose(_down(cuda, cuda.reduce("sum", buf, Layout(x.shape), (0,))), x.sum(dtype=np.float64),
                               rtol=1e-5)
    assert _down(cuda, cuda.reduce("max", buf, Layout(x.shape), (0,)))[0] == x.max()
    ints = rng.integers(-1000, 1000, 100_000)
    assert cuda.to_numpy(cuda.reduce("sum", _up(cuda, ints, deers.i64), Layout(ints.shape), (0,)), Layout((1,)))[0] \
        == ints.sum()
    x[1234] = np.nan
    assert np.isnan(_down(cuda, cuda.reduce("max", _up(cuda, x, deers.f32), Layout(x.shape), (0,)))[0])


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: d.name)
def test_half_precision_matmul_accumulates_in_f32(cuda, dtype):
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, (4, 2048)), rng.uniform(0, 1, (2048, 3))  # sums near 512: f16/bf16 steps of 0.25-2
    a16, b16 = a.astype(dtype.numpy), b.astype(dtype.numpy)
    expected = (a16.astype(np.float64) @ b16.astype(np.float64)).astype(dtype.numpy).astype(np.float64)
    b_transposed = _up(cuda, b16.T.copy(), dtype)  # read through a transposed layout
    got = cuda.matmul(_up(cuda, a16, dtype), Layout(a.shape), b_transposed, Layout((2048, 3), (1, 2048)))
    np.testing.assert_allclose(_down(cuda, got).reshape(4, 3), expected, rtol=1e-2)


def test_tf32_switch_reaches_the_gemm(cuda):
    a = _up(cuda, np.random.default_rng(0).standard_normal((64, 64)), deers.f32)
    exact = _down(cuda, cuda.matmul(a, Layout((64, 64)), a, Layout((64, 64))))
    try:
        set_allow_tf32(True)
        fast = _down(cuda, cuda.matmul(a, Layout((64, 64)), a, Layout((64, 64))))
    finally:
        set_allow_tf32(False)
    np.testing.assert_allclose(fast, exact, atol=0.05, rtol=1e-2)  # TF32 keeps ~10 mantissa bits
    if isinstance(cuda.rt, HostRuntime):
        assert cuda.rt.allow_tf32_seen[-2:] == [False, True]


def _gemm_case(cuda, name: str, dtype: deers.DType):
    """(a buffer, its layout, b buffer, its layout, exact product) for a GEMM layout the GPT uses;
    each operand is stored contiguous in `stored` shape and read through `.permute(perm)`."""
    rng = np.random.default_rng(1)
    cases = {  # name -> ((stored shape of a, perm of a), (stored shape of b, perm of b))
        "x @ W.T (Linear)": (((6, 5), (0, 1)), ((4, 5), (1, 0))),
        "x.T @ g (weight gradient)": (((5, 6), (1, 0)), ((5, 4), (0, 1))),
        "q @ k^T (batched, B transposed)": (((2, 3, 6, 4), (0, 1, 2, 3)), ((2, 3, 5, 4), (0, 1, 3, 2))),
        "att^T @ g (batched, A transposed)": (((2, 3, 5, 6), (0, 1, 3, 2)), ((2, 3, 5, 4), (0, 1, 2, 3))),
        "one row": (((1, 5), (0, 1)), ((5, 3), (0, 1))),
        "one column": (((4, 5), (0, 1)), ((5, 1), (0, 1))),
    }
    operands = []
    for stored, perm in cases[name]:
        data = rng.standard_normal(stored).astype(dtype.numpy)
        operands.append((_up(cuda, data, dtype), Layout(stored).permute(perm), data.transpose(perm)))
    (a, la, da), (b, lb, db) = operands
    return a, la, b, lb, da.astype(np.float64) @ db.astype(np.float64)


GEMM_CASES = ["x @ W.T (Linear)", "x.T @ g (weight gradient)", "q @ k^T (batched, B transposed)",
              "att^T @ g (batched, A transposed)", "one row", "one column"]


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("name", GEMM_CASES)
def test_gemm_reads_the_gpt_layouts_through_cublas_without_a_copy(cuda, name, dtype):
    a, la, b, lb, expected = _gemm_case(cuda, name, dtype)
    before = len(cuda.rt.launches) if isinstance(cuda.rt, HostRuntime) else 0
    got = cuda.matmul(a, la, b, lb)
    _close(_down(cuda, got).reshape(expected.shape), expected, dtype)
    if isinstance(cuda.rt, HostRuntime):  # one cuBLAS call, no kernel: no operand was copied or cast
        assert cuda.rt.launches[before:] == []
        call = cuda.rt.gemms[-1]
        assert call.batch == int(np.prod(la.shape[:-2], dtype=np.int64))


def test_gemm_broadcast_batch_is_stride_0_and_the_v_view_is_read_in_place(cuda):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = rng.standard_normal((5, 6)).astype(np.float32)
    before = len(cuda.rt.launches) if isinstance(cuda.rt, HostRuntime) else 0
    shared = Layout((1, 1, 5, 6), (0, 0, 6, 1)).broadcast_to((2, 3, 5, 6))  # one matrix for every batch entry
    got = cuda.matmul(_up(cuda, x, deers.f32), Layout(x.shape), _up(cuda, w, deers.f32), shared)
    np.testing.assert_allclose(_down(cuda, got).reshape(2, 3, 4, 6), x @ w, rtol=1e-5, atol=1e-5)
    if isinstance(cuda.rt, HostRuntime):
        assert cuda.rt.launches[before:] == [] and cuda.rt.gemms[-1].first.batch_stride == 0
    # v of a GPT block: (B, nh, T, hd) inside the (B, T, 3 D) qkv buffer; its batch dims do not
    # collapse to one stride: f32 reads it through pointer arrays (cublasSgemmBatched, no kernel);
    # f16, which CuPy has no pointer-array GEMM for, takes one strided-batched call per sequence
    B, nh, T, hd = 2, 3, 4, 5
    qkv = rng.standard_normal((B, T, 3 * nh * hd)).astype(np.float32)
    v_layout = Layout((B, T, 3 * nh * hd)).narrow(2, 2 * nh * hd, nh * hd)
    v_layout = Layout((B, T, nh, hd), (v_layout.strides[0], v_layout.strides[1], hd, 1), v_layout.offset)
    v_layout = v_layout.permute((0, 2, 1, 3))  # (B, nh, T, hd)
    att = rng.standard_normal((B, nh, T, T)).astype(np.float32)
    v = qkv[:, :, 2 * nh * hd:].reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
    for dtype in (deers.f32, deers.f16):
        before = len(cuda.rt.launches) if isinstance(cuda.rt, HostRuntime) else 0
        calls = len(cuda.rt.gemms) if isinstance(cuda.rt, HostRuntime) else 0
        got = cuda.matmul(_up(cuda, att, dtype), Layout(att.shape), _up(cuda, qkv, dtype), v_layout)
        expected = att.astype(dtype.numpy).astype(np.float64) @ v.astype(dtype.numpy).astype(np.float64)
        _close(_down(cuda, got).reshape(B, nh, T, hd), expected, dtype)
        if isinstance(cuda.rt, HostRuntime):
            assert cuda.rt.launches[before:] == []  # no copy kernel in either dtype
            kinds = [type(c).__name__ for c in cuda.rt.gemms[calls:]]
            assert kinds == (["BatchedGemm"] if dtype is deers.f32 else ["Gemm"] * B)


def test_clip_grad_norm_keeps_the_norm_on_the_device(cuda, monkeypatch):
    from deers.optim import clip_grad_norm

    rng = np.random.default_rng(3)
    ws = [deers.Var(deers.tensor(rng.standard_normal(s), dtype=d, device=CUDA))
          for s, d in (((3, 4), deers.f32), ((5,), deers.f32), ((2, 2), LOW_PRECISION[0]))]
    grads = sum(((w.to_dtype(deers.f32) * float(i + 2)) ** 2).sum() for i, w in enumerate(ws)).backward()
    before = [grads[w].to_dtype(deers.f64).numpy() for w in ws]
    reads = []
    monkeypatch.setattr(cuda.rt, "download", lambda buf, real=cuda.rt.download: reads.append(buf.size) or real(buf))
    norm = clip_grad_norm(ws, grads, 1.0)
    assert reads == [] and norm.device == CUDA and norm.shape == () and norm.dtype is deers.f32
    monkeypatch.undo()
    expected = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in before))
    assert float(norm) == pytest.approx(expected, rel=1e-3)
    scale = 1.0 / (expected + 1e-6)
    for w, g in zip(ws, before):
        np.testing.assert_allclose(grads[w].to_dtype(deers.f64).numpy(), g * scale, rtol=1e-2 if w.dtype.is_half else 1e-5)

"""The CUDA backend against the CPU oracle: every op forward and backward on contiguous, permuted,
narrowed and broadcast (stride-0) inputs in f32, f64, f16 and bf16, plus casts, moves, IndexError
on bad indices, random numbers, in-place writes and the fused kernels.

Each test runs twice (the `cuda` fixture): on the kernels compiled by g++ and emulated on the CPU
(tests/cuda_emulator.py, every machine with g++), and on a real GPU when CuPy sees one. The
reference is the CPU backend in f32 (f64 for f64) on the same values rounded to the tested dtype.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from cuda_emulator import cuda_backend_fixture
from deers.array import NDArray
from deers.layout import Layout
from deers.ops.attention import masked_softmax
from deers.ops.norm import rms_norm
from helpers import make_input

CUDA = deers.Device.cuda(0)
LOW_PRECISION = [d for d in (deers.f16, deers.bf16) if d is not None]
TOL = {"f32": (2e-5, 2e-5), "f64": (1e-10, 1e-10), "f16": (1e-2, 1e-2), "bf16": (6e-2, 3e-2)}


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    yield from cuda_backend_fixture(request)


def F(*shape, low=-2.0, high=2.0):
    """A float input of `shape` drawn uniformly from [low, high)."""
    return ("float", shape, low, high)


IDX = np.array([4, 0, 4, 2], np.int64)
MASK = np.array([[True, False, True, False]])
CAUSAL = np.triu(np.full((4, 4), -np.inf), 1)
OPS = {
    "neg": (lambda x: -x, [F(3, 4)]),
    "exp": (lambda x: x.exp(), [F(3, 4)]),
    "log": (lambda x: x.log(), [F(3, 4, low=0.2)]),
    "sqrt": (lambda x: x.sqrt(), [F(3, 4, low=0.2)]),
    "rsqrt": (lambda x: x.rsqrt(), [F(3, 4, low=0.2)]),
    "sin cos": (lambda x: x.sin() + x.cos(), [F(3, 4)]),
    "tanh": (lambda x: x.tanh(), [F(3, 4)]),
    "sigmoid": (lambda x: x.sigmoid(), [F(3, 4)]),
    "relu": (lambda x: x.relu(), [F(3, 4)]),
    "abs": (lambda x: x.abs(), [F(3, 4)]),
    "square": (lambda x: x.square(), [F(3, 4)]),
    "add": (lambda a, b: a + b, [F(3, 4), F(4)]),
    "sub": (lambda a, b: a - b, [F(2, 3, 4), F(3, 1)]),
    "mul": (lambda a, b: a * b, [F(3, 1), F(1, 4)]),
    "div": (lambda a, b: a / b, [F(3, 4), F(3, 4, low=0.5)]),
    "pow": (lambda a, b: a ** b, [F(3, 4, low=0.5), F(3, 4)]),
    "maximum": (lambda a, b: a.maximum(b), [F(3, 4), F(3, 4)]),
    "minimum": (lambda a, b: a.minimum(b), [F(3, 4), F(4)]),
    "scalar add": (lambda x: x + 2.5, [F(3, 4)]),
    "scalar rsub": (lambda x: 2.0 - x, [F(3, 4)]),
    "scalar mul": (lambda x: x * 3.0, [F(3, 4)]),
    "scalar rdiv": (lambda x: 1.0 / x, [F(3, 4, low=0.5)]),
    "powf": (lambda x: x.powf(3.0), [F(3, 4)]),
    "rpow": (lambda x: 2.0 ** x, [F(3, 4)]),
    "clamp": (lambda x: x.clamp(-0.5, 0.5), [F(3, 4)]),
    "where": (lambda a, b: deers.where(a > 0, a, b), [F(3, 4), F(4)]),
    "masked_fill": (lambda x, m: x.masked_fill(m, -5.0), [F(3, 4), MASK]),
    "sum dim": (lambda x: x.sum(1), [F(3, 4)]),
    "sum all": (lambda x: x.sum(), [F(2, 3, 4)]),
    "sum dims keepdim": (lambda x: x.sum((0, 2), keepdim=True), [F(2, 3, 4)]),
    "sum over rows (cols kernel)": (lambda x: x.sum(0), [F(300, 3)]),
    "mean": (lambda x: x.mean(-1), [F(2, 3, 4)]),
    "max dim": (lambda x: x.max(1), [F(3, 4)]),
    "min dims": (lambda x: x.min((0, 1)), [F(3, 4, 2)]),
    "max all": (lambda x: x.max(), [F(3, 4)]),
    "logsumexp": (lambda x: x.logsumexp(1), [F(3, 4)]),
    "softmax last": (lambda x: x.softmax(-1), [F(2, 3, 5)]),
    "softmax dim 0": (lambda x: x.softmax(0), [F(3, 4)]),
    "log_softmax": (lambda x: x.log_softmax(-1), [F(3, 5)]),
    "matmul 2d": (lambda a, b: a @ b, [F(3, 4), F(4, 5)]),
    "matmul batched": (lambda a, b: a @ b, [F(2, 3, 4), F(2, 4, 5)]),
    "matmul broadcast batch": (lambda a, b: a @ b, [F(2, 1, 3, 4), F(3, 4, 2)]),
    "matmul 3d @ 2d": (lambda a, b: a @ b, [F(2, 3, 4), F(4, 5)]),
    "matvec": (lambda a, b: a @ b, [F(3, 4), F(4)]),
    "permute compact": (lambda x: x.permute(2, 0, 1).compact() * 1.0, [F(2, 3, 4)]),
    "reshape copy": (lambda x: x.transpose(0, 1).reshape(-1) * 1.0, [F(3, 4)]),
    "getitem slices": (lambda x: x[1:, ::2] * 1.0, [F(3, 4)]),
    "cat": (lambda a, b: deers.cat([a, b], 1), [F(3, 2), F(3, 4)]),
    "stack": (lambda a, b: deers.stack([a, b], 0), [F(3, 4), F(3, 4)]),
    "index_select": (lambda x, i: x.index_select(0, i), [F(5, 3), IDX]),
    "index_select dim 1": (lambda x, i: x.index_select(1, i), [F(3, 5), IDX]),
    "embedding": (lambda w, i: deers.embedding(w, i), [F(5, 3), IDX.reshape(2, 2)]),
    "gather": (lambda x, i: x.gather(1, i), [F(3, 5), np.array([[0, 4], [2, 2], [1, 0]])]),
    "gather dim 0, smaller index": (lambda x, i: x.gather(0, i), [F(3, 5), np.array([[2, 0, 2], [1, 1, 0]])]),
    "rms_norm": (lambda x, w: rms_norm(x, w, 1e-5), [F(2, 3, 8), F(8)]),
    "masked_softmax": (lambda s: masked_softmax(s, deers.tensor(CAUSAL, dtype=s.dtype, device=s.device), 0.5),
                       [F(2, 4, 4)]),
    "cross_entropy": (lambda x: deers.loss.cross_entropy(x, deers.tensor([1, 0, 4], device=x.device)), [F(3, 5)]),
}
LAYOUTS = ("contiguous", "permuted", "narrowed", "broadcast")


def _build(array: np.ndarray, layout: str, dtype: deers.DType) -> tuple[deers.Tensor, deers.Tensor]:
    """(cpu reference, cuda tensor) holding `array`, floats rounded to `dtype`; the cuda tensor has
    the CPU tensor's exact buffer and Layout (strides, offset), so it reads the same view."""
    if array.dtype.kind != "f":
        cpu = make_input(array, "contiguous")
        return cpu, cpu.to_device(CUDA)
    if layout == "broadcast" and array.ndim:
        array = np.ascontiguousarray(np.broadcast_to(array[:1], array.shape))
    rounded = array.astype(dtype.numpy)
    host = make_input(rounded, layout).data
    backend = deers.backend.backend_for(CUDA)
    on_cuda = NDArray(backend.from_numpy(host.buffer, dtype), host.layout, dtype, CUDA)
    reference = make_input(rounded.astype(np.float64 if dtype is deers.f64 else np.float32), layout)
    return reference.attach(), deers.Tensor(on_cuda).attach()


def _assert_close(got: deers.Tensor, expected: deers.Tensor, dtype: deers.DType, what: str) -> None:
    assert got.device == CUDA, f"{what}: result on {got.device}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape} vs {expected.shape}"
    assert got.dtype is (dtype if expected.dtype.is_float else expected.dtype), f"{what}: dtype {got.dtype}"
    if expected.dtype.is_float:
        atol, rtol = TOL[dtype.name]
        np.testing.assert_allclose(got.numpy().astype(np.float64), expected.numpy().astype(np.float64),
                                   atol=atol, rtol=rtol, err_msg=what)
    else:
        np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=what)


def check_against_cpu(name: str, layout: str, dtype: deers.DType) -> None:
    """Run OPS[name] on cpu and cuda inputs; compare the forward and every input's gradient."""
    fn, specs = OPS[name]
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(s[2], s[3], s[1]) if isinstance(s, tuple) else np.asarray(s) for s in specs]
    pairs = [_build(a, layout, dtype) for a in arrays]
    cpu_inputs, cuda_inputs = [p[0] for p in pairs], [p[1] for p in pairs]
    cpu_out, cuda_out = fn(*cpu_inputs), fn(*cuda_inputs)
    _assert_close(cuda_out, cpu_out, dtype, f"{name} [{layout}, {dtype.name}] forward")
    seed = np.random.default_rng(1).standard_normal(cpu_out.shape).astype(dtype.numpy)
    cpu_grads = cpu_out.backward(deers.tensor(seed.astype(cpu_out.dtype.numpy), dtype=cpu_out.dtype))
    cuda_grads = cuda_out.backward(deers.tensor(seed, dtype=dtype, device=CUDA))
    for i, (cpu_in, cuda_in) in enumerate(zip(cpu_inputs, cuda_inputs)):
        if cpu_in.requires_grad:
            _assert_close(cuda_grads[cuda_in], cpu_grads[cpu_in], dtype, f"{name} [{layout}, {dtype.name}] grad {i}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(OPS))
def test_op_f32_matches_cpu(cuda, name, layout):
    check_against_cpu(name, layout, deers.f32)


@pytest.mark.parametrize("dtype", LOW_PRECISION + [deers.f64], ids=lambda d: d.name)
@pytest.mark.parametrize("name", list(OPS))
def test_op_other_dtypes_match_cpu(cuda, name, dtype):
    check_against_cpu(name, "permuted", dtype)


# ---- comparisons, argmax, casts, integers (no gradient) --------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_comparisons_and_argmax(cuda, layout):
    rng = np.random.default_rng(0)
    (a_cpu, a_cuda), (b_cpu, b_cuda) = [_build(rng.uniform(-2, 2, s), layout, deers.f32) for s in ((3, 4), (4,))]
    for fn in (lambda a, b: a < b, lambda a, b: a >= b, lambda a, b: a == a, lambda a, b: a != b,
               lambda a, b: a > 0.5, lambda a, b: a.le(0.0), lambda a, b: a.argmax(1), lambda a, b: a.argmax(0),
               lambda a, b: a.argmax()):
        got, expected = fn(a_cuda, b_cuda), fn(a_cpu, b_cpu)
        assert got.dtype is expected.dtype and got.device == CUDA
        np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_argmax_ties_and_nan_take_the_first_like_numpy(cuda):
    x = np.array([[1.0, 3.0, 3.0, 0.0], [np.nan, 2.0, np.nan, 9.0], [-np.inf, -np.inf, -np.inf, -np.inf]])
    got = deers.tensor(x, device=CUDA).argmax(1).numpy()
    np.testing.assert_array_equal(got, np.argmax(x, 1))
    wide = np.random.default_rng(0).standard_normal((3, 5000))
    np.testing.assert_array_equal(deers.tensor(wide, device=CUDA).argmax(1).numpy(),
                                  np.argmax(wide.astype(np.float32), 1))


def test_casts_between_every_dtype(cuda):
    values = np.array([[-2.5, -1.0, 0.0], [0.5, 1.75, 3.0]])
    dtypes = [deers.f32, deers.f16, deers.f64, deers.i64, deers.bool_] + LOW_PRECISION[1:]
    for source in dtypes:
        x_cpu = deers.tensor(values, dtype=source)
        x_cuda = x_cpu.to_device(CUDA)
        for target in dtypes:
            got, expected = x_cuda.T.to_dtype(target), x_cpu.T.to_dtype(target)  # a strided source
            assert got.dtype is target and got.device == CUDA
            np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=f"{source} -> {target}")


def test_16_bit_float_conversions_round_like_numpy(cuda):
    backend = cuda
    for dtype in LOW_PRECISION:  # every bit pattern, NaNs and subnormals included
        every = np.arange(65536, dtype=np.uint16).view(dtype.numpy)
        wide = backend.cast(backend.from_numpy(every, dtype), Layout((65536,)), deers.f32)
        np.testing.assert_array_equal(backend.to_numpy(wide, Layout((65536,))), every.astype(np.float32))
    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                         np.inf, -np.inf, np.nan, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 3.0e38], np.float32)
    scales = (10.0 ** rng.integers(-9, 6, 20000)).astype(np.float32)
    values = np.concatenate([specials, rng.standard_normal(20000).astype(np.float32) * scales])
    for dtype in LOW_PRECISION:
        with np.errstate(over="ignore"):  # 3e38 becomes inf in f16, as intended
            expected = values.astype(dtype.numpy)
        narrow = backend.cast(backend.from_numpy(values, deers.f32), Layout(values.shape), dtype)
        got = backend.to_numpy(narrow, Layout(values.shape))
        np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16), err_msg=dtype.name)


def test_integer_and_bool_arithmetic_keep_their_dtype(cuda):
    x = deers.tensor([[3, -2], [0, 7]], device=CUDA)
    assert (x + 2).dtype is deers.i64 and (x * x).dtype is deers.i64
    np.testing.assert_array_equal((x * x + 2).numpy(), [[11, 6], [2, 51]])
    np.testing.assert_array_equal((-x).abs().numpy(), np.abs([[3, -2], [0, 7]]))
    assert x.sum().item() == 8 and x.sum().dtype is deers.i64 and x.max().item() == 7
    np.testing.assert_array_equal((x > 2.5).numpy(), [[True, False], [False, True]])
    np.testing.assert_array_equal((x == 2.5).numpy(), np.zeros((2, 2), bool))
    mask = deers.tensor([True, False, True], device=CUDA)
    assert mask.data.reduce("sum", (0,), False).numpy() == 2
    ones = deers.ones(3, device=CUDA)
    np.testing.assert_array_equal(deers.where(mask, ones, -1.0).numpy(), [1.0, -1.0, 1.0])


@pytest.mark.parametrize("dtype", [deers.f32, deers.f16, deers.f64, deers.i64, deers.bool_, deers.u8]
                         + LOW_PRECISION[1:], ids=lambda d: d.name)
def test_move_round_trip_is_exact(cuda, dtype):
    values = (np.arange(12).reshape(3, 4) - 5.5).astype(dtype.numpy)
    on_cuda = deers.tensor(values, dtype=dtype).to_device("cuda")
    assert on_cuda.device == CUDA and on_cuda.dtype is dtype
    back = on_cuda.permute(1, 0).to_device("cpu")
    np.testing.assert_array_equal(back.numpy(), values.T)


def test_full_and_zero_sized_arrays(cuda):
    np.testing.assert_array_equal(deers.full((2, 3), 0.1, dtype=deers.f16, device=CUDA).numpy(),
                                  np.full((2, 3), 0.1, np.float16))
    empty = deers.zeros(0, 3, device=CUDA)
    assert empty.sum(0).numpy().tolist() == [0.0, 0.0, 0.0] and (empty * 2).shape == (0, 3)
    with pytest.raises(ValueError):
        empty.max(0)


# ---- out-of-range indices raise IndexError ---------------------------------------------------------------
def test_out_of_range_indices_raise_index_error_and_the_next_call_works(cuda):
    x = deers.randn(4, 3, device=CUDA)
    for bad in ([0, 4], [-5]):
        index = deers.tensor(bad, device=CUDA)
        with pytest.raises(IndexError, match="index_select: index (4|-5) is out of range"):
            x.index_select(0, index)
        with pytest.raises(IndexError, match="gather"):
            x.gather(0, index.reshape(-1, 1))
    idx = cuda.from_numpy(np.array([0, 7]), deers.i64)
    src = cuda.from_numpy(np.ones((2, 3)), deers.f32)
    with pytest.raises(IndexError, match="index_add"):
        cuda.index_add((4, 3), deers.f32, 0, idx, Layout((2,)), src, Layout((2, 3)))
    with pytest.raises(IndexError, match="scatter_add"):
        cuda.scatter_add((4, 3), deers.f32, 1, idx, Layout((2, 1)), src, Layout((2, 1)))
    good = x.index_select(0, deers.tensor([-1, 0], device=CUDA))  # the error flag was cleared
    np.testing.assert_array_equal(good.numpy(), x.numpy()[[-1, 0]])


def test_index_add_and_scatter_add_accumulate_repeats_in_every_dtype(cuda):
    idx = np.array([1, 3, 1, 1], np.int64)
    for dtype in [deers.f32, deers.f64, deers.i64] + LOW_PRECISION:
        src = np.arange(8).reshape(4, 2).astype(dtype.numpy)
        got = cuda.index_add((5, 2), dtype, 0, cuda.from_numpy(idx, deers.i64), Layout((4,)),
                             cuda.from_numpy(src, dtype), Layout((4, 2)))
        expected = deers.backend.backend_for("cpu").index_add((5, 2), dtype, 0, idx, Layout((4,)), src.reshape(-1),
                                                               Layout((4, 2)))
        np.testing.assert_array_equal(cuda.to_numpy(got, Layout((10,))), expected, err_msg=dtype.name)

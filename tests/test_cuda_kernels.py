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
from deers.layout import Layout
import device_oracle
from device_oracle import LAYOUTS, LOW_PRECISION, OPS

CUDA = deers.Device.cuda(0)
TOL = {"f32": (2e-5, 2e-5), "f64": (1e-10, 1e-10), "f16": (1e-2, 1e-2), "bf16": (6e-2, 3e-2)}


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    yield from cuda_backend_fixture(request)


def _build(array: np.ndarray, layout: str, dtype: deers.DType) -> tuple[deers.Tensor, deers.Tensor]:
    return device_oracle._build(array, layout, dtype, CUDA)


def check_against_cpu(name: str, layout: str, dtype: deers.DType) -> None:
    device_oracle.check_against_cpu(name, layout, dtype, CUDA, TOL)


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


# ---- out-of-range indices raise IndexError at the next sync point ---------------------------------------
def test_out_of_range_indices_raise_index_error_at_the_next_sync_and_the_next_call_works(cuda):
    """The kernels record a bad index on the device (negative ones too: never wrapped); .numpy(),
    .item() and synchronize() raise it with the op's name and the value; nothing waits before."""
    x = deers.randn(4, 3, device=CUDA)
    for bad, shown in (([0, 4], 4), ([-1], -1), ([2, -5], -5)):
        index = deers.tensor(bad, device=CUDA)
        picked = x.index_select(0, index)  # no error yet: the kernel only recorded it
        with pytest.raises(IndexError, match=f"index_select: index {shown} is out of range for a dimension of size 4"):
            picked.numpy()
        gathered = x.gather(0, index.reshape(-1, 1))
        with pytest.raises(IndexError, match=f"gather: index {shown} is out of range"):
            gathered.sum().item()
    idx = cuda.from_numpy(np.array([0, 7]), deers.i64)
    src = cuda.from_numpy(np.ones((2, 3)), deers.f32)
    cuda.index_add((4, 3), deers.f32, 0, idx, Layout((2,)), src, Layout((2, 3)))
    with pytest.raises(IndexError, match="index_add: index 7"):
        cuda.synchronize()
    cuda.scatter_add((4, 3), deers.f32, 1, idx, Layout((2, 1)), src, Layout((2, 1)))
    with pytest.raises(IndexError, match="scatter_add: index 7 is out of range for a dimension of size 3"):
        cuda.synchronize()
    x.index_select(0, deers.tensor([-1], device=CUDA))  # the first bad call is the one reported
    x.index_select(0, deers.tensor([9], device=CUDA))
    with pytest.raises(IndexError, match="index -1"):
        cuda.synchronize()
    good = x.index_select(0, deers.tensor([3, 0], device=CUDA))  # the error flag was cleared
    np.testing.assert_array_equal(good.numpy(), x.numpy()[[3, 0]])


def test_index_add_and_scatter_add_accumulate_repeats_in_every_dtype(cuda):
    idx = np.array([1, 3, 1, 1], np.int64)
    for dtype in [deers.f32, deers.f64, deers.i64] + LOW_PRECISION:
        src = np.arange(8).reshape(4, 2).astype(dtype.numpy)
        got = cuda.index_add((5, 2), dtype, 0, cuda.from_numpy(idx, deers.i64), Layout((4,)),
                             cuda.from_numpy(src, dtype), Layout((4, 2)))
        expected = deers.backend.backend_for("cpu").index_add((5, 2), dtype, 0, idx, Layout((4,)), src.reshape(-1),
                                                               Layout((4, 2)))
        np.testing.assert_array_equal(cuda.to_numpy(got, Layout((10,))), expected, err_msg=dtype.name)

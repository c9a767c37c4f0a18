"""Every backend satisfies the numbered contract of deers.backend, checked on the backends alone
(no NDArray, no Tensor): each item is a method with the Protocol's parameters in order, `name`
is unique per device, the shared vocabulary (UnaryFn, BinaryFn, ReduceFn) runs everywhere (a
unary name missing from a backend's own `unary_names` raises NotImplementedOnDevice), and each
fused primitive (items 14-20, 22) matches a NumPy reference on non-contiguous operands.

Every primitive of every backend is also compared with the reference backend, the oracle
(`test_primitive_matches_the_reference_backend`), on the same strided operands.

Backends: the reference backend (backend/reference.py); the fast CPU one, on NumPy alone, and
again with its compiled kernels when numba imports ("cpu-compiled": backend/cpu_compiled.py); MLX
when `mlx` imports; CUDA through the emulator (tests/cuda_emulator.py: the real CUDABackend with
its kernels compiled by g++) when g++ is there, and on a real GPU when CuPy sees one.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import deers
from deers.backend import (BINARY_NAMES, COMPARISONS, CONTRACT, REDUCE_NAMES, UNARY_NAMES, Backend, BinaryFn,
                           ReduceFn, UnaryFn, _instances, check_backend)
from deers.backend.reference import ReferenceBackend
from deers.device import Device
from deers.errors import NotImplementedOnDevice
from deers.layout import Layout
from test_ops import UNARY

F32 = deers.f32
NAMES = {"reference": "cpu", "cpu": "cpu", "mlx": "mps", "cuda": "cuda:0"}
ORACLE = ReferenceBackend()


def _make(kind: str):
    if kind == "reference":
        return ReferenceBackend()
    if kind in ("cpu", "cpu-compiled"):
        from deers.backend.cpu import CPUBackend

        if kind == "cpu-compiled":
            pytest.importorskip("numba")
        return CPUBackend(compiled=kind == "cpu-compiled")
    if kind == "mlx":
        pytest.importorskip("mlx.core")
        from deers.backend.mlx import MLXBackend

        return MLXBackend()
    from cuda_emulator import HostRuntime, compiler_available
    from deers.backend.cuda import CUDABackend

    if kind == "cuda-gpu":
        from devices import DEVICES

        if "cuda" not in DEVICES:
            pytest.skip("no CUDA GPU on this machine")
        return CUDABackend(0)
    if not compiler_available():
        pytest.skip("g++ is needed to emulate the CUDA kernels on the CPU")
    return CUDABackend(0, runtime=HostRuntime())


@pytest.fixture(scope="module", params=["reference", "cpu", "cpu-compiled", "mlx", "cuda", "cuda-gpu"])
def backend(request):
    b = _make(request.param)
    b.kind = request.param.removesuffix("-gpu").removesuffix("-compiled")
    return b


# ---- helpers: operands in non-contiguous layouts, read back ------------------------------------------
def put(backend, x: np.ndarray, dtype: deers.DType = F32, pad=np.nan) -> tuple[object, Layout]:
    """x stored with its axes reversed inside a larger buffer padded with `pad`, and the narrowed,
    permuted layout that reads it back as x (1-D: every other element). A kernel that ignores the
    layout reads the padding (NaN, or an out-of-range integer) and fails loudly."""
    x = np.asarray(x)
    if x.ndim == 1:
        big = np.full(2 * x.size + 1, pad)
        big[1::2] = x
        return backend.from_numpy(big.astype(dtype.numpy), dtype), Layout(big.shape).slice(0, 1, x.size, 2)
    reverse = tuple(reversed(range(x.ndim)))
    stored = x.transpose(reverse)
    big = np.full(tuple(n + 1 for n in stored.shape), pad)
    big[tuple(slice(1, None) for _ in stored.shape)] = stored
    layout = Layout(big.shape)
    for d, size in enumerate(stored.shape):
        layout = layout.narrow(d, 1, size)
    return backend.from_numpy(big.astype(dtype.numpy), dtype), layout.permute(reverse)


def get(backend, buf, shape: tuple[int, ...]) -> np.ndarray:
    """A fresh result buffer read back as a float64 host array of `shape`."""
    return backend.to_numpy(buf, Layout(shape)).astype(np.float64)


def dtype_of(backend, buf) -> np.dtype:
    """The NumPy dtype of a 1-element (or any) buffer, read back through the host."""
    return backend.to_numpy(buf, Layout((1,))).dtype


# ---- the contract's shape -----------------------------------------------------------------------------
def test_contract_lists_every_numbered_item():
    assert {"empty", "to_numpy", "softmax", "cross_entropy", "rope", "adamw_step", "sum_of_squares", "scale_",
            "synchronize"} <= set(CONTRACT)
    assert len(CONTRACT) == len(set(CONTRACT))


def test_backend_implements_every_item_with_the_protocols_parameters(backend):
    assert isinstance(backend, Backend)
    check_backend(backend)  # what use_backend checks
    for item in CONTRACT:
        method = getattr(backend, item, None)
        assert callable(method), f"{type(backend).__name__} lacks {item}"
        wanted = list(inspect.signature(getattr(Backend, item)).parameters.values())[1:]  # without self
        got = list(inspect.signature(method).parameters.values())
        names = [p.name for p in got[:len(wanted)]]
        assert names == [p.name for p in wanted], f"{type(backend).__name__}.{item}{inspect.signature(method)}"
        for want, have in zip(wanted, got):
            if want.default is not inspect.Parameter.empty:
                assert have.default == want.default, f"{item}: {have.name} defaults to {have.default}"
        for extra in got[len(wanted):]:
            assert extra.default is not inspect.Parameter.empty, f"{item}: extra parameter {extra.name} needs a default"


def test_backend_name_is_a_str_unique_per_device(backend):
    assert isinstance(backend.name, str) and backend.name == NAMES[backend.kind]


def test_two_cuda_backends_keep_distinct_names_and_rng_states():
    """The bug: every GPU was named "cuda", so get_rng_state (keyed by name) kept one state only."""
    from cuda_emulator import HostRuntime, compiler_available
    from deers.backend.cuda import CUDABackend

    if not compiler_available():
        pytest.skip("g++ is needed to emulate the CUDA kernels on the CPU")
    gpus = [CUDABackend(i, runtime=HostRuntime()) for i in (0, 1)]
    assert [b.name for b in gpus] == ["cuda:0", "cuda:1"]
    gpus[0].seed(1)
    gpus[1].seed(2)
    gpus[1].rand(7, F32)
    states = {b.name: b.get_rng_state() for b in gpus}
    assert len(states) == 2 and states["cuda:0"] != states["cuda:1"]
    first = [get(b, b.rand(4, F32), (4,)) for b in gpus]
    for b in gpus:
        b.set_rng_state(states[b.name])
    for b, draw in zip(gpus, first):
        np.testing.assert_array_equal(get(b, b.rand(4, F32), (4,)), draw)
    with pytest.MonkeyPatch.context() as patch:  # the same through deers.get_rng_state / set_rng_state
        for i, b in enumerate(gpus):
            patch.setitem(_instances, Device.cuda(i), b)
        saved = deers.get_rng_state()
        assert {"cuda:0", "cuda:1"} <= set(saved) and saved["cuda:0"] != saved["cuda:1"]
        draws = [get(b, b.rand(3, F32), (3,)) for b in gpus]
        deers.set_rng_state(saved)
        for b, draw in zip(gpus, draws):
            np.testing.assert_array_equal(get(b, b.rand(3, F32), (3,)), draw)


def test_synchronize_returns_none(backend):
    assert backend.synchronize() is None


# ---- the shared vocabulary ------------------------------------------------------------------------------
UNARY_REFERENCE = {fn: UNARY[fn.value][1] for fn in UnaryFn}  # one table of unary references: test_ops.UNARY
BINARY_REFERENCE = {
    BinaryFn.ADD: np.add, BinaryFn.SUB: np.subtract, BinaryFn.MUL: np.multiply, BinaryFn.DIV: np.divide,
    BinaryFn.POW: np.power, BinaryFn.MAXIMUM: np.maximum, BinaryFn.MINIMUM: np.minimum, BinaryFn.EQ: np.equal,
    BinaryFn.NE: np.not_equal, BinaryFn.LT: np.less, BinaryFn.LE: np.less_equal, BinaryFn.GT: np.greater,
    BinaryFn.GE: np.greater_equal, BinaryFn.FLOOR_DIVIDE: np.floor_divide, BinaryFn.REMAINDER: np.remainder,
    BinaryFn.BITWISE_AND: np.bitwise_and, BinaryFn.BITWISE_OR: np.bitwise_or, BinaryFn.BITWISE_XOR: np.bitwise_xor,
}
INTEGER_ONLY = {UnaryFn.BITWISE_NOT, BinaryFn.BITWISE_AND, BinaryFn.BITWISE_OR, BinaryFn.BITWISE_XOR}


def test_vocabulary_tables_cover_the_shared_names():
    from deers.backend.cuda import plan

    assert set(UNARY_REFERENCE) == set(UnaryFn) and set(BINARY_REFERENCE) == set(BinaryFn)
    assert COMPARISONS <= BINARY_NAMES
    assert ORACLE.unary_names == UNARY_NAMES  # the reference backend computes every name
    assert set(plan.UNARY_OPS) <= UNARY_NAMES  # CUDA computes those it has a code for
    assert set(plan.BINARY_OPS) | set(plan.COMPARE_OPS) == BINARY_NAMES and set(plan.COMPARE_OPS) == COMPARISONS
    assert set(plan.REDUCE_OPS) | {ReduceFn.ARGMAX.value} == REDUCE_NAMES


def float_unary_names() -> list[str]:
    """The unary names the reference backend computes on float data (bitwise_not is not one)."""
    names = []
    for name in sorted(UNARY_NAMES):
        try:
            ORACLE.unary(name, *put(ORACLE, np.ones(3)))
        except TypeError:
            continue
        names.append(name)
    return names


def test_the_reference_backend_computes_each_unary_name_as_numpy_does():
    x = np.random.default_rng(0).uniform(0.2, 2.0, (3, 4)) * np.array([1, -1, 1, -1])  # log, sqrt: NaN for x < 0
    for name in float_unary_names():
        got = get(ORACLE, ORACLE.unary(name, *put(ORACLE, x, deers.f64)), x.shape)
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(got, UNARY_REFERENCE[UnaryFn(name)](x), rtol=1e-12, err_msg=name)


def test_a_unary_name_a_backend_lacks_says_so(backend):
    """Which names a backend computes is its own `unary_names` (for CUDA its kernel codes); any
    other name of the vocabulary raises NotImplementedOnDevice naming the function and device."""
    assert backend.unary_names <= UNARY_NAMES
    a, la = put(backend, np.ones((2, 3)))
    for name in sorted(UNARY_NAMES - backend.unary_names):
        with pytest.raises(NotImplementedOnDevice, match=f"{name} is not implemented on {backend.name}"):
            backend.unary(name, a, la)


def test_every_unary_binary_and_reduce_name_runs_on_a_strided_layout(backend):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.5, 2.0, (3, 4)), rng.uniform(0.5, 2.0, (3, 4))
    x[0, 0], y[0, 0] = 1.0, 1.0  # an equal pair for the comparisons
    a, la = put(backend, x)
    b, lb = put(backend, y)
    for name in sorted(set(float_unary_names()) & backend.unary_names):
        expected = get(ORACLE, ORACLE.unary(name, *put(ORACLE, x)), x.shape)
        np.testing.assert_allclose(get(backend, backend.unary(name, a, la), x.shape), expected, rtol=1e-5,
                                   err_msg=name)
    for fn in set(BinaryFn) - INTEGER_ONLY:
        got = backend.to_numpy(backend.binary(fn.value, a, la, b, lb), Layout(x.shape))
        expected = BINARY_REFERENCE[fn](x.astype(np.float32), y.astype(np.float32))
        if fn.value in COMPARISONS:
            assert got.dtype == np.bool_, fn.value
            np.testing.assert_array_equal(got, expected, err_msg=fn.value)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=fn.value)
    for fn in ReduceFn:
        axes = (1,)
        got = backend.to_numpy(backend.reduce(fn.value, a, la, axes), Layout((3, 1)))
        expected = {"sum": np.sum, "max": np.max, "min": np.min, "argmax": np.argmax}[fn.value](x, axis=1)
        np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-5, err_msg=fn.value)


INTEGER_NAMES = sorted(INTEGER_ONLY | {BinaryFn.FLOOR_DIVIDE, BinaryFn.REMAINDER}, key=lambda f: f.value)


@pytest.mark.parametrize("dtype", [deers.i64, deers.u8, deers.bool_], ids=str)
def test_integer_names_run_on_a_strided_layout(backend, dtype):
    """The bitwise names, // and % on integer and bool buffers (array with array, with a number,
    and the number first) against NumPy. i64 includes the most negative value // -1, which wraps
    (a C division would trap). bool's // and % are left out: the ops refuse them, as PyTorch does."""
    rng = np.random.default_rng(0)
    low, high = {"i64": (-20, 20), "u8": (0, 256), "bool": (0, 2)}[dtype.name]
    x = rng.integers(low, high, (3, 4)).astype(dtype.numpy)
    y = rng.integers(low, high, (3, 4)).astype(dtype.numpy)
    y[y == 0] = 1  # divisors are nonzero
    if dtype.name == "i64":
        x[0, 0], y[0, 0], y[0, 1] = np.iinfo(np.int64).min, -1, -7
    number = y[1, 2].item()
    (a, la), (b, lb) = put(backend, x, dtype, pad=high - 1), put(backend, y, dtype, pad=high - 1)
    read = lambda buf: backend.to_numpy(buf, Layout(x.shape))  # noqa: E731
    with np.errstate(over="ignore"):
        for fn in INTEGER_NAMES:
            if dtype.name == "bool" and fn in (BinaryFn.FLOOR_DIVIDE, BinaryFn.REMAINDER):
                continue
            if isinstance(fn, UnaryFn):
                cases = [(backend.unary(fn.value, a, la), UNARY_REFERENCE[fn](x))]
            else:
                ref, typed = BINARY_REFERENCE[fn], dtype.numpy.type(number)
                cases = [(backend.binary(fn.value, a, la, b, lb), ref(x, y)),
                         (backend.scalar(fn.value, a, la, number), ref(x, typed)),
                         (backend.scalar(fn.value, b, lb, number, reverse=True), ref(typed, y))]
            for got, expected in cases:
                got = read(got)
                assert got.dtype == dtype.numpy, fn.value
                np.testing.assert_array_equal(got, expected, err_msg=f"{fn.value} {dtype.name}")


# ---- 14. softmax, causal softmax and the backward --------------------------------------------------------
def softmax_reference(x: np.ndarray, log: bool, causal: bool = False) -> np.ndarray:
    """The masked softmax: -inf where row t may not see column s (s > t + S - T), then softmax;
    a row that sees nothing is all 0 (log: -inf)."""
    if causal:
        t, s = x.shape[-2:]
        visible = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
        x = np.where(visible, x, -np.inf)
    with np.errstate(invalid="ignore"):
        z = x - x.max(-1, keepdims=True)
        out = z - np.log(np.exp(z).sum(-1, keepdims=True))
    if causal:
        out = np.where(visible, out, -np.inf)
    return out if log else np.exp(out)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,causal", [((3, 5, 7), False), ((2, 3, 5, 7), True), ((1, 2, 70, 75), True),
                                          ((2, 6, 4), True)], ids=["dense", "causal", "causal-blocks", "T>S"])
def test_softmax_matches_the_masked_reference(backend, shape, causal, log):
    x = np.random.default_rng(0).standard_normal(shape)
    a, la = put(backend, x)
    got = get(backend, backend.softmax(a, la, log, causal=causal), shape)
    np.testing.assert_allclose(got, softmax_reference(x, log, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("causal", [False, True], ids=["dense", "causal"])
def test_softmax_scales_its_input_in_the_same_call(backend, causal, log):
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((2, 3, 9, 11)), rng.standard_normal((2, 3, 9, 11))
    scale = 0.37
    a, la = put(backend, x)
    y = backend.softmax(a, la, log, causal=causal, scale=scale)
    expected = softmax_reference(x * scale, log, causal)
    np.testing.assert_allclose(get(backend, y, x.shape), expected, atol=1e-5, rtol=1e-5)
    gb, lg = put(backend, g)
    unscaled = get(backend, backend.softmax_backward(y, Layout(x.shape), gb, lg, log, causal=causal), x.shape)
    scaled = get(backend, backend.softmax_backward(y, Layout(x.shape), gb, lg, log, causal=causal, scale=scale),
                 x.shape)
    np.testing.assert_allclose(scaled, scale * unscaled, atol=1e-6, rtol=1e-5)  # d(scale x)/dx = scale


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_backward_reads_both_layouts(backend, log):
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6))
    y = softmax_reference(x, log)
    expected = g - np.exp(y) * g.sum(-1, keepdims=True) if log else y * (g - (g * y).sum(-1, keepdims=True))
    (yb, ly), (gb, lg) = put(backend, y), put(backend, g)
    got = get(backend, backend.softmax_backward(yb, ly, gb, lg, log), x.shape)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_causal_softmax_backward_gives_masked_entries_no_gradient(backend, log):
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((2, 40, 43)), rng.standard_normal((2, 40, 43))
    a, la = put(backend, x)
    y = backend.softmax(a, la, log, causal=True)
    gb, lg = put(backend, g)
    got = get(backend, backend.softmax_backward(y, Layout(x.shape), gb, lg, log, causal=True), x.shape)
    p = softmax_reference(x, False, causal=True)
    visible = p > 0
    if log:  # g - softmax sum(g) over the visible entries, 0 elsewhere
        expected = np.where(visible, g - p * np.where(visible, g, 0).sum(-1, keepdims=True), 0)
    else:
        expected = p * (g - (g * p).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


# ---- 15. cross-entropy ----------------------------------------------------------------------------------
def cross_entropy_reference(x: np.ndarray, targets: np.ndarray, ignore: int, s: float):
    """(summed loss, counted rows, dlogits / count) in float64."""
    n, c = x.shape
    valid = targets != ignore
    safe = np.where(valid, targets, 0)
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    loss = lse - (1 - s) * x[np.arange(n), safe] - s * x.mean(1)
    count = int(valid.sum())
    grad = np.exp(x - lse[:, None]) - s / c
    grad[np.arange(n), safe] -= 1 - s
    grad = np.where(valid[:, None], grad, 0) / max(count, 1)
    return loss[valid].sum(), count, grad


@pytest.mark.parametrize("overwrite", [False, True], ids=["fresh", "overwrite"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_returns_device_buffers(backend, smoothing, overwrite):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 11)) * 2
    targets = np.array([3, -100, 0, 10, 10, -100])
    a, la = put(backend, x)
    t, lt = put(backend, targets, deers.i64, pad=10 ** 6)
    loss, count, grad = backend.cross_entropy(a, la, t, lt, -100, smoothing, overwrite_logits=overwrite)
    expected_loss, expected_count, expected_grad = cross_entropy_reference(x, targets, -100, smoothing)
    assert dtype_of(backend, loss) == np.float32 and dtype_of(backend, count) == np.int64
    assert get(backend, count, (1,))[0] == expected_count == 4
    np.testing.assert_allclose(get(backend, loss, (1,))[0], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(get(backend, grad, x.shape), expected_grad, atol=1e-6, rtol=1e-5)


def test_cross_entropy_sums_f64_logits_in_f64_and_checks_targets(backend):
    if backend.kind == "mlx":
        from deers.backend.mlx import on_gpu

        if on_gpu():
            pytest.skip("the Apple GPU has no float64")
    x = np.random.default_rng(4).standard_normal((3, 5))
    a, la = put(backend, x, deers.f64)
    t, lt = put(backend, np.array([4, 0, 2]), deers.i64, pad=10 ** 6)
    loss, _, _ = backend.cross_entropy(a, la, t, lt, -100, 0.0)
    assert dtype_of(backend, loss) == np.float64
    rtol = 1e-6 if backend.kind == "mlx" else 1e-12  # MLX computes exp and log of f64 to about f32 accuracy
    np.testing.assert_allclose(get(backend, loss, (1,))[0], cross_entropy_reference(x, np.array([4, 0, 2]), -100, 0)[0],
                               rtol=rtol)
    bad, lbad = put(backend, np.array([4, 5, -100]), deers.i64, pad=10 ** 6)
    with pytest.raises(IndexError, match="cross_entropy"):
        backend.cross_entropy(a, la, bad, lbad, -100, 0.0)
        backend.synchronize()  # CUDA checks the targets on the device and raises at its next sync


# ---- 16. RMSNorm ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [deers.f32, deers.f16], ids=lambda d: d.name)
def test_rmsnorm_forward_and_backward(backend, dtype):
    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 3, 8))
    w = rng.uniform(0.5, 1.5, 8)
    eps = 1e-5
    x, g, w = (v.astype(dtype.numpy).astype(np.float64) for v in (x, g, w))  # exact in the tested dtype
    rstd = 1 / np.sqrt((x * x).mean(-1) + eps)
    xhat = x * rstd[..., None]
    gw = (g * xhat).sum((0, 1))
    gxhat = g * w
    gx = rstd[..., None] * (gxhat - xhat * (gxhat * xhat).mean(-1, keepdims=True))
    (xb, lx), (wb, lw), (gb, lg) = put(backend, x, dtype), put(backend, w, dtype), put(backend, g, dtype)
    y, r = backend.rmsnorm(xb, lx, wb, lw, eps)
    assert dtype_of(backend, r) == np.float32  # f32 for f16 / bf16 x, else x's dtype
    tol = 1e-5 if dtype is deers.f32 else 4e-3
    np.testing.assert_allclose(get(backend, y, x.shape), xhat * w, atol=tol, rtol=tol)
    np.testing.assert_allclose(get(backend, r, (6,)), rstd.reshape(-1), rtol=1e-5)
    dx, dw = backend.rmsnorm_backward(gb, lg, xb, lx, wb, lw, r, Layout((6,)))
    np.testing.assert_allclose(get(backend, dx, x.shape), gx, atol=tol, rtol=tol)
    np.testing.assert_allclose(get(backend, dw, (8,)), gw, atol=4 * tol, rtol=tol)


# ---- 17. RoPE ---------------------------------------------------------------------------------------------
def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def test_rope_and_its_inverse_the_transpose(backend):
    rng = np.random.default_rng(6)
    T, hd = 5, 6
    x, g = rng.standard_normal((2, 3, T, hd)), rng.standard_normal((2, 3, T, hd))
    angle = np.arange(T)[:, None] * np.tile(10000.0 ** (-np.arange(hd // 2) * 2 / hd), 2)[None, :]
    cos, sin = np.cos(angle), np.sin(angle)  # the halves repeat, as the contract's tables do
    (xb, lx), (gb, lg), (cb, lc), (sb, ls) = (put(backend, v) for v in (x, g, cos, sin))
    y = get(backend, backend.rope(xb, lx, cb, lc, sb, ls), x.shape)
    np.testing.assert_allclose(y, x * cos + rotate_half(x) * sin, atol=1e-5, rtol=1e-5)
    back = get(backend, backend.rope(gb, lg, cb, lc, sb, ls, inverse=True), x.shape)
    np.testing.assert_allclose(back, g * cos - rotate_half(g) * sin, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose((y * g).sum(), (x * back).sum(), rtol=1e-4)  # <Rx, g> = <x, R^T g>


# ---- 18. AdamW --------------------------------------------------------------------------------------------
ADAMW_SHAPES = [(4, 5), (0,), (3,), (70, 65)]  # several parameters in one call, an empty one among them


def test_adamw_step_updates_many_parameters_in_one_call(backend):
    rng = np.random.default_rng(7)
    ps = [rng.standard_normal(s) for s in ADAMW_SHAPES]
    ms = [rng.standard_normal(s) for s in ADAMW_SHAPES]
    vs = [np.abs(rng.standard_normal(s)) for s in ADAMW_SHAPES]
    bufs = [[backend.from_numpy(a.astype(np.float32), F32) for a in column] for column in (ps, ms, vs)]
    dense = [Layout(s) for s in ADAMW_SHAPES]
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    for step in (1, 2, 3):
        grads = [rng.standard_normal(s) for s in ADAMW_SHAPES]
        strided = [put(backend, g) for g in grads]  # non-contiguous gradients
        pairs = [list(zip(column, dense)) for column in bufs]
        backend.adamw_step(pairs[0], strided, pairs[1], pairs[2], lr, b1, b2, eps, wd, step)
        for i, g in enumerate(grads):
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            ps[i] = ps[i] * (1 - lr * wd) - lr / (1 - b1 ** step) * ms[i] / (np.sqrt(vs[i] / (1 - b2 ** step)) + eps)
    for column, expected in zip(bufs, (ps, ms, vs)):
        for buf, shape, want in zip(column, ADAMW_SHAPES, expected):
            np.testing.assert_allclose(get(backend, buf, shape), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="adamw_step: param must be dense"):
        p0, m0, v0 = ((column[0], dense[0]) for column in bufs)
        backend.adamw_step([(p0[0], dense[0].permute((1, 0)))], [strided[0]], [m0], [v0], lr, b1, b2, eps, wd, 4)


# ---- 19-20. sum of squares and in-place scaling over many arrays ---------------------------------------
@pytest.mark.parametrize("dtype", [deers.f32, deers.f64], ids=lambda d: d.name)
def test_sum_of_squares_covers_every_array_and_layout(backend, dtype):
    if dtype is deers.f64 and backend.kind == "mlx":
        pytest.skip("MLX has no f64 on the GPU")
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal(s) for s in [(4, 5), (0,), (1,), (3000, 3)]]
    operands = [put(backend, a, dtype) for a in arrays]  # strided views
    out = backend.sum_of_squares(operands)
    expected = sum(float((a ** 2).sum()) for a in arrays)
    assert dtype_of(backend, out) == dtype.numpy
    got = get(backend, out, ())
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype is deers.f32 else 1e-12)
    again = get(backend, backend.sum_of_squares(operands), ())
    assert again.tobytes() == got.tobytes()  # no atomics: the same bits every run
    assert get(backend, backend.sum_of_squares([]), ()) == 0


def test_scale_multiplies_every_array_in_place(backend):
    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal(s) for s in [(4, 5), (0,), (5000,)]]
    bufs = [backend.from_numpy(a.astype(np.float32), F32) for a in arrays]
    factor = backend.from_numpy(np.array([0.25], np.float32), F32)
    backend.scale_([(b, Layout(a.shape)) for b, a in zip(bufs, arrays)], factor)
    for buf, a in zip(bufs, arrays):
        np.testing.assert_allclose(get(backend, buf, a.shape), a * 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="scale_: array must be dense"):
        backend.scale_([(bufs[0], Layout((4, 5)).permute((1, 0)))], factor)


# ---- 11-12, 15. indices are checked, never wrapped --------------------------------------------------
@pytest.mark.parametrize("item", ["index_select", "index_add", "gather", "scatter_add", "cross_entropy"])
def test_negative_indices_raise_index_error_never_wrap(backend, item):
    """The duty line: anything outside [0, size) raises IndexError, a negative index included."""
    x = np.arange(12.0).reshape(4, 3)
    a, la = put(backend, x)
    idx, lidx = put(backend, np.array([0, -1]), deers.i64, pad=0)  # the padding is in range
    idx2, lidx2 = put(backend, np.array([[0, -1, 1]]), deers.i64, pad=0)
    src, lsrc = put(backend, np.ones((2, 3)))
    run = {
        "index_select": lambda: backend.index_select(a, la, 0, idx, lidx),
        "index_add": lambda: backend.index_add((4, 3), F32, 0, idx, lidx, src, lsrc),
        "gather": lambda: backend.gather(a, la, 0, idx2, lidx2),
        "scatter_add": lambda: backend.scatter_add((4, 3), F32, 0, idx2, lidx2, src, lsrc),
        "cross_entropy": lambda: backend.cross_entropy(a, la, *put(backend, np.array([0, -1, 2, 1]), deers.i64, pad=0),
                                                       -100, 0.0),
    }[item]
    with pytest.raises(IndexError, match=item):
        run()
        backend.synchronize()  # a backend may report a kernel's index error when it next waits


# ---- 10. matmul accumulating into an existing buffer ----------------------------------------------
@pytest.mark.parametrize("shapes", [((5, 7), (7, 3)), ((2, 4, 6), (2, 6, 5))], ids=["2-D", "batched"])
def test_matmul_with_acc_adds_into_it_in_place(backend, shapes):
    rng = np.random.default_rng(10)
    (sa, sb) = shapes
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    start = rng.standard_normal(sa[:-1] + sb[-1:])
    acc = backend.from_numpy(start.astype(np.float32), F32)
    (ab, la), (bb, lb) = put(backend, a), put(backend, b)  # strided operands
    result = backend.matmul(ab, la, bb, lb, acc)
    assert result is acc
    np.testing.assert_allclose(get(backend, acc, start.shape), start + a @ b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="matmul: acc must be"):
        backend.matmul(ab, la, bb, lb, backend.from_numpy(np.zeros(3, np.float32), F32))


# ---- 22. causal attention ----------------------------------------------------------------------------
def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, dy: np.ndarray, scale: float):
    """(y, p, dq, dk, dv) in float64 from the masked softmax: p = softmax(scale q k^T) with row t
    seeing s <= t + S - T, y = p v, and the gradients of sum(y * dy)."""
    p = softmax_reference(scale * q @ np.swapaxes(k, -1, -2), False, causal=True)
    dp = dy @ np.swapaxes(v, -1, -2)
    ds = scale * p * (dp - (dp * p).sum(-1, keepdims=True))
    return p @ v, p, ds @ k, np.swapaxes(ds, -1, -2) @ q, np.swapaxes(p, -1, -2) @ dy


# one block; 2 blocks; 3 uneven blocks; cached keys (S > T) over 2 blocks; hv != hd
ATTENTION_SHAPES = [((2, 3, 5, 4), 5, 4), ((1, 2, 70, 8), 70, 8), ((2, 1, 150, 8), 150, 8),
                    ((1, 2, 150, 8), 190, 8), ((1, 1, 200, 4), 200, 6)]


@pytest.mark.parametrize("shape,s,hv", ATTENTION_SHAPES, ids=["small", "two-blocks", "uneven", "cached", "hv"])
def test_causal_attention_and_its_backward_match_the_masked_reference(backend, shape, s, hv):
    rng = np.random.default_rng(22)
    *batch, t, hd = shape
    q, k = rng.standard_normal(shape), rng.standard_normal((*batch, s, hd))
    v, dy = rng.standard_normal((*batch, s, hv)), rng.standard_normal((*batch, t, hv))
    scale = 0.4
    (qb, lq), (kb, lk), (vb, lv), (gb, lg) = (put(backend, x) for x in (q, k, v, dy))  # strided operands
    y, p = backend.causal_attention(qb, lq, kb, lk, vb, lv, scale)
    expected = attention_reference(q, k, v, dy, scale)
    lp = Layout((*batch, t, s))
    got = [get(backend, y, (*batch, t, hv)), get(backend, p, lp.shape)]
    got += [get(backend, g, x.shape) for g, x in
            zip(backend.causal_attention_backward(qb, lq, kb, lk, vb, lv, p, lp, gb, lg, scale), (q, k, v))]
    for name, a, b in zip(["y", "p", "dq", "dk", "dv"], got, expected):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=name)
    hidden = np.arange(s)[None, :] > np.arange(t)[:, None] + (s - t)
    assert (got[1][..., hidden] == 0).all()  # exact zeros where a query sees no key


def test_causal_attention_is_what_items_10_and_14_compute(backend):
    """attention.py's composition is the contract's definition; a backend's own kernel (the CPU
    one, blocked) gives the same y, p and gradients."""
    from deers.backend import attention

    rng = np.random.default_rng(23)
    q, k, v, dy = (rng.standard_normal((2, 3, 130, 8)) for _ in range(4))
    (qb, lq), (kb, lk), (vb, lv), (gb, lg) = (put(backend, x) for x in (q, k, v, dy))
    lp = Layout((2, 3, 130, 130))
    results = []
    for fn, bwd in ((backend.causal_attention, backend.causal_attention_backward),
                    (lambda *a: attention.causal_attention(backend, *a),
                     lambda *a: attention.causal_attention_backward(backend, *a))):
        y, p = fn(qb, lq, kb, lk, vb, lv, 0.3)
        grads = bwd(qb, lq, kb, lk, vb, lv, p, lp, gb, lg, 0.3)
        results.append([get(backend, y, q.shape), get(backend, p, lp.shape)] + [get(backend, g, q.shape) for g in grads])
    for own, composed in zip(*results):
        np.testing.assert_allclose(own, composed, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [deers.f64, deers.bf16], ids=lambda d: d.name)
def test_causal_attention_keeps_the_operands_dtype(backend, dtype):
    if dtype is deers.f64 and backend.kind != "cpu":
        pytest.skip("f64 attention is checked on the CPU backend")
    if not dtype.available:
        pytest.skip("bf16 needs the optional package ml_dtypes (pip install 'deers[bf16]')")
    rng = np.random.default_rng(24)
    q, k, v, dy = (rng.standard_normal((1, 2, 70, 8)) for _ in range(4))
    (qb, lq), (kb, lk), (vb, lv), (gb, lg) = (put(backend, x, dtype) for x in (q, k, v, dy))
    y, p = backend.causal_attention(qb, lq, kb, lk, vb, lv, 0.5)
    grads = backend.causal_attention_backward(qb, lq, kb, lk, vb, lv, p, Layout((1, 2, 70, 70)), gb, lg, 0.5)
    assert {dtype_of(backend, b) for b in (y, p, *grads)} == {dtype.numpy}
    if dtype is deers.f64:
        expected = attention_reference(q, k, v, dy, 0.5)
        np.testing.assert_allclose(get(backend, grads[1], k.shape), expected[3], atol=1e-12, rtol=1e-10)


def test_causal_attention_rejects_mismatched_operands(backend):
    q, lq = put(backend, np.zeros((1, 4, 8)))
    k, lk = put(backend, np.zeros((1, 3, 8)))  # S < T
    with pytest.raises(ValueError, match="causal_attention"):
        backend.causal_attention(q, lq, k, lk, k, lk, 1.0)


@pytest.mark.parametrize("size", [1.0, 40.0, 1e4], ids=["small-scores", "large-scores", "huge-scores"])
def test_causal_attention_stays_finite_and_exact_for_any_score_size(backend, size):
    """Scores far past exp's range (the CPU kernel then subtracts each row's max) give the same
    softmax as the float64 reference: no inf, no NaN, no row of zeros."""
    rng = np.random.default_rng(25)
    q, k, v, dy = (rng.standard_normal((1, 2, 70, 8)) for _ in range(4))
    q *= size
    (qb, lq), (kb, lk), (vb, lv), (gb, lg) = (put(backend, x) for x in (q, k, v, dy))
    y, p = backend.causal_attention(qb, lq, kb, lk, vb, lv, 0.5)
    expected = attention_reference(q, k, v, dy, 0.5)
    np.testing.assert_allclose(get(backend, p, (1, 2, 70, 70)), expected[1], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(get(backend, y, q.shape), expected[0], atol=1e-4, rtol=1e-4)


# ---- every primitive against the oracle ------------------------------------------------------------
def _oracle_cases():
    """(id, call): call(backend) runs one primitive on strided operands made from fixed values and
    returns its results as float64 host arrays, so a backend and the reference backend compare."""
    rng = np.random.default_rng(30)
    x = rng.standard_normal((2, 3, 6, 8))
    g = rng.standard_normal((2, 3, 6, 8))
    w = rng.uniform(0.5, 1.5, 8)
    logits, targets = rng.standard_normal((6, 9)) * 2, np.array([3, -100, 0, 8, 8, 1])
    angle = np.arange(6)[:, None] * np.tile(10000.0 ** (-np.arange(4) * 2 / 8), 2)[None, :]
    q, k, v = (rng.standard_normal((2, 3, 6, 8)) for _ in range(3))
    a, b = rng.standard_normal((2, 5, 7)), rng.standard_normal((2, 7, 4))
    idx = np.array([2, 0, 2, 4])
    idx2 = np.array([[1, 0, 1], [4, 4, 0]])
    lp = Layout((2, 3, 6, 6))

    def rows(backend, bufs_shapes):
        return [get(backend, buf, shape) for buf, shape in bufs_shapes]

    def softmax(log, causal, scale):
        def call(be):
            y = be.softmax(*put(be, x), log, causal=causal, scale=scale)
            dx = be.softmax_backward(y, Layout(x.shape), *put(be, g), log, causal=causal, scale=scale)
            return rows(be, [(y, x.shape), (dx, x.shape)])
        return call

    def cross_entropy(be):
        loss, count, grad = be.cross_entropy(*put(be, logits), *put(be, targets, deers.i64, pad=10 ** 6), -100, 0.1)
        return rows(be, [(loss, (1,)), (grad, logits.shape)]) + [get(be, count, (1,))]

    def rmsnorm(be):
        y, r = be.rmsnorm(*put(be, x), *put(be, w), 1e-5)
        dx, dw = be.rmsnorm_backward(*put(be, g), *put(be, x), *put(be, w), r, Layout((36,)))
        return rows(be, [(y, x.shape), (r, (36,)), (dx, x.shape), (dw, (8,))])

    def rope(be):
        tables = [*put(be, np.cos(angle)), *put(be, np.sin(angle))]
        return rows(be, [(be.rope(*put(be, x), *tables, inverse=inverse), x.shape) for inverse in (False, True)])

    def attention(be):
        ops = [put(be, t) for t in (q, k, v)]
        y, p = be.causal_attention(*ops[0], *ops[1], *ops[2], 0.35)
        grads = be.causal_attention_backward(*ops[0], *ops[1], *ops[2], p, lp, *put(be, g), 0.35)
        return rows(be, [(y, x.shape), (p, lp.shape)] + [(d, x.shape) for d in grads])

    def adamw(be):
        p0, m0, v0 = x.reshape(-1), g.reshape(-1) * 0.1, np.abs(g.reshape(-1))
        state = [be.from_numpy(t.astype(np.float32), F32) for t in (p0, m0, v0)]
        dense = Layout((p0.size,))
        be.adamw_step([(state[0], dense)], [put(be, q.reshape(-1))], [(state[1], dense)], [(state[2], dense)],
                      1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
        return rows(be, [(s, (p0.size,)) for s in state])

    return [
        ("softmax", softmax(False, False, 1.0)), ("log_softmax scaled", softmax(True, False, 0.4)),
        ("causal softmax", softmax(False, True, 0.4)), ("causal log_softmax", softmax(True, True, 1.0)),
        ("cross_entropy", cross_entropy), ("rmsnorm", rmsnorm), ("rope", rope), ("causal_attention", attention),
        ("adamw_step", adamw),
        ("matmul", lambda be: rows(be, [(be.matmul(*put(be, a), *put(be, b)), (2, 5, 4))])),
        ("reduce", lambda be: rows(be, [(be.reduce(name, *put(be, x), (1, 3)), (2, 1, 6, 1))
                                        for name in ("sum", "max", "min")])),
        ("where", lambda be: rows(be, [(be.where(*put(be, x > 0, deers.bool_, pad=False), *put(be, x), *put(be, g)),
                                        x.shape)])),
        ("cast", lambda be: rows(be, [(be.cast(*put(be, x * 10), deers.i64), x.shape)])),
        ("index_select", lambda be: rows(be, [(be.index_select(*put(be, a[0]), 0, *put(be, idx, deers.i64, pad=0)),
                                               (4, 7))])),
        ("index_add", lambda be: rows(be, [(be.index_add((5, 7), F32, 0, *put(be, idx, deers.i64, pad=0),
                                                         *put(be, a[0, :4])), (5, 7))])),
        ("gather", lambda be: rows(be, [(be.gather(*put(be, a[0]), 0, *put(be, idx2, deers.i64, pad=0)), (2, 3))])),
        ("scatter_add", lambda be: rows(be, [(be.scatter_add((5, 7), F32, 0, *put(be, idx2, deers.i64, pad=0),
                                                             *put(be, a[0, :2, :3])), (5, 7))])),
        ("sum_of_squares", lambda be: rows(be, [(be.sum_of_squares([put(be, x), put(be, w)]), (1,))])),
    ]


ORACLE_CASES = dict(_oracle_cases())


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_primitive_matches_the_reference_backend(backend, case):
    if backend.kind == "reference":
        pytest.skip("the oracle itself")
    call = ORACLE_CASES[case]
    for got, want in zip(call(backend), call(ORACLE), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=case)

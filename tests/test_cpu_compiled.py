"""The CPU backend's compiled kernels (backend/cpu_compiled.py, numba) agree with its NumPy code,
which stays the reference: same primitives, same operands, the two backends side by side.

Operands are the shapes and layouts a GPT step makes (q and k as strided views of the qkv
product, rows of 192 and of 1), plus the values where a fast loop goes wrong: NaN, infinities,
signed zeros. Skips without numba (the README's minimal install).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import deers
from deers.backend.cpu import CPUBackend, compiled_kernels
from deers.layout import Layout

numba = pytest.importorskip("numba")

FLOATS = [deers.f32, deers.f64]


@pytest.fixture(scope="module")
def pair():
    """(NumPy backend, compiled backend)."""
    return CPUBackend(compiled=False), CPUBackend(compiled=True)


def on(backend, x: np.ndarray, dtype: deers.DType):
    return backend.from_numpy(x, dtype), Layout(x.shape)


def read(backend, buf, shape) -> np.ndarray:
    return backend.to_numpy(buf, Layout(shape))


def test_the_switch():
    assert compiled_kernels(False) is None
    assert compiled_kernels(True) is not None
    assert CPUBackend(compiled=False).compiled is None and CPUBackend(compiled=True).compiled is not None


def test_without_numba_the_backend_is_numpy_and_asking_by_name_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deers.backend.cpu_compiled", None)  # as if numba were missing
    monkeypatch.delattr(deers.backend, "cpu_compiled", raising=False)  # else `from . import` finds it there
    assert compiled_kernels(None) is None
    with pytest.raises(ImportError, match=r"deers\[fast\]"):
        compiled_kernels(True)


def test_the_environment_variable_turns_them_off(monkeypatch):
    monkeypatch.setenv("DEERS_COMPILED", "0")
    assert CPUBackend().compiled is None
    assert CPUBackend(compiled=True).compiled is not None  # asked for by name: the argument wins


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", ["relu", "sign"])
def test_unary_matches_numpy_bit_for_bit(pair, name, dtype):
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.0, -3.0])
    x = np.concatenate([special, np.random.default_rng(0).standard_normal(1000)])
    (ref, fast), want = pair, None
    for backend in pair:
        buf, lay = on(backend, x, dtype)
        got = read(backend, backend.unary(name, buf, lay), x.shape)
        if want is None:
            want = got
    np.testing.assert_array_equal(got, want)  # NaN where NumPy has NaN
    assert np.array_equal(np.signbit(got[~np.isnan(got)]), np.signbit(want[~np.isnan(want)]))


def test_unary_on_a_strided_operand_takes_the_numpy_path(pair):
    ref, fast = pair
    x = np.random.default_rng(1).standard_normal((6, 8))
    buf, _ = on(fast, x, deers.f32)
    lay = Layout((6, 8)).permute((1, 0))  # the transpose: not contiguous
    np.testing.assert_array_equal(read(fast, fast.unary("relu", buf, lay), (8, 6)), np.maximum(x.T, 0).astype(np.float32))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1024, 192), (2, 3, 1), (5, 0), (0, 7)])
def test_rmsnorm_forward_and_backward_match_numpy(pair, dtype, shape):
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal(shape), rng.standard_normal(shape)
    w = rng.uniform(0.5, 1.5, shape[-1])
    rows = int(np.prod(shape[:-1]))
    results = []
    for backend in pair:
        (xb, lx), (gb, lg), (wb, lw) = (on(backend, v, dtype) for v in (x, g, w))
        y, r = backend.rmsnorm(xb, lx, wb, lw, 1e-5)
        dx, dw = backend.rmsnorm_backward(gb, lg, xb, lx, wb, lw, r, Layout((rows,)))
        results.append([read(backend, y, shape), read(backend, r, (rows,)), read(backend, dx, shape),
                        read(backend, dw, (shape[-1],))])
    tol = 1e-5 if dtype is deers.f32 else 1e-12
    for want, got, what in zip(*results, ("y", "rstd", "dx", "dw")):
        assert got.dtype == want.dtype, what
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1, rows ** 0.5), err_msg=what)


def test_rmsnorm_propagates_nan_and_inf(pair):
    x = np.ones((3, 4))
    x[0, 1], x[1, 2] = np.nan, np.inf
    for backend in pair:
        (xb, lx), (wb, lw) = on(backend, x, deers.f32), on(backend, np.ones(4), deers.f32)
        y = read(backend, backend.rmsnorm(xb, lx, wb, lw, 1e-5)[0], x.shape)
        assert np.isnan(y[0]).all() and np.isfinite(y[2]).all()
        assert np.isnan(y[1, 2]) and (y[1, [0, 1, 3]] == 0).all()  # inf / inf, and x / inf


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_rope_matches_numpy(pair, dtype, inverse, strided):
    rng = np.random.default_rng(3)
    B, T, nh, hd = 2, 7, 3, 8
    angle = np.arange(T)[:, None] * np.tile(10000.0 ** (-np.arange(hd // 2) * 2 / hd), 2)[None, :]
    qkv = rng.standard_normal((B, T, 3, nh, hd))
    results = []
    for backend in pair:
        (cb, lc), (sb, ls) = on(backend, np.cos(angle), dtype), on(backend, np.sin(angle), dtype)
        if strided:  # k as the model makes it: qkv (B, T, 3, nh, hd) -> [:, :, 1] -> (B, nh, T, hd)
            xb, lx = on(backend, qkv, dtype)
            lx = lx.select(2, 1).permute((0, 2, 1, 3))
        else:
            xb, lx = on(backend, qkv[:, :, 1].transpose(0, 2, 1, 3).copy(), dtype)
        results.append(read(backend, backend.rope(xb, lx, cb, lc, sb, ls, inverse=inverse), (B, nh, T, hd)))
    tol = 1e-6 if dtype is deers.f32 else 1e-14
    np.testing.assert_allclose(results[1], results[0], rtol=tol, atol=tol)


def test_half_precision_stays_on_numpy(pair):
    pytest.importorskip("ml_dtypes")
    ref, fast = pair
    x = np.random.default_rng(4).standard_normal((4, 16))
    want = read(ref, ref.rmsnorm(*on(ref, x, deers.bf16), *on(ref, np.ones(16), deers.bf16), 1e-5)[0], x.shape)
    got = read(fast, fast.rmsnorm(*on(fast, x, deers.bf16), *on(fast, np.ones(16), deers.bf16), 1e-5)[0], x.shape)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_numpy_over_steps(pair, dtype, weight_decay):
    rng = np.random.default_rng(5)
    shapes = [(300, 70), (0,), (3,), (200_000,)]  # the last spans several of the kernel's blocks
    start = [[rng.standard_normal(s) for s in shapes], [rng.standard_normal(s) for s in shapes],
             [np.abs(rng.standard_normal(s)) for s in shapes]]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    results = []
    for backend in pair:
        state = [[on(backend, a, dtype) for a in column] for column in start]
        for step, gs in enumerate(grads, 1):
            backend.adamw_step(state[0], [on(backend, g, dtype) for g in gs], state[1], state[2],
                               1e-2, 0.9, 0.95, 1e-8, weight_decay, step)
        results.append([[read(backend, b, lay.shape) for b, lay in column] for column in state])
    tol = 1e-5 if dtype is deers.f32 else 1e-12
    for want, got in zip(results[0], results[1]):
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)

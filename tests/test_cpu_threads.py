"""The CPU backend's threads (deers.backend.cpu_threads): GEMMs split over its own pool, and
OpenBLAS set to one thread so that nothing spins between ops."""
import os
import time

import numpy as np
import pytest

from deers.backend import cpu_threads


def _operand(rng, shape, form):
    """A float64 operand of `shape` stored as `form`: "N" row-major, "T" a transposed view of a
    row-major array, "S" every other column of a wider one (strided)."""
    if form == "T":
        return np.ascontiguousarray(rng.standard_normal(shape).swapaxes(-1, -2)).swapaxes(-1, -2)
    if form == "S":
        return rng.standard_normal(shape[:-1] + (2 * shape[-1],))[..., ::2]
    return rng.standard_normal(shape)


# each one large enough to be split (>= SPLIT_FLOPS, set below), and each split rule taken:
# the leading batch dim, a batch dim of 1 that broadcasts, rows of x (m >= n), columns of y (m < n)
SPLIT_FLOPS = 1 << 23  # the tests lower MIN_SPLIT_FLOPS to this, to keep the arrays small
SPLIT_CASES = [
    ((4, 3, 96, 40), (4, 3, 40, 96)),  # leading batch dim
    ((4, 3, 96, 40), (1, 3, 40, 96)),  # y broadcast along the split dim
    ((3, 128, 96), (96, 128)),  # x's batch dim against a 2-D y
    ((1, 2, 300, 64), (2, 64, 160)),  # batch dim 1: rows
    ((512, 64), (64, 160)),  # rows (m >= n)
    ((40, 64), (64, 1700)),  # columns (m < n): out's column shares
    ((2, 40, 64), (2, 64, 1700)),  # 2 threads: the batch dim; 3 threads (more than the batch): columns
]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("shapes", SPLIT_CASES, ids=lambda s: f"{s[0]}@{s[1]}")
@pytest.mark.parametrize("forms", ["NN", "TN", "NT", "SS"])
def test_split_matmul_matches_numpy(shapes, forms, threads, monkeypatch):
    monkeypatch.setattr(cpu_threads, "MIN_SPLIT_FLOPS", SPLIT_FLOPS)
    monkeypatch.setattr(cpu_threads, "MIN_SPLIT_ROWS", 0)  # the few-rows rule has its own test below
    rng = np.random.default_rng(0)
    x, y = _operand(rng, shapes[0], forms[0]), _operand(rng, shapes[1], forms[1])
    expected = np.matmul(x, y)
    m, k, n = x.shape[-2], x.shape[-1], y.shape[-1]
    assert 2 * np.prod(expected.shape[:-2], dtype=int) * m * k * n >= cpu_threads.MIN_SPLIT_FLOPS  # really split
    out = np.full(expected.shape, np.nan)  # every element must be written
    blas_threads = []  # what the GEMM set OpenBLAS's thread count to
    result = cpu_threads.matmul(cpu_threads.RowPool(threads), x, y, out, blas_threads.append)
    assert result is out and blas_threads == [1]  # split by the pool, each share on one BLAS thread
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_small_matmul_goes_to_openblas_own_threads():
    x, y = np.ones((8, 4)), np.ones((4, 8))
    out = np.empty((8, 8))
    blas_threads = []
    cpu_threads.matmul(cpu_threads.RowPool(2), x, y, out, blas_threads.append)
    np.testing.assert_array_equal(out, 4.0)
    assert blas_threads == [2]  # as many as the pool has


def test_a_forward_gemm_of_few_rows_goes_to_openblas_and_a_weight_gradient_does_not():
    """Generation's GEMMs (a prompt's or one token's rows of row-major activations) all stay with
    OpenBLAS's threads, however large the weight; a weight gradient G^T X of as few rows (x a
    transposed view) is split by the pool as before."""
    rng = np.random.default_rng(0)
    rows, k, n = cpu_threads.MIN_SPLIT_ROWS - 1, 1024, 4096  # 2 GFLOP: far over MIN_SPLIT_FLOPS
    assert 2 * rows * k * n >= cpu_threads.MIN_SPLIT_FLOPS
    for x, expected_threads in ((rng.standard_normal((rows, k)), [2]),  # activations x W^T
                                (np.ascontiguousarray(rng.standard_normal((k, rows))).T, [1])):  # G^T X
        y = _operand(rng, (k, n), "T")  # a weight's transpose, as in x @ W^T
        out = np.full((rows, n), np.nan)
        blas_threads = []
        cpu_threads.matmul(cpu_threads.RowPool(2), x, y, out, blas_threads.append)
        assert blas_threads == expected_threads
        np.testing.assert_allclose(out, x @ y, rtol=1e-12, atol=1e-12)


def test_without_a_setter_every_matmul_is_the_blas_own():
    x, y = np.ones((512, 512)), np.ones((512, 512))
    out = np.empty((512, 512))
    cpu_threads.matmul(cpu_threads.RowPool(2), x, y, out, None)
    np.testing.assert_array_equal(out, 512.0)


def test_owning_the_blas_threads_can_be_declined(monkeypatch):
    monkeypatch.setenv(cpu_threads.OWN_BLAS_ENV, "0")
    assert cpu_threads.openblas_setter() is None


@pytest.mark.skipif(cpu_threads.openblas_thread_api() is None, reason="NumPy's BLAS is not OpenBLAS")
def test_the_cpu_backend_sets_openblas_threads_per_gemm():
    from deers.backend import backend_for
    from deers.layout import Layout

    backend = backend_for("cpu")
    assert backend.set_blas_threads is not None
    get, _ = cpu_threads.openblas_thread_api()
    big = np.ones(512 * 512, np.float32)
    backend.matmul(big, Layout((512, 512)), big, Layout((512, 512)))  # 268 MFLOP: split by the pool
    assert get() == 1
    small = np.ones(64, np.float32)
    backend.matmul(small, Layout((8, 8)), small, Layout((8, 8)))
    assert get() == backend.pool.threads


def test_adamw_over_many_arrays_is_the_same_on_two_threads_as_on_one():
    """cpu_kernels.adamw_step deals all arrays' blocks over the threads in one run; each element's
    update is independent, so the result is bit for bit the one-thread result, and the formula's."""
    from deers.backend import cpu_kernels

    sizes = [5, 3 * cpu_kernels.BLOCK_BYTES // 4 + 17, 1000, 2 * cpu_kernels.BLOCK_BYTES // 4]  # several blocks

    def fresh():
        r = np.random.default_rng(4)
        return [tuple(r.standard_normal(n).astype(np.float32) if i != 3 else r.random(n).astype(np.float32)
                      for i in range(4)) for n in sizes]
    one, two = fresh(), fresh()
    expected = fresh()
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=3)
    cpu_kernels.adamw_step(cpu_threads.RowPool(1), one, **hyper)
    cpu_kernels.adamw_step(cpu_threads.RowPool(2), two, **hyper)
    for (p1, _, m1, v1), (p2, _, m2, v2), (p, g, m, v) in zip(one, two, expected):
        np.testing.assert_array_equal(p2, p1)
        np.testing.assert_array_equal(m2, m1)
        np.testing.assert_array_equal(v2, v1)
        m_ref = 0.9 * m.astype(np.float64) + 0.1 * g
        v_ref = 0.95 * v.astype(np.float64) + 0.05 * g.astype(np.float64) ** 2
        step_size = 1e-2 / (1 - 0.9 ** 3)
        p_ref = p * (1 - 1e-3) - step_size * m_ref / (np.sqrt(v_ref) / np.sqrt(1 - 0.95 ** 3) + 1e-8)
        np.testing.assert_allclose(p1, p_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_threads_of_its_own():
    """A child forked after the pool started has none of the parent's threads; its next split
    must not wait for them forever."""
    pool = cpu_threads.RowPool(2)
    seen = []
    pool.run(2, lambda start, stop: seen.append(start))  # the parent's executor exists now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the pool works here
        done = []
        pool.run(2, lambda start, stop: done.append(start))
        os._exit(0 if sorted(done) == [0, 1] else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child's pool hung")


@pytest.mark.parametrize("columns", [64, 4096, 4097, 50257])
def test_row_sums_match_a_float64_sum_on_short_and_long_rows(columns):
    from deers.backend.cpu_kernels import EINSUM_ROW_MAX, row_sums

    rng = np.random.default_rng(columns)
    a = np.exp(2 * rng.standard_normal((8, columns))).astype(np.float32)  # softmax-like positive rows
    got = row_sums(a)
    exact = a.astype(np.float64).sum(axis=-1, keepdims=True)
    assert got.shape == (8, 1) and got.dtype == np.float32
    # einsum's in-lane sums are good to ~7 ulps up to EINSUM_ROW_MAX; beyond it the pairwise sum is used
    tolerance = 1e-6 if columns <= EINSUM_ROW_MAX else 3e-7
    np.testing.assert_allclose(got, exact, rtol=tolerance)

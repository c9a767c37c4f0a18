"""The "mps" backend (MLX) against the CPU oracle: every op forward and backward, on contiguous,
permuted, narrowed and broadcast (stride-0) inputs, in f32, f16, bf16 and f64; plus device moves,
IndexError on bad indices, seeding, in-place writes (copy, set_data, adamw_step) and the fused
kernels (losses, nn and the GPT are in test_backend_mlx_models.py). On Linux this runs MLX's CPU
build; on a Mac the same tests run on the Apple GPU.

The reference is the CPU backend in f32 (f64 for f64) on the same values rounded to the tested
dtype, so low-precision tolerances measure only the mps computation's own rounding.
"""
import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

import deers  # noqa: E402
from deers.backend import backend_for  # noqa: E402
from deers.fused.attention import apply_rope  # noqa: E402
from deers.layout import Layout  # noqa: E402
import device_oracle  # noqa: E402
from device_oracle import F, LAYOUTS, LOW_PRECISION, OPS  # noqa: E402

MPS = deers.Device.MPS
# (atol, rtol) of mps vs the CPU oracle, per dtype of the mps computation. f64 is loose on purpose:
# MLX stores f64 but computes exp, sin, cos and sigmoid in it only to about f32 accuracy.
TOL = {"f32": (1e-5, 1e-5), "f64": (2e-6, 2e-6), "f16": (2e-3, 2e-3), "bf16": (1.6e-2, 1.6e-2)}


def _inputs(specs, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(s[2], s[3], s[1]) if isinstance(s, tuple) and s[0] == "float" else np.asarray(s)
            for s in specs]


def _build(array: np.ndarray, layout: str, dtype: deers.DType) -> tuple[deers.Tensor, deers.Tensor]:
    return device_oracle._build(array, layout, dtype, MPS)


def check_against_cpu(name: str, layout: str, dtype: deers.DType) -> None:
    device_oracle.check_against_cpu(name, layout, dtype, MPS, TOL)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(OPS))
def test_op_f32_matches_cpu(name, layout):
    check_against_cpu(name, layout, deers.f32)


@pytest.mark.parametrize("dtype", LOW_PRECISION + [deers.f64], ids=lambda d: d.name)
@pytest.mark.parametrize("name", list(OPS))
def test_op_other_dtypes_match_cpu(name, dtype):
    check_against_cpu(name, "permuted", dtype)


# ---- comparisons, argmax, casts (no gradient) ------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_comparisons_and_argmax(layout):
    (a_cpu, a_mps), (b_cpu, b_mps) = [_build(a, layout, deers.f32) for a in _inputs([F(3, 4), F(4)])]
    for fn in (lambda a, b: a < b, lambda a, b: a >= b, lambda a, b: a == a, lambda a, b: a != b,
               lambda a, b: a > 0.5, lambda a, b: a.le(0.0), lambda a, b: a.argmax(1), lambda a, b: a.argmax()):
        mps, cpu = fn(a_mps, b_mps), fn(a_cpu, b_cpu)
        assert mps.dtype is cpu.dtype and mps.device == MPS
        np.testing.assert_array_equal(mps.numpy(), cpu.numpy())


def test_casts_between_every_dtype():
    values = np.array([[-2.5, -1.0, 0.0], [0.5, 1.75, 3.0]])
    dtypes = [deers.f32, deers.f16, deers.f64, deers.i64, deers.bool_] + LOW_PRECISION[1:]
    for source in dtypes:
        x_cpu = deers.tensor(values, dtype=source)
        x_mps = x_cpu.to_device(MPS)
        for target in dtypes:
            got, expected = x_mps.T.to_dtype(target), x_cpu.T.to_dtype(target)  # a strided source
            assert got.dtype is target and got.device == MPS
            np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=f"{source} -> {target}")


def test_integer_and_bool_arithmetic_keep_their_dtype():
    x = deers.tensor([[3, -2], [0, 7]], device=MPS)
    assert (x + 2).dtype is deers.i64 and (x * x).dtype is deers.i64
    np.testing.assert_array_equal((x * x + 2).numpy(), [[11, 6], [2, 51]])
    assert x.sum().item() == 8 and x.sum().dtype is deers.i64
    mask = deers.tensor([True, False, True], device=MPS)
    assert mask.data.reduce("sum", (0,), False).numpy() == 2


# ---- device moves -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [deers.f32, deers.f16, deers.f64, deers.i64, deers.bool_] + LOW_PRECISION[1:],
                         ids=lambda d: d.name)
def test_move_round_trip_is_exact(dtype):
    values = (np.arange(12).reshape(3, 4) - 5.5).astype(dtype.numpy)
    x = deers.tensor(values, dtype=dtype)
    on_mps = x.to_device("mps")
    assert on_mps.device == MPS and on_mps.dtype is dtype
    back = on_mps.permute(1, 0).to_device("cpu")
    assert back.device == deers.Device.CPU
    np.testing.assert_array_equal(back.numpy(), values.T)


def test_gradient_flows_back_across_a_device_move():
    x = deers.Var(deers.tensor([[1.0, -2.0], [3.0, 0.5]]))
    grads = (x.to_device("mps").square() * 3.0).sum().backward()
    assert grads[x].device == deers.Device.CPU
    np.testing.assert_allclose(grads[x].numpy(), 6.0 * x.numpy())


def test_mixing_devices_raises():
    with pytest.raises(deers.DeviceError, match="different devices"):
        deers.ones(2) + deers.ones(2, device="mps")


# ---- out-of-range indices raise IndexError ------------------------------------------------------------
def test_out_of_range_indices_raise_index_error():
    x = deers.randn(4, 3, device=MPS)
    for bad in ([0, 4], [-5]):
        index = deers.tensor(bad, device=MPS)
        with pytest.raises(IndexError, match="index_select"):
            x.index_select(0, index)
        with pytest.raises(IndexError, match="gather"):
            x.gather(0, index.reshape(-1, 1))
    backend = backend_for(MPS)
    idx = backend.from_numpy(np.array([0, 7]), deers.i64)
    src = backend.from_numpy(np.ones((2, 3)), deers.f32)
    with pytest.raises(IndexError, match="index_add"):
        backend.index_add((4, 3), deers.f32, 0, idx, Layout((2,)), src, Layout((2, 3)))
    with pytest.raises(IndexError, match="scatter_add"):
        backend.scatter_add((4, 3), deers.f32, 1, idx, Layout((2, 1)), src, Layout((2, 1)))


@pytest.mark.parametrize("op", ["index_select", "gather", "embedding"])
def test_negative_indices_raise_like_the_cpu_backend(op):
    """Checked, never wrapped (issue 13): a negative id is an IndexError on both backends."""
    x = deers.tensor(np.arange(12.0).reshape(4, 3))
    index = deers.tensor([[-1, 0, 1]]) if op == "gather" else deers.tensor([-1, 0])
    run = {"index_select": lambda x, i: x.index_select(0, i), "gather": lambda x, i: x.gather(0, i),
           "embedding": lambda x, i: deers.embedding(x, i)}[op]
    for device in ("cpu", MPS):
        with pytest.raises(IndexError, match="out of range"):
            run(x.to_device(device), index.to_device(device))


def test_python_negative_indices_still_count_from_the_end():
    x = deers.tensor(np.arange(12.0).reshape(4, 3))
    index = deers.tensor([-1, 0, -4])
    np.testing.assert_array_equal(x.to_device(MPS)[index.to_device(MPS)].numpy(), x.numpy()[[-1, 0, -4]])
    np.testing.assert_array_equal(x.to_device(MPS)[-1].numpy(), x.numpy()[-1])


# ---- random numbers ------------------------------------------------------------------------------------
def test_manual_seed_makes_every_draw_reproducible():
    def draw():
        return [deers.randn(3, 4, device=MPS).numpy(), deers.rand(5, device=MPS, dtype=deers.f16).numpy(),
                deers.randint(0, 10, (6,), device=MPS).numpy()]

    deers.manual_seed(123)
    first = draw()
    deers.manual_seed(123)
    second = draw()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], deers.randn(3, 4, device=MPS).numpy())  # the state moved on
    assert first[2].dtype == np.int64 and first[2].min() >= 0 and first[2].max() < 10
    assert 0.0 <= first[1].min() and first[1].max() <= 1.0


def test_rng_state_round_trip_and_sample_statistics():
    deers.manual_seed(7)
    deers.rand(1, device=MPS)  # the mps generator exists once the device has been used
    state = deers.get_rng_state()
    assert "mps" in state
    a = deers.randn(20000, device=MPS).numpy()
    deers.set_rng_state(state)
    np.testing.assert_array_equal(deers.randn(20000, device=MPS).numpy(), a)
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1.0) < 0.05
    u = deers.rand(20000, device=MPS).numpy()
    assert abs(u.mean() - 0.5) < 0.02 and u.min() >= 0.0 and u.max() < 1.0


# ---- in-place writes: copy, set_data, adamw_step --------------------------------------------------------
def test_copy_writes_into_a_strided_view_in_place():
    backend = backend_for(MPS)
    dst = backend.full(12, 0.0, deers.f32)
    held = dst  # another holder of the same buffer object, as every NDArray view is
    src = backend.from_numpy(np.array([1.0, 2.0, 3.0]), deers.f32)
    target = Layout((3, 4)).permute((1, 0)).narrow(0, 1, 2)  # (2, 3) strided view, offset 1
    backend.copy(src, Layout((3,)).broadcast_to((2, 3)), dst, target)  # a broadcast source
    expected = np.zeros((3, 4))
    expected[:, 1:3] = np.array([1.0, 2.0, 3.0])[:, None]
    np.testing.assert_array_equal(np.array(held).reshape(3, 4), expected)


def test_elementwise_primitives_write_into_out_in_place():
    backend = backend_for(MPS)
    x = backend.from_numpy(np.array([[1.0, -2.0], [3.0, -4.0]]), deers.f32)
    transposed = Layout((2, 2)).permute((1, 0))
    out = backend.full(4, 0.0, deers.f32)
    held = out
    assert backend.unary("relu", x, transposed, out=out) is out
    np.testing.assert_array_equal(np.array(held), [1.0, 3.0, 0.0, 0.0])
    assert backend.binary("mul", x, transposed, x, Layout((2, 2)), out=out) is out
    np.testing.assert_array_equal(np.array(held), [1.0, -6.0, -6.0, 16.0])
    assert backend.scalar("sub", x, Layout((2, 2)), 1.0, reverse=True, out=out) is out
    np.testing.assert_array_equal(np.array(held), [0.0, 3.0, -2.0, 5.0])


def test_var_set_data_is_seen_by_views_and_keeps_the_buffer():
    w = deers.Var(deers.zeros(2, 3, device=MPS))
    view = w.T  # shares the buffer
    buffer = w.data.buffer
    w.set_data(deers.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))  # from the CPU, moved by set_data
    assert w.data.buffer is buffer
    np.testing.assert_array_equal(view.numpy(), [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]])


def test_adamw_step_updates_buffers_in_place_like_the_cpu_backend():
    rng = np.random.default_rng(0)
    param, grad, m, v = (rng.standard_normal(50).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    cpu = [a.copy() for a in (param, grad, m, v)]
    backend = backend_for(MPS)
    mps = [backend.from_numpy(a, deers.f32) for a in (param, grad, m, v)]
    before = mps[0]
    earlier_result = mps[0] * 1.0  # computed (lazily) before the update: must keep the old values
    dense = Layout((50,))
    for step in (1, 2, 3):
        backend_for("cpu").adamw_step(*([(a, dense)] for a in cpu), 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
        backend.adamw_step(*([(a, dense)] for a in mps), 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
    assert mps[0] is before
    for got, expected in zip(mps, cpu):
        np.testing.assert_allclose(np.array(got), expected, atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(np.array(earlier_result), param)


@pytest.mark.skipif(not mx.metal.is_available(), reason="the Metal kernel runs only on the Apple GPU")
def test_adamw_metal_kernel_matches_its_reference():
    from deers.backend import mlx_kernels

    rng = np.random.default_rng(0)
    param, grad, m, v = (mx.array(rng.standard_normal(1000).astype(np.float32)) for _ in range(4))
    v = mx.abs(v)
    got = mlx_kernels.adamw_metal(param, grad, m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
    expected = mlx_kernels.adamw_reference(param, grad, m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, rtol=1e-5)


# ---- fused cross-entropy primitive, RoPE --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [deers.f32] + LOW_PRECISION, ids=lambda d: d.name)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_primitive_matches_cpu(dtype, smoothing):
    n, c = 6, 7
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c)).astype(dtype.numpy)
    targets = np.array([0, 6, -100, 3, 3, 1], np.int64)
    rows, cols = Layout((n, c)), Layout((n,))
    cpu = backend_for("cpu").cross_entropy(logits.astype(np.float32).reshape(-1), rows, targets, cols, -100,
                                           smoothing)
    backend = backend_for(MPS)
    got = backend.cross_entropy(backend.from_numpy(logits, dtype), rows, backend.from_numpy(targets, deers.i64),
                                cols, -100, smoothing)
    atol, rtol = TOL[dtype.name]
    one = Layout((1,))
    assert backend.to_numpy(got[1], one)[0] == cpu[1][0] == 5  # 1-element device buffers
    assert backend.to_numpy(got[0], one).dtype == np.float32  # computed in f32 whatever the dtype
    np.testing.assert_allclose(backend.to_numpy(got[0], one), cpu[0], rtol=1e-5)
    assert got[2].dtype == backend.from_numpy(logits[:1], dtype).dtype
    np.testing.assert_allclose(backend.to_numpy(got[2], Layout((n * c,))).astype(np.float64), cpu[2],
                               atol=atol, rtol=rtol)
    with pytest.raises(IndexError, match="cross_entropy"):
        backend.cross_entropy(backend.from_numpy(logits, dtype), rows, backend.from_numpy(targets + 7, deers.i64),
                              cols, -93, smoothing)


def test_rope_matches_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)  # (B, nh, T, hd)
    angle = np.arange(4)[:, None] * np.tile(10000.0 ** (-np.arange(3) / 3), 2)[None, :]
    tables = [np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)]
    outs, grads = [], []
    for device in ("cpu", "mps"):
        xt = deers.tensor(x, device=device).permute(0, 2, 1, 3).attach()  # a non-contiguous input
        cos, sin = (deers.tensor(t, device=device) for t in tables)
        y = apply_rope(xt.permute(0, 2, 1, 3), cos, sin)
        outs.append(y.numpy())
        grads.append(((y * y).sum()).backward()[xt].numpy())
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grads[1], grads[0], atol=1e-5, rtol=1e-5)


# ---- f64 on the Apple GPU is refused with a clear error ----------------------------------------------------
def test_f64_is_refused_when_mlx_runs_on_the_gpu(monkeypatch):
    from deers.backend import mlx as mlx_backend

    monkeypatch.setattr(mlx_backend, "on_gpu", lambda: True)
    backend = backend_for(MPS)
    with pytest.raises(deers.DTypeError, match="from_numpy: f64 .* mps"):
        backend.from_numpy(np.zeros(3), deers.f64)
    with pytest.raises(deers.DTypeError, match="cast: f64"):
        backend.cast(backend.full(3, 1.0, deers.f32), Layout((3,)), deers.f64)
    with pytest.raises(deers.DTypeError, match="randn: f64"):
        backend.randn(3, deers.f64)



def test_gradients_read_through_strided_views_of_lazy_results():
    """A gradient MLX keeps as a broadcast (the backward of a sum) read through a strided layout:
    as_strided needs a row-contiguous buffer, which _view makes first."""
    pytest.importorskip("mlx.core")
    x = deers.randn(3, 4, device="mps").attach()
    np.testing.assert_array_equal((-x.sum(-1)).sum().backward()[x].numpy(), -np.ones((3, 4), np.float32))
    y = deers.randn(3, 4, device="mps").attach()
    np.testing.assert_array_equal((-y.T).sum().backward()[y].numpy(), -np.ones((3, 4), np.float32))
    probs = np.random.default_rng(0).dirichlet(np.ones(7), 5).astype(np.float32)
    grads = []
    for device in ("cpu", "mps"):
        logits = deers.tensor(np.linspace(-2, 2, 35, dtype=np.float32).reshape(5, 7), device=device).attach()
        grads.append(deers.loss.cross_entropy(logits, deers.tensor(probs, device=device)).backward()[logits].numpy())
    np.testing.assert_allclose(grads[1], grads[0], atol=1e-6)

"""The engine and the rules around it: accumulation, Grads, no_grad/detach/attach/Var, freed
graphs, memory release, dtype/device/shape/index errors (their message text), and dtypes."""
import gc
import weakref

import numpy as np
import pytest

import deers
from deers import DeviceError, DTypeError, ShapeError, Var
from deers.array import NDArray
from deers.backend import backend_for
from deers.ops.unary import UnaryOp
from helpers import rand


# ---- accumulation ----------------------------------------------------------------------------------
def test_a_tensor_used_twice_gets_the_sum_of_its_gradients():
    x = Var(deers.tensor([1.0, 2.0, 3.0]))
    grads = (x * x + x).sum().backward()  # d(x^2 + x) = 2x + 1
    np.testing.assert_allclose(grads[x].numpy(), [3.0, 5.0, 7.0])


def test_a_diamond_graph_sums_both_paths():
    x = Var(deers.tensor([0.5, -1.0]))
    h = x.exp()
    grads = (h * 2.0 + h.sin()).sum().backward()  # d = exp(x) (2 + cos(exp(x)))
    e = np.exp([0.5, -1.0])
    np.testing.assert_allclose(grads[x].numpy(), e * (2 + np.cos(e)), rtol=1e-6)


def test_backward_with_grads_accumulates_over_several_calls():
    w = Var(deers.tensor([1.0, 2.0]))
    grads = (w * 3.0).sum().backward()
    same = (w * w).sum().backward(grads=grads)  # + 2w
    assert same is grads
    np.testing.assert_allclose(grads[w].numpy(), [5.0, 7.0])


def test_grads_add_merges_stores():
    w, v = Var(deers.tensor([1.0, 2.0])), Var(deers.tensor([4.0]))
    total = (w * 2.0).sum().backward()
    other = ((w * w).sum() + v.sum()).backward()
    assert total.add(other) is total
    np.testing.assert_allclose(total[w].numpy(), [4.0, 6.0])
    np.testing.assert_allclose(total[v].numpy(), [1.0])
    np.testing.assert_allclose(other[w].numpy(), [2.0, 4.0])  # the other store is unchanged


def test_grads_mapping_interface():
    w, unused = Var(deers.ones(2, 3)), Var(deers.ones(1))
    grads = (w * 2.0).sum().backward()
    assert len(grads) == 1 and w in grads and unused not in grads
    assert grads.get(unused) is None and grads.get(unused, 0) == 0
    with pytest.raises(KeyError, match="no gradient"):
        grads[unused]
    pairs = list(grads)
    assert pairs[0][0] is w and pairs[0][1].shape == (2, 3)
    assert isinstance(grads[w], deers.Tensor) and grads[w].dtype is deers.f32


def test_leaf_gradients_are_dense_and_never_share_a_buffer():
    a, b = Var(deers.ones(2, 3)), Var(deers.ones(2, 3))
    grads = (a + b).sum().backward()  # add hands the same gradient to both inputs
    assert grads[a].data.buffer is not grads[b].data.buffer
    for t in (a, b):
        assert grads[t].data.is_dense()  # sum's backward is a stride-0 view: copied dense
    c = Var(deers.ones(4, 3))
    grads = c[1:3].sum().backward()
    assert grads[c].data.is_dense()
    np.testing.assert_allclose(grads[c].numpy(), [[0] * 3, [1] * 3, [1] * 3, [0] * 3])


def test_backward_with_an_explicit_grad_does_not_alias_it():
    x = Var(deers.zeros(3))
    seed = deers.tensor([1.0, 2.0, 3.0])
    grads = (x + 0.0).backward(seed)
    np.testing.assert_allclose(grads[x].numpy(), [1.0, 2.0, 3.0])
    assert grads[x].data.buffer is not seed.data.buffer


def test_inputs_that_need_no_gradient_get_none_and_skip_work():
    x, w = deers.randn(3, 4), Var(deers.randn(4, 2))
    y = x @ w
    assert y._op.needs_input_grad == (False, True)
    grads = y.sum().backward()
    assert x not in grads and grads[w].shape == (4, 2)


def test_a_deep_graph_does_not_hit_the_recursion_limit():
    x = Var(deers.tensor([1.0]))
    y = x
    for _ in range(5000):
        y = y + 1.0
    assert y.backward()[x].item() == 1.0


# ---- grad mode, detach, attach, Var -------------------------------------------------------------------
def test_no_grad_records_nothing_and_restores_the_mode():
    w = Var(deers.ones(2))
    with deers.no_grad():
        assert not deers.is_grad_enabled()
        y = w * 2.0
        with deers.no_grad():
            pass
        assert not deers.is_grad_enabled()
    assert deers.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError):
        with deers.no_grad():
            raise RuntimeError("boom")
    assert deers.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_grad_mode_objects_switch_as_in_pytorch():
    """no_grad()/enable_grad() switch on entering (making one changes nothing) and work as
    decorators; set_grad_enabled switches at once, and as a decorator only inside the function."""
    made = deers.no_grad()
    assert deers.is_grad_enabled()  # not yet entered
    with made:
        assert not deers.is_grad_enabled()
    assert deers.is_grad_enabled()

    @deers.no_grad()
    def inference(w):
        return w * 2.0, deers.is_grad_enabled()

    @deers.set_grad_enabled(False)
    def also_inference(w):
        return w * 2.0

    assert deers.is_grad_enabled()  # decorating switched nothing
    w = Var(deers.ones(2))
    y, enabled = inference(w)
    assert not y.requires_grad and not enabled and deers.is_grad_enabled()
    assert not also_inference(w).requires_grad and deers.is_grad_enabled()
    with deers.no_grad():
        assert (deers.enable_grad()(lambda: w * 2.0))().requires_grad
        assert not deers.is_grad_enabled()


def test_detach_shares_the_buffer_and_stops_the_gradient():
    w = Var(deers.tensor([1.0, 2.0]))
    d = w.detach()
    assert not d.requires_grad and d.data.buffer is w.data.buffer
    grads = (w * d).sum().backward()  # only the first factor is differentiated
    np.testing.assert_allclose(grads[w].numpy(), [1.0, 2.0])


def test_attach_makes_a_leaf_that_receives_a_gradient():
    x = deers.tensor([1.0, -2.0])
    assert not x.requires_grad
    t = x.attach()
    assert t.requires_grad and t.is_leaf and t.data.buffer is x.data.buffer
    grads = t.square().sum().backward()
    np.testing.assert_allclose(grads[t].numpy(), [2.0, -4.0])
    assert x not in grads


def test_var_is_a_trainable_leaf_usable_as_a_tensor():
    w = Var(deers.randn(3, 2))
    assert isinstance(w, deers.Tensor) and w.requires_grad and w.is_leaf
    frozen = Var(deers.randn(2), requires_grad=False)
    assert not frozen.requires_grad
    buffer = w.data.buffer
    w.set_data(deers.zeros(3, 2))
    assert w.data.buffer is buffer and (w.numpy() == 0).all()
    with pytest.raises(ShapeError, match=r"set_data.*\(2,\).*\(3, 2\)"):
        w.set_data(deers.zeros(2))
    with pytest.raises(DTypeError, match="floating-point"):
        Var(deers.tensor([1, 2]))


# ---- freed graphs and memory ----------------------------------------------------------------------------
def test_non_scalar_backward_needs_an_explicit_grad():
    x = Var(deers.ones(2, 3))
    with pytest.raises(ShapeError, match=r"non-scalar.*\(2, 3\)"):
        (x * 2.0).backward()
    with pytest.raises(ShapeError, match=r"grad shape \(3,\).*\(2, 3\)"):
        (x * 2.0).backward(deers.ones(3))


def test_second_backward_through_a_freed_graph_raises_a_clear_error():
    x = Var(deers.tensor([1.0, 2.0]))
    loss = (x.exp() * 2.0).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="a second time.*retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_a_second_backward():
    x = Var(deers.tensor([1.0, 2.0]))
    h = x.exp()
    loss = (h * h).sum()
    first = loss.backward(retain_graph=True)
    second = loss.backward()
    np.testing.assert_allclose(first[x].numpy(), second[x].numpy())
    np.testing.assert_allclose(second[x].numpy(), 2 * np.exp([2.0, 4.0]), rtol=1e-6)


def test_the_graph_is_released_after_backward_and_when_the_loss_is_dropped():
    x = Var(deers.randn(8, 8))
    hidden = (x @ x).relu()
    probe = weakref.ref(hidden)
    loss = hidden.sum()
    del hidden
    assert probe() is not None  # the loss still holds it
    loss.backward()
    assert probe() is None  # backward freed the saved graph, without waiting for the loss to go
    hidden = x.tanh()
    probe = weakref.ref(hidden)
    loss = (hidden * 2.0).sum()
    del hidden
    del loss  # no reference cycles: freed at once, no gc needed
    assert probe() is None
    gc.collect()


# ---- dtype rules ----------------------------------------------------------------------------------------
def test_mixed_dtypes_promote_like_pytorch_except_matmul():
    """Issue 13 changed this: mixed dtypes used to raise; they now promote (f32 with f64 -> f64)."""
    a, b = deers.ones(2, dtype=deers.f32), deers.ones(2, dtype=deers.f64)
    for op in (lambda: a + b, lambda: a * b, lambda: a - b, lambda: a / b, lambda: a.maximum(b),
               lambda: deers.where(a > 0, a, b), lambda: deers.cat([a, b])):
        assert op().dtype is deers.f64
    with pytest.raises(DTypeError, match=r"matmul: mixed dtypes shape \(2,\) f32 cpu and shape \(2,\) f64 cpu"):
        a @ b
    assert (a + 1).dtype is deers.f32 and (2.5 * b).dtype is deers.f64 and (1 - a).dtype is deers.f32
    assert (a + np.float64(1.5)).dtype is deers.f32


FLOAT_ONLY_UNARY = sorted(cls.fn.value for cls in UnaryOp.__subclasses__() if cls.float_only)  # exp, log, ...


@pytest.mark.parametrize("op", FLOAT_ONLY_UNARY + ["rsqrt", "mean", "softmax", "log_softmax", "logsumexp"])
def test_int_tensors_with_float_only_ops_raise(op):
    x = deers.tensor([[1, 2], [3, 4]])
    with pytest.raises(DTypeError, match=rf"{op}: .*i64.*to_dtype"):
        getattr(x, op)()


def test_int_tensors_in_division_and_powers_follow_pytorch():
    """Issue 13 changed this: true division of ints gives f32, int powers stay i64 (they raised)."""
    x = deers.tensor([1, 2])
    for op, dtype, values in ((lambda: x / 2, deers.f32, [0.5, 1.0]), (lambda: x / x, deers.f32, [1.0, 1.0]),
                              (lambda: 1 / x, deers.f32, [1.0, 0.5]), (lambda: x ** 2, deers.i64, [1, 4]),
                              (lambda: 2 ** x, deers.i64, [2, 4]), (lambda: x ** 0.5, deers.f32, [1.0, 2 ** 0.5])):
        out = op()
        assert out.dtype is dtype
        np.testing.assert_allclose(out.numpy(), values, rtol=1e-6)
    with pytest.raises(DTypeError, match="matmul"):
        x @ x


def test_integer_arithmetic_is_exact():
    x = deers.tensor([2 ** 40, 3, -7])
    assert (x * 2 + x - 1).numpy().tolist() == [3 * 2 ** 40 - 1, 8, -22]
    assert x.sum().item() == 2 ** 40 - 4 and x.sum().dtype is deers.i64
    assert x.max().item() == 2 ** 40 and (-x).abs().numpy().tolist() == [2 ** 40, 3, 7]
    mask = deers.tensor([True, False, True])
    assert mask.sum().item() == 2 and mask.sum().dtype is deers.i64


@pytest.mark.parametrize("dtype, tolerance", [("f16", 2e-3), ("f32", 1e-6), ("f64", 1e-12)])
def test_float_dtypes_are_kept_through_ops(dtype, tolerance):
    dt = deers.dtype.as_dtype(dtype)
    a_np, b_np = rand(4, 8, seed=1), rand(8, 3, seed=2)
    a, b = deers.tensor(a_np, dtype=dt), deers.tensor(b_np, dtype=dt)
    a_r, b_r = a_np.astype(dt.numpy).astype(np.float64), b_np.astype(dt.numpy).astype(np.float64)
    results = {
        "matmul": (a @ b, a_r @ b_r),
        "softmax": (a.softmax(-1), np.exp(a_r) / np.exp(a_r).sum(-1, keepdims=True)),
        "sum": (a.sum(1), a_r.sum(1)),
        "mean": (a.mean(), a_r.mean()),
        "mul": (a * a + 1.0, a_r * a_r + 1.0),
        "exp": (a.exp(), np.exp(a_r)),
    }
    for name, (out, expected) in results.items():
        assert out.dtype is dt, name
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected, rtol=tolerance, atol=tolerance,
                                   err_msg=name)
    w = Var(b)
    grads = (a @ w).sum().backward()
    assert grads[w].dtype is dt


def test_bf16_through_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert deers.bf16.available
    x = deers.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=deers.bf16)
    assert x.dtype is deers.bf16 and x.numpy().dtype == ml_dtypes.bfloat16
    y = (x @ x).sum() * 0.5
    assert y.dtype is deers.bf16 and y.item() == 27.0
    w = Var(x)
    grads = (w * 2.0).sum().backward()
    assert grads[w].dtype is deers.bf16 and grads[w].numpy().astype(np.float32).tolist() == [[2, 2], [2, 2]]
    assert x.to_dtype(deers.f32).dtype is deers.f32 and deers.dtype.as_dtype("bfloat16") is deers.bf16


def test_to_dtype_round_trips_and_casts_the_gradient_back():
    x = Var(deers.tensor([1.5, -2.25], dtype=deers.f64))
    y = x.to_dtype(deers.f16)
    assert y.dtype is deers.f16 and x.to_dtype("f64") is x
    assert x.to(deers.f32).dtype is deers.f32 and x.float().dtype is deers.f32 and x.double() is x
    grads = (y * 4.0).sum().backward()
    assert grads[x].dtype is deers.f64 and grads[x].numpy().tolist() == [4.0, 4.0]
    assert x.to_dtype(deers.i64).numpy().tolist() == [1, -2] and not x.long().requires_grad


# ---- device, shape and index errors ---------------------------------------------------------------------
def fake_device_tensor(values, device: str) -> deers.Tensor:
    """A tensor tagged with another device (computed by the CPU backend) to test the checks alone."""
    cpu = deers.tensor(values)
    return deers.Tensor(NDArray(cpu.data.buffer, cpu.data.layout, cpu.dtype, deers.Device.cuda(1),
                                backend_for("cpu")))


def test_device_mismatch_names_the_op_and_both_devices():
    a, b = deers.ones(2, 3), fake_device_tensor(np.ones((2, 3), np.float32), "cuda:1")
    with pytest.raises(DeviceError, match=r"add: operands are on different devices: shape \(2, 3\) f32 cpu and "
                                          r"shape \(2, 3\) f32 cuda:1"):
        a + b
    with pytest.raises(DeviceError, match=r"matmul: .*cpu.*cuda:1"):
        a @ b.T
    with pytest.raises(DeviceError, match=r"cat: .*cpu.*cuda:1"):
        deers.cat([a, b])
    with pytest.raises(DeviceError, match=r"gather: index .*cuda:1.*cpu"):
        a.gather(1, fake_device_tensor(np.zeros((2, 1), np.int64), "cuda:1"))


def test_device_mismatch_with_a_real_second_backend():
    try:
        other = deers.ones(2, 3, device="mps")  # MLX (mlx[cpu] on Linux); skipped when absent
    except deers.BackendUnavailable:
        pytest.skip("no second backend installed")
    with pytest.raises(DeviceError, match=r"mul: operands are on different devices: shape \(2, 3\) f32 cpu and "
                                          r"shape \(2, 3\) f32 mps"):
        deers.ones(2, 3) * other
    assert (deers.ones(2, 3) * other.to_device("cpu")).device == "cpu"


def test_device_strings():
    assert deers.Device.CPU == "cpu" and deers.Device.cuda(1) == "cuda:1" and deers.Device.MPS == "mps"
    assert deers.Device.CPU != "cuda" and deers.Device.CPU != "not a device"
    with pytest.raises(ValueError, match="unknown device"):
        deers.zeros(2, device="tpu")


@pytest.mark.parametrize("index_op", [
    lambda x: x.gather(1, deers.tensor([[0], [3]])),
    lambda x: x.gather(0, deers.tensor([[-4, 0, 0]])),
    lambda x: x.index_select(0, deers.tensor([0, 2])),
    lambda x: x.index_select(1, deers.tensor([-4])),
    lambda x: deers.embedding(x, deers.tensor([[5]])),
    lambda x: x[2],
    lambda x: x[0, -4],
    lambda x: x[deers.tensor([2])],
    lambda x: x[:, [0, 3]],
    lambda x: x.narrow(1, 2, 2),
    lambda x: x.narrow(0, -3, 1),
    lambda x: x[0, 0, 0],
], ids=["gather", "gather negative", "index_select", "index_select negative", "embedding", "getitem int",
        "getitem negative", "getitem tensor", "getitem list", "narrow", "narrow negative", "too many indices"])
def test_out_of_range_indices_raise_index_error(index_op):
    x = deers.randn(2, 3)
    with pytest.raises(IndexError, match="out of range|too many"):
        index_op(x)


def test_index_errors_name_the_op():
    x = deers.randn(2, 3)
    with pytest.raises(IndexError, match=r"gather: index out of range for dimension of size 3"):
        x.gather(1, deers.tensor([[0], [3]]))
    with pytest.raises(IndexError, match=r"narrow: \[2, 4\) is out of range for dim 1 of shape \(2, 3\)"):
        x.narrow(1, 2, 2)
    with pytest.raises(IndexError, match=r"getitem: index 2 is out of range for dim 0 of shape \(2, 3\)"):
        x[2]
    with pytest.raises(DTypeError, match=r"index_select: index must be i64, got shape \(1,\) f32"):
        x.index_select(0, deers.tensor([0.0]))


@pytest.mark.parametrize("op, pattern", [
    (lambda: deers.ones(3, 4) + deers.ones(5), r"add: shapes cannot broadcast: shape \(3, 4\) .* and shape \(5,\)"),
    (lambda: deers.ones(3, 4) * deers.ones(2, 4), r"mul: .*\(3, 4\).*\(2, 4\)"),
    (lambda: deers.ones(3, 4) @ deers.ones(5, 6), r"matmul: inner dims differ: shape \(3, 4\) .* @ shape \(5, 6\)"),
    (lambda: deers.ones(4) @ deers.ones(5), r"matmul: .*\(4,\).*\(5,\)"),
    (lambda: deers.ones(2, 3, 4) @ deers.ones(3, 4, 5), r"matmul: batch dims .*\(2, 3, 4\).*\(3, 4, 5\)"),
    (lambda: deers.cat([deers.ones(2, 3), deers.ones(3, 4)], 0), r"cat: .*\(2, 3\).*\(3, 4\)"),
    (lambda: deers.ones(2, 3).reshape(4, 2), r"reshape: .*\(2, 3\).*\(4, 2\)"),
    (lambda: deers.ones(2, 3).reshape(-1, 4), r"reshape: .*\(2, 3\).*\(-1, 4\)"),
    (lambda: deers.ones(2, 3).broadcast_to(4, 3, 2), r"broadcast_to: .*\(2, 3\).*\(4, 3, 2\)"),
    (lambda: deers.ones(2, 3).permute(0, 0), r"permute: .*\(0, 0\).*\(2, 3\)"),
    (lambda: deers.ones(2, 3).gather(1, deers.tensor([[0, 1, 2, 0]] * 3)), r"gather: .*\(3, 4\).*\(2, 3\)"),
    (lambda: deers.where(deers.ones(3) > 0, deers.ones(2, 3), deers.ones(4, 1)), r"where: .*\(2, 3\).*\(4, 1\)"),
    (lambda: deers.ones(2, 3).item(), r"item: .*\(2, 3\)"),
])
def test_shape_errors_name_the_op_and_both_shapes(op, pattern):
    with pytest.raises(ShapeError, match=pattern):
        op()


def test_operands_of_other_types_raise_type_error():
    x = deers.ones(2)
    with pytest.raises(TypeError, match="add: expected a Tensor or a Python number, got ndarray"):
        x + np.ones(2)
    with pytest.raises(TypeError, match="matmul"):
        x @ [1.0, 2.0]


def test_creation_dtypes_follow_pytorch():
    assert deers.tensor([1.0, 2.0]).dtype is deers.f32 and deers.tensor([1, 2]).dtype is deers.i64
    assert deers.tensor([True]).dtype is deers.bool_
    assert deers.tensor(np.zeros(2)).dtype is deers.f64  # a NumPy array keeps its float type
    assert deers.tensor(np.zeros(2, np.float16)).dtype is deers.f16
    assert deers.tensor(np.zeros(2, np.int32)).dtype is deers.i64
    assert deers.tensor([1, 2], dtype="f16").dtype is deers.f16
    assert deers.zeros(2, 3).dtype is deers.f32 and deers.arange(3).dtype is deers.i64
    assert deers.full((2,), 1.5).dtype is deers.f32 and deers.full((2,), 3).dtype is deers.i64


@pytest.mark.parametrize("op, name", [
    (lambda x: x.sum(2), "sum"), (lambda x: x.max((0, -3)), "max"), (lambda x: x.mean(5), "mean"),
    (lambda x: x.softmax(2), "softmax"), (lambda x: x.argmax(-3), "argmax"), (lambda x: x.transpose(0, 2), "transpose"),
    (lambda x: x.narrow(2, 0, 1), "narrow"), (lambda x: x.unsqueeze(4), "unsqueeze"), (lambda x: x.squeeze(2), "squeeze"),
    (lambda x: deers.cat([x, x], 2), "cat"), (lambda x: x.index_select(2, deers.tensor([0])), "index_select"),
])
def test_dims_out_of_range_raise_index_error_naming_the_op(op, name):
    with pytest.raises(IndexError, match=rf"{name}: dimension -?\d is out of range: expected one in \[-[23], [12]\]"):
        op(deers.ones(2, 3))


def test_backward_casts_an_explicit_grad_to_the_tensor_dtype():
    x = Var(deers.ones(2, dtype=deers.f64))
    grads = (x * 3.0).backward(deers.tensor([1.0, 2.0]))  # an f32 seed
    assert grads[x].dtype is deers.f64 and grads[x].numpy().tolist() == [3.0, 6.0]


def test_pow_zero_has_a_zero_gradient_even_at_zero():
    x = Var(deers.tensor([0.0, 2.0]))
    assert (x ** 0).backward(deers.ones(2))[x].numpy().tolist() == [0.0, 0.0]


def test_clamp_bounds_must_be_numbers():
    with pytest.raises(TypeError, match="clamp: expected a Tensor or a Python number"):
        deers.ones(2).clamp(min="0")

"""Every op, forward and backward, through check_op (NumPy reference, finite differences, PyTorch),
on contiguous, permuted, narrowed and broadcast (stride-0) inputs."""
import numpy as np
import pytest

import deers
from helpers import LAYOUTS, check_op, lib, make_input, rand
from deers.errors import DTypeError, ShapeError
from deers.ops.linalg import linear

try:
    import torch
except ImportError:
    torch = None

NO_BROADCAST = ("contiguous", "permuted", "narrowed")  # for ops where repeated values make ties


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, linear where beta x > threshold (PyTorch's rule)."""
    return np.where(beta * x > threshold, x, np.logaddexp(0, beta * x) / beta)


def functional(x):
    """Where activations live as functions: torch.nn.functional for a torch tensor, deers.nn otherwise."""
    return torch.nn.functional if lib(x) is torch else deers.nn


# ---- unary -------------------------------------------------------------------------------------
UNARY = {
    "neg": (lambda x: x.neg(), np.negative, False),
    "exp": (lambda x: x.exp(), np.exp, False),
    "log": (lambda x: x.log(), np.log, True),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, True),
    "rsqrt": (lambda x: x.rsqrt(), lambda x: 1 / np.sqrt(x), True),
    "sin": (lambda x: x.sin(), np.sin, False),
    "cos": (lambda x: x.cos(), np.cos, False),
    "relu": (lambda x: x.relu(), lambda x: np.maximum(x, 0), False),
    "sigmoid": (lambda x: x.sigmoid(), _sigmoid, False),
    "tanh": (lambda x: x.tanh(), np.tanh, False),
    "softplus": (lambda x: functional(x).softplus(x), _softplus, False),
    "softplus beta threshold": (lambda x: functional(x).softplus(x, beta=2.0, threshold=1.5),
                                lambda x: _softplus(x, 2.0, 1.5), False),
    "abs": (lambda x: x.abs(), np.abs, False),
    "sign": (lambda x: x.sign(), np.sign, False),
    "square": (lambda x: x.square(), np.square, False),
    "unary minus": (lambda x: -x, np.negative, False),
    "bitwise_not": (lambda x: ~x, np.invert, False),
}
INTEGER_ROWS = ("bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor", "floor_divide int", "remainder int")


def integers(*shape: int, seed: int = 0, nonzero: bool = False) -> np.ndarray:
    """Reproducible int64 test data in [-8, 8) (nonzero: without 0, for divisors)."""
    values = np.random.default_rng(seed).integers(-8, 8, shape)
    return np.where(values == 0, 3, values) if nonzero else values


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name):
    fn, reference, positive = UNARY[name]
    if name in INTEGER_ROWS:
        x = integers(3, 4)
    else:
        x = rand(3, 4, low=0.2, high=2.0) if positive else rand(3, 4, low=-2.0, high=2.0)
    check_op(fn, x, reference=reference)


def test_sigmoid_is_stable_for_large_inputs():
    x = deers.tensor([-1000.0, 0.0, 1000.0])
    np.testing.assert_allclose(x.sigmoid().numpy(), [0.0, 0.5, 1.0])


def test_softplus_method_module_and_large_inputs():
    x = deers.tensor([-1000.0, -3.0, 0.0, 3.0, 1000.0]).attach()
    y = x.softplus()
    np.testing.assert_allclose(y.numpy(), _softplus(x.numpy().astype(np.float64)), rtol=1e-6)
    sigmoid = np.exp(-np.logaddexp(0, -x.numpy().astype(np.float64)))  # d softplus/dx, without overflow
    np.testing.assert_allclose(y.backward(deers.ones(5))[x].numpy(), sigmoid, rtol=1e-6)
    layer = deers.nn.Softplus(beta=0.5, threshold=1.0)
    np.testing.assert_allclose(layer(x).numpy(), _softplus(x.numpy(), 0.5, 1.0), rtol=1e-6)
    assert "beta=0.5" in repr(layer)
    with pytest.raises(DTypeError, match="softplus"):
        deers.tensor([1, 2]).softplus()


# ---- binary, with broadcasting --------------------------------------------------------------------
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a ** b, np.power),
    "add method": (lambda a, b: a.add(b), np.add),
    "sub method": (lambda a, b: a.sub(b), np.subtract),
    "mul method": (lambda a, b: a.mul(b), np.multiply),
    "div method": (lambda a, b: a.div(b), np.divide),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "minimum": (lambda a, b: a.minimum(b), np.minimum),
    "floor_divide": (lambda a, b: a // b, np.floor_divide),  # floats: no derivative (as PyTorch)
    "remainder": (lambda a, b: a % b, np.remainder),  # d/da = 1, d/db = -floor(a / b)
    "floor_divide int": (lambda a, b: a // b, np.floor_divide),
    "remainder int": (lambda a, b: a % b, np.remainder),
    "floor_divide method": (lambda a, b: a.floor_divide(b), np.floor_divide),
    "remainder method": (lambda a, b: a.remainder(b), np.remainder),
    "bitwise_and": (lambda a, b: a & b, np.bitwise_and),
    "bitwise_or": (lambda a, b: a | b, np.bitwise_or),
    "bitwise_xor": (lambda a, b: a ^ b, np.bitwise_xor),
}
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((4,), (2, 3, 4))]


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_binary(name, shapes):
    fn, reference = BINARY[name]
    if name in INTEGER_ROWS:  # signed operands: // and % round toward -inf, with the divisor's sign
        a, b = integers(*shapes[0], seed=1), integers(*shapes[1], seed=2, nonzero=True)
    elif name.startswith(("floor_divide", "remainder")):  # both signs of a and of b
        a, b = rand(*shapes[0], seed=1, low=-4.0, high=4.0), rand(*shapes[1], seed=2, low=0.5, high=2.0)
        b = np.where(np.random.default_rng(3).random(b.shape) < 0.5, -b, b)
    else:
        a, b = rand(*shapes[0], seed=1, low=0.5, high=2.0), rand(*shapes[1], seed=2, low=0.5, high=2.0)
    check_op(fn, a, b, reference=reference, grad=not name.startswith("floor_divide"))


def test_floor_divide_has_no_derivative_like_pytorch():
    a, b = deers.tensor([5.5, -5.5]).attach(), deers.tensor([2.0, 2.0])
    out = a // b
    assert out.requires_grad  # recorded, as in PyTorch, so that a backward through it is refused
    with pytest.raises(RuntimeError, match=r"floor_divide: has no derivative, as in PyTorch \(operands \(2,\)"):
        (out + a).sum().backward()
    if torch is not None:
        with pytest.raises(RuntimeError, match="floor_divide is not implemented"):
            t = torch.tensor([5.5, -5.5], requires_grad=True)
            (t // 2.0 + t).sum().backward()
    with deers.no_grad():
        assert not (a // b).requires_grad
    assert (a.detach() // b).numpy().tolist() == [2.0, -3.0]


def test_maximum_minimum_module_functions():
    a, b = rand(3, 4, seed=1), rand(4, seed=2)
    check_op(lambda a, b: lib(a).maximum(a, b), a, b, reference=np.maximum)
    check_op(lambda a, b: lib(a).minimum(a, b), a, b, reference=np.minimum)


def test_maximum_splits_the_gradient_on_ties():
    a, b = deers.tensor([1.0, 2.0, 3.0]).attach(), deers.tensor([1.0, 1.0, 4.0]).attach()
    grads = a.maximum(b).sum().backward()
    np.testing.assert_allclose(grads[a].numpy(), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(grads[b].numpy(), [0.5, 0.0, 1.0])


SCALAR = {
    "2 * x": (lambda x: 2 * x, lambda x: 2 * x),
    "x * 2": (lambda x: x * 2, lambda x: x * 2),
    "x + 1.5": (lambda x: x + 1.5, lambda x: x + 1.5),
    "1.5 + x": (lambda x: 1.5 + x, lambda x: 1.5 + x),
    "x - 1": (lambda x: x - 1, lambda x: x - 1),
    "1 - x": (lambda x: 1 - x, lambda x: 1 - x),
    "x / 3": (lambda x: x / 3, lambda x: x / 3),
    "3 / x": (lambda x: 3 / x, lambda x: 3 / x),
    "x ** 2": (lambda x: x ** 2, lambda x: x ** 2),
    "x ** 0.5": (lambda x: x ** 0.5, np.sqrt),
    "x ** -1.5": (lambda x: x ** -1.5, lambda x: x ** -1.5),
    "2 ** x": (lambda x: 2 ** x, lambda x: 2 ** x),
    "x.pow(3)": (lambda x: x.pow(3), lambda x: x ** 3),
    "np.float32(2) * x": (lambda x: np.float32(2) * x, lambda x: 2 * x),
}


@pytest.mark.parametrize("name", sorted(SCALAR))
def test_scalar_operands(name):
    fn, reference = SCALAR[name]
    check_op(fn, rand(3, 4, low=0.5, high=2.0), reference=reference)


def test_powf():
    check_op(lambda x: x.powf(3.0), rand(3, 4, low=0.5, high=2.0), reference=lambda x: x ** 3,
             torch_fn=lambda x: x.pow(3.0))


def test_pow_with_a_zero_tensor_exponent_has_a_zero_base_gradient_even_at_zero():
    a, b = deers.tensor([0.0, 2.0, 0.0]).attach(), deers.tensor([0.0, 0.0, 2.0])
    grads = (a ** b).sum().backward()
    np.testing.assert_array_equal(grads[a].numpy(), [0.0, 0.0, 0.0])  # PyTorch: b a^(b-1) masked where b == 0


# A Python number meets a tensor as a 0-d constant; these are the dtypes and values it gave as a
# scalar op before (PyTorch's promotion: int/bool + non-integer -> f32, bool + int -> i64, bool * bool -> bool).
F32, I64, BOOL = [1.5, -2.0, 4.0], [1, 2, -3], [True, False, True]
PROMOTION = [
    # (input values, input dtype, expression, result dtype, result values)
    (F32, "f32", lambda x: x + 2, "f32", [3.5, 0.0, 6.0]),
    (F32, "f32", lambda x: 1 - x, "f32", [-0.5, 3.0, -3.0]),
    (F32, "f32", lambda x: x * True, "f32", F32),
    (F32, "f32", lambda x: 2 ** x, "f32", [2 ** 1.5, 0.25, 16.0]),
    (F32, "f32", lambda x: 3 / x, "f32", [2.0, -1.5, 0.75]),
    (F32, "f32", lambda x: x ** 2, "f32", [2.25, 4.0, 16.0]),
    (F32, "f64", lambda x: x * np.float32(0.1), "f64", [0.15, -0.2, 0.4]),
    (F32, "f16", lambda x: x * 2.0, "f16", [3.0, -4.0, 8.0]),
    (F32, "f16", lambda x: 0.5 - x, "f16", [-1.0, 2.5, -3.5]),
    (I64, "i64", lambda x: x * 2, "i64", [2, 4, -6]),
    (I64, "i64", lambda x: 7 - x, "i64", [6, 5, 10]),
    (I64, "i64", lambda x: x + np.int64(3), "i64", [4, 5, 0]),
    (I64, "i64", lambda x: x * 0.5, "f32", [0.5, 1.0, -1.5]),
    (I64, "i64", lambda x: 1.5 - x, "f32", [0.5, -0.5, 4.5]),
    (I64, "i64", lambda x: x.maximum(0), "i64", [1, 2, 0]),
    (I64, "i64", lambda x: x.clamp(-1, 1), "i64", [1, 1, -1]),
    (BOOL, "bool", lambda x: x + 1, "i64", [2, 1, 2]),
    (BOOL, "bool", lambda x: x * True, "bool", BOOL),  # bool with bool stays bool (issue 13; was i64)
    (BOOL, "bool", lambda x: x * 0.5, "f32", [0.5, 0.0, 0.5]),
    ([1, 2, 250], "u8", lambda x: x + 1, "u8", [2, 3, 251]),
]


@pytest.mark.parametrize("values, dtype, fn, result_dtype, expected", PROMOTION)
def test_python_number_operands_promote_like_pytorch(values, dtype, fn, result_dtype, expected):
    for layout in NO_BROADCAST:
        x = make_input(np.array(values, deers.dtype.as_dtype(dtype).numpy), layout)
        out = fn(x)
        assert out.dtype is deers.dtype.as_dtype(result_dtype)
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected, rtol=1e-6)


def test_int_tensor_with_float_scalar_promotes_to_float():
    x = deers.tensor([1, 2, 3])
    assert (x * 2).dtype is deers.i64 and (x * 2).numpy().tolist() == [2, 4, 6]
    assert (x * 0.5).dtype is deers.f32
    np.testing.assert_allclose((x * 0.5).numpy(), [0.5, 1.0, 1.5])
    assert (x * np.float32(0.5)).dtype is deers.f32
    assert (x + 1.5).dtype is deers.f32 and (1.5 - x).dtype is deers.f32


@pytest.mark.parametrize("low, high", [(-0.5, 0.5), (None, 0.2), (0.1, None)])
def test_clamp(low, high):
    check_op(lambda x: x.clamp(low, high), rand(3, 4), reference=lambda x: np.clip(x, low, high))


def test_clamp_with_tensor_bounds():
    """Bounds may be Tensors that broadcast against x (issue 13); each gets the gradient where it was picked."""
    low, high = rand(3, 1, low=-0.6, high=-0.1), rand(4, low=0.1, high=0.6)
    check_op(lambda x, lo, hi: x.clamp(min=lo, max=hi), rand(3, 4), low, high,
             reference=lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi))


def test_clamp_passes_the_gradient_at_the_bounds_like_pytorch():
    x = deers.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]).attach()
    grads = x.clamp(-0.5, 0.5).sum().backward()  # 1 where min <= x <= max, bounds included
    np.testing.assert_array_equal(grads[x].numpy(), [0.0, 1.0, 1.0, 1.0, 0.0])
    grads = x.maximum(0.0).sum().backward()  # with a number: clamp(x, min=0)
    np.testing.assert_array_equal(grads[x].numpy(), [0.0, 0.0, 1.0, 1.0, 1.0])


def test_where_and_masked_fill():
    mask = np.array([[True], [False], [True]])
    a, b = rand(3, 4, seed=1), rand(4, seed=2)
    check_op(lambda a, b: lib(a).where(make_mask(a, mask), a, b), a, b,
             reference=lambda a, b: np.where(mask, a, b))
    check_op(lambda a, b: a.where(make_mask(a, mask), b), a, b, reference=lambda a, b: np.where(mask, a, b))
    check_op(lambda x: x.masked_fill(make_mask(x, mask), -1.0), a, reference=lambda x: np.where(mask, -1.0, x))
    check_op(lambda x: lib(x).where(make_mask(x, mask), x, 0.0), a, reference=lambda x: np.where(mask, x, 0.0))


def test_where_takes_a_mask_tensor_input():
    mask = np.array([[True, False, True, False]] * 3)
    check_op(lambda m, a, b: lib(a).where(m, a, b), mask, rand(3, 4, seed=1), rand(3, 4, seed=2),
             reference=lambda m, a, b: np.where(m, a, b))


def make_mask(like, mask: np.ndarray):
    """The same boolean mask as a tensor of like's library."""
    return torch.tensor(mask) if lib(like) is torch else deers.tensor(mask)


# ---- comparisons -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, reference", [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less),
                                             ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal)])
def test_comparisons_return_bool_masks(name, reference):
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([2.0, 2.0, 2.0])
    for layout in LAYOUTS[:3]:
        x, y = make_input(a, layout), make_input(b, layout)
        for out, expected in [(getattr(x, name)(y), reference(a, b)), (getattr(x, name)(2.0), reference(a, 2.0))]:
            assert out.dtype is deers.bool_ and out.shape == expected.shape
            np.testing.assert_array_equal(out.numpy(), expected)
    x = deers.tensor(a)
    np.testing.assert_array_equal((x > 1.5).numpy(), a > 1.5)
    np.testing.assert_array_equal((x == deers.tensor(b)).numpy(), a == b)
    np.testing.assert_array_equal((2.0 < x).numpy(), 2.0 < a)


def test_comparisons_record_no_gradient():
    x = deers.randn(3).attach()
    assert not (x > 0).requires_grad


def test_argmax():
    a = np.array([[1.0, 5.0, 3.0], [7.0, 2.0, 0.0]])
    for layout in LAYOUTS[:3]:
        x = make_input(a, layout)
        assert x.argmax().item() == 3
        np.testing.assert_array_equal(x.argmax(1).numpy(), [1, 0])
        np.testing.assert_array_equal(x.argmax(0, keepdim=True).numpy(), [[1, 0, 0]])
        np.testing.assert_array_equal(x.argmax(-1).numpy(), np.argmax(a, -1))
        assert x.argmax(1).dtype is deers.i64


# ---- matmul ------------------------------------------------------------------------------------------
MATMUL = [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
          ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)),
          ((4,), (2, 4, 5))]


@pytest.mark.parametrize("shapes", MATMUL, ids=str)
def test_matmul(shapes):
    a, b = rand(*shapes[0], seed=1), rand(*shapes[1], seed=2)
    check_op(lambda a, b: a @ b, a, b, reference=np.matmul)


def test_matmul_method_and_function_on_transposed_operands():
    a, b = rand(4, 3, seed=1), rand(5, 4, seed=2)
    check_op(lambda a, b: a.transpose(0, 1).matmul(b.T), a, b, reference=lambda a, b: a.T @ b.T,
             torch_fn=lambda a, b: a.transpose(0, 1).matmul(b.T))
    check_op(lambda a, b: lib(a).matmul(a.transpose(0, 1), b.transpose(0, 1)), a, b,
             reference=lambda a, b: a.T @ b.T)


def test_matmul_of_a_narrowed_split():
    """q and k narrowed out of one (T, 3D) buffer, like the attention's qkv split."""
    qkv = rand(5, 12, seed=3)
    check_op(lambda x: x.narrow(1, 0, 4) @ x.narrow(1, 4, 4).transpose(0, 1), qkv,
             reference=lambda x: x[:, :4] @ x[:, 4:8].T)


@pytest.mark.parametrize("x_shape", [(3, 4), (2, 3, 4), (4,), (2, 1, 3, 4)], ids=str)
def test_linear_is_x_times_the_weight_transposed(x_shape):
    """deers.ops.linalg.linear (what nn.Linear records) against x @ w.T, PyTorch's F.linear and
    finite differences, on every layout of both operands (a permuted x is flattened by a copy)."""
    x, w = rand(*x_shape, seed=1), rand(5, 4, seed=2)
    check_op(lambda x, w: linear(x, w) if lib(x) is deers else torch.nn.functional.linear(x, w), x, w,
             reference=lambda x, w: x @ w.T)


def test_linear_refuses_mismatched_operands():
    with pytest.raises(ShapeError, match=r"linear: x shape \(2, 3\) f32 cpu .* weight shape \(5, 4\)"):
        linear(deers.ones(2, 3), deers.ones(5, 4))
    with pytest.raises(DTypeError, match="linear: mixed dtypes"):
        linear(deers.ones(2, 4), deers.ones(5, 4, dtype="float64"))


# ---- indexing ----------------------------------------------------------------------------------------
def test_gather():
    x = rand(3, 4)
    idx = np.array([[0, 3], [1, 1], [2, 0]])
    check_op(lambda x, i: x.gather(1, i), x, idx, reference=lambda x, i: np.take_along_axis(x, i, 1))
    idx0 = np.array([[2, 0, 1, 1], [0, 0, 2, 1]])
    check_op(lambda x, i: x.gather(0, i), x, idx0, reference=lambda x, i: np.take_along_axis(x, i, 0))
    check_op(lambda x, i: lib(x).gather(x, -1, i), x, idx, reference=lambda x, i: np.take_along_axis(x, i, 1))


def test_gather_with_an_index_smaller_than_the_input():
    x = rand(3, 4)
    idx = np.array([[3], [0]])  # rows 0 and 1 only, like torch.gather
    check_op(lambda x, i: x.gather(1, i), x, idx, reference=lambda x, i: np.take_along_axis(x[:2], i, 1))


def test_index_select():
    x = rand(4, 3)
    idx = np.array([2, 0, 2])  # row 2 twice: its gradient is the sum
    check_op(lambda x, i: x.index_select(0, i), x, idx, reference=lambda x, i: x[i])
    check_op(lambda x, i: lib(x).index_select(x, 1, i[:2]), x, idx, reference=lambda x, i: x[:, i[:2]])
    idx2 = np.array([[0, 1], [3, 3]])  # an index of any shape (embedding lookup)
    check_op(lambda x, i: x.index_select(0, i), x, idx2, reference=lambda x, i: x[i],
             torch_fn=lambda x, i: x[i])
    check_op(lambda x, i: deers.embedding(x, i), x, idx2, reference=lambda x, i: x[i],
             torch_fn=lambda x, i: torch.nn.functional.embedding(i, x))


# ---- cat, stack --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dim):
    a, b, c = rand(2, 3, seed=1), rand(2, 3, seed=2), rand(2, 3, seed=3)
    check_op(lambda a, b, c: lib(a).cat([a, b, c], dim), a, b, c, reference=lambda *xs: np.concatenate(xs, dim))


def test_cat_different_sizes_along_dim():
    a, b = rand(2, 3, seed=1), rand(2, 1, seed=2)
    check_op(lambda a, b: lib(a).cat([a, b], 1), a, b, reference=lambda a, b: np.concatenate([a, b], 1))
    check_op(lambda a, b: lib(a).cat((a, b.exp()), dim=1), a, b,
             reference=lambda a, b: np.concatenate([a, np.exp(b)], 1))


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim):
    a, b = rand(2, 3, seed=1), rand(2, 3, seed=2)
    check_op(lambda a, b: lib(a).stack([a, b], dim), a, b, reference=lambda a, b: np.stack([a, b], dim))


# ---- reductions --------------------------------------------------------------------------------------
DIMS = [None, 0, 1, -1, (0, 2), (1,), (0, 1, 2)]


@pytest.mark.parametrize("dim", DIMS, ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_mean(dim, keepdim):
    x = rand(2, 3, 4)
    check_op(lambda x: x.sum(dim, keepdim=keepdim), x, reference=lambda x: np.sum(x, dim, keepdims=keepdim))
    check_op(lambda x: x.mean(dim, keepdim=keepdim), x, reference=lambda x: np.mean(x, dim, keepdims=keepdim),
             layouts=NO_BROADCAST[:2])


@pytest.mark.parametrize("dim", DIMS, ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min(dim, keepdim):
    x = rand(2, 3, 4)
    amax = (lambda x: x.amax(dim if dim is not None else tuple(range(x.ndim)), keepdim=keepdim))
    amin = (lambda x: x.amin(dim if dim is not None else tuple(range(x.ndim)), keepdim=keepdim))
    check_op(lambda x: x.amax(dim, keepdim=keepdim), x, reference=lambda x: np.max(x, dim, keepdims=keepdim),
             torch_fn=amax, layouts=NO_BROADCAST)
    check_op(lambda x: x.amin(dim, keepdim=keepdim), x, reference=lambda x: np.min(x, dim, keepdims=keepdim),
             torch_fn=amin, layouts=NO_BROADCAST[:1])


def _logsumexp(x, dim, keepdims):
    peak = np.max(x, dim, keepdims=True)
    out = np.log(np.sum(np.exp(x - peak), dim, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, dim)


@pytest.mark.parametrize("dim", DIMS, ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
def test_logsumexp(dim, keepdim):
    x = rand(2, 3, 4, low=-3, high=3)
    all_dims = dim if dim is not None else (0, 1, 2)
    check_op(lambda x: x.logsumexp(dim, keepdim=keepdim), x, reference=lambda x: _logsumexp(x, dim, keepdim),
             torch_fn=lambda x: x.logsumexp(all_dims, keepdim=keepdim), layouts=NO_BROADCAST[:2])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # log(0) = -inf is the answer here
def test_logsumexp_of_minus_infinity_rows():
    x = deers.tensor([[-np.inf, -np.inf], [0.0, -np.inf]])
    np.testing.assert_allclose(x.logsumexp(1).numpy(), [-np.inf, 0.0])


def _softmax(x, dim):
    e = np.exp(x - np.max(x, dim, keepdims=True))
    return e / e.sum(dim, keepdims=True)


@pytest.mark.parametrize("dim", [-1, 2, 1, 0])
def test_softmax_log_softmax(dim):
    x = rand(2, 3, 4, low=-3, high=3)
    check_op(lambda x: x.softmax(dim), x, reference=lambda x: _softmax(x, dim))
    check_op(lambda x: x.log_softmax(dim), x, reference=lambda x: np.log(_softmax(x, dim)))


@pytest.mark.parametrize("dim", [(0, 2), (1, 2)], ids=str)
def test_softmax_over_several_dims(dim):
    x = rand(2, 3, 4, low=-3, high=3)
    check_op(lambda x: x.softmax(dim), x, reference=lambda x: _softmax(x, dim),
             torch_fn=lambda x: (x - x.logsumexp(dim, keepdim=True)).exp())
    check_op(lambda x: x.log_softmax(dim), x, reference=lambda x: np.log(_softmax(x, dim)),
             torch_fn=lambda x: x - x.logsumexp(dim, keepdim=True))


def test_softmax_of_large_logits_is_stable():
    x = deers.tensor([[1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(x.softmax(-1).numpy(), [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(x.log_softmax(-1).numpy()[0, :2], [np.log(0.5)] * 2, rtol=1e-6)


# ---- views and shape ---------------------------------------------------------------------------------
VIEWS = {
    "permute": (lambda x: x.permute(2, 0, 1), lambda x: x.transpose(2, 0, 1)),
    "permute tuple": (lambda x: x.permute((1, 2, 0)), lambda x: x.transpose(1, 2, 0)),
    "permute negative": (lambda x: x.permute(0, -1, -2), lambda x: x.transpose(0, 2, 1)),
    "transpose": (lambda x: x.transpose(0, 2), lambda x: np.swapaxes(x, 0, 2)),
    "transpose negative": (lambda x: x.transpose(-1, -2), lambda x: np.swapaxes(x, 1, 2)),
    "T 2-D": (lambda x: x[0].T, lambda x: x[0].T),
    "broadcast_to": (lambda x: x[:, :1].broadcast_to((5, 2, 3, 4)), lambda x: np.broadcast_to(x[:, :1], (5, 2, 3, 4))),
    "expand -1": (lambda x: x[:, :1].expand(2, -1, 3, 4), lambda x: np.broadcast_to(x[:, :1], (2, 2, 3, 4))),
    "reshape": (lambda x: x.reshape(4, 6), lambda x: x.reshape(4, 6)),
    "reshape -1": (lambda x: x.reshape((-1, 3)), lambda x: x.reshape(-1, 3)),
    "reshape of permuted": (lambda x: x.permute(1, 0, 2).reshape(3, 8), lambda x: x.transpose(1, 0, 2).reshape(3, 8)),
    "view": (lambda x: x.view(2, 12), lambda x: x.reshape(2, 12)),
    "flatten": (lambda x: x.flatten(1), lambda x: x.reshape(2, 12)),
    "unsqueeze squeeze": (lambda x: x.unsqueeze(1).squeeze(1).unsqueeze(-1), lambda x: x[..., None]),
    "narrow": (lambda x: x.narrow(2, 1, 2), lambda x: x[:, :, 1:3]),
    "narrow negative start": (lambda x: x.narrow(-1, -3, 2), lambda x: x[:, :, 1:3]),
    "narrow then reshape": (lambda x: x.narrow(1, 1, 2).reshape(2, 8), lambda x: x[:, 1:3].reshape(2, 8)),
    "compact": (lambda x: x.transpose(0, 1).contiguous(), lambda x: np.swapaxes(x, 0, 1)),
    "compact of narrowed": (lambda x: x.narrow(2, 1, 2).contiguous() * 2, lambda x: x[:, :, 1:3] * 2),
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views(name):
    fn, reference = VIEWS[name]
    check_op(fn, rand(2, 3, 4), reference=reference)


def test_compact_method_and_is_contiguous():
    x = deers.tensor(rand(2, 3))
    assert x.compact() is x and x.is_contiguous()
    t = x.transpose(0, 1)
    assert not t.is_contiguous() and t.compact().is_contiguous()
    np.testing.assert_array_equal(t.compact().numpy(), rand(2, 3).T)


GETITEM = {
    "int": lambda x: x[1],
    "negative int": lambda x: x[-1],
    "two ints": lambda x: x[1, 2],
    "all ints": lambda x: x[1, 2, 3],
    "slice": lambda x: x[:, 1:3],
    "negative slice": lambda x: x[:, -2:],
    "slice step": lambda x: x[:, ::2, 1::2],
    "slice step past end": lambda x: x[:, 0:10:2],
    "int and slice": lambda x: x[1, ::2],
    "None": lambda x: x[None],
    "None in the middle": lambda x: x[:, None, 1],
    "Ellipsis": lambda x: x[..., 1],
    "Ellipsis None": lambda x: x[..., None],
    "None int None": lambda x: x[None, 0, None],
    "Ellipsis in the middle": lambda x: x[1, ..., 2:],
    "empty slice": lambda x: x[:, 2:2],
}


@pytest.mark.parametrize("name", sorted(GETITEM))
def test_getitem(name):
    fn = GETITEM[name]
    check_op(fn, rand(2, 3, 4), reference=fn)


def test_getitem_with_tensor_indices():
    x = rand(4, 3)
    idx = np.array([3, 0, 3])
    check_op(lambda x, i: x[i], x, idx, reference=lambda x, i: x[i])
    check_op(lambda x, i: x[:, i[:2] - 1], x, idx, reference=lambda x, i: x[:, i[:2] - 1])
    check_op(lambda x, i: x[i - 4], x, idx, reference=lambda x, i: x[i - 4])  # negative indices wrap
    check_op(lambda x: x[[0, 2]], x, reference=lambda x: x[[0, 2]])
    check_op(lambda x: x[np.array([1, -1])], x, reference=lambda x: x[np.array([1, -1])],
             torch_fn=lambda x: x[torch.tensor([1, -1])])


def test_getitem_with_a_bool_mask():
    x = rand(3, 4)
    mask = x > 0
    check_op(lambda x, m: x[m], x, mask, reference=lambda x, m: x[m])


def test_to_dtype_forward_and_backward():
    x = rand(3, 4)
    for layout in LAYOUTS:
        t = make_input(x if layout != "broadcast" else np.broadcast_to(x[:1], x.shape).copy(), layout, True)
        y = t.to_dtype(deers.f32)
        assert y.dtype is deers.f32 and y.is_contiguous()
        np.testing.assert_allclose(y.numpy(), t.numpy().astype(np.float32))
        grads = (y * 2.0).sum().backward()
        assert grads[t].dtype is deers.f64
        np.testing.assert_allclose(grads[t].numpy(), np.full((3, 4), 2.0))
    check_op(lambda x: x.to_dtype(deers.f32).to_dtype(deers.f64) * 3, x, reference=lambda x: x * 3,
             torch_fn=lambda x: x.to(torch.float32).to(torch.float64) * 3, atol=1e-6, grad_atol=1e-4, eps=1e-2)


def test_a_small_network_expression():
    """(x @ w).relu().sum() with a broadcast bias: the example of docs/architecture.md."""
    x, w, b = rand(4, 3, seed=1), rand(3, 5, seed=2), rand(5, seed=3)
    check_op(lambda x, w, b: ((x @ w) + b).relu().sum(), x, w, b,
             reference=lambda x, w, b: np.maximum(x @ w + b, 0).sum())


# ---- every backward also receives non-contiguous gradients ----------------------------------------------
GRAD_THROUGH_TRANSPOSE = {
    "matmul": (lambda a, b: a @ b, (3, 4), (4, 5)),
    "batched matmul": (lambda a, b: a @ b, (2, 3, 4), (4, 5)),
    "mul": (lambda a, b: a * b, (3, 4), (4,)),
    "div": (lambda a, b: a / (b.square() + 1.0), (3, 4), (3, 1)),
    "softmax": (lambda a, b: a.softmax(-1) * b, (3, 4), (4,)),
    "log_softmax": (lambda a, b: a.log_softmax(0) + b, (3, 4), (4,)),
    "logsumexp": (lambda a, b: a.logsumexp(1, keepdim=True) * b, (3, 4), (4,)),
    "amax": (lambda a, b: a.amax(1, keepdim=True) * b, (3, 4), (4,)),
    "amin": (lambda a, b: a.amin((0, 1), keepdim=True) * b, (3, 4), (4,)),
    "sum": (lambda a, b: a.sum(0, keepdim=True) * b[:, :1], (3, 4), (3, 4)),
    "cat": (lambda a, b: lib(a).cat([a, b], 0), (3, 4), (2, 4)),
    "getitem": (lambda a, b: a[1:, ::2] * b[:2, :2], (3, 4), (3, 4)),
    "reshape copy": (lambda a, b: a.T.reshape(2, 6) * b.reshape(2, 6), (3, 4), (3, 4)),
    "where": (lambda a, b: lib(a).where(a > 0, a, b), (3, 4), (3, 4)),
    "unary": (lambda a, b: (a.exp() + b.sin()).sigmoid(), (3, 4), (3, 4)),
    "number operands": (lambda a, b: (2.0 - a) * 3 + 1 / (b.abs() + 1) ** 2, (3, 4), (4,)),
    "pow": (lambda a, b: (a.abs() + 0.5) ** b, (3, 4), (4,)),
    "maximum": (lambda a, b: a.maximum(b) - b.minimum(a), (3, 4), (4,)),
    "clamp": (lambda a, b: a.clamp(-0.5, 0.5) * b, (3, 4), (3, 4)),
    "to_dtype": (lambda a, b: a.to_dtype(deers.f64) * b, (3, 4), (3, 4)),
}


@pytest.mark.parametrize("name", sorted(GRAD_THROUGH_TRANSPOSE))
def test_backward_with_a_non_contiguous_out_grad(name):
    fn, sa, sb = GRAD_THROUGH_TRANSPOSE[name]
    torch_fn = (lambda a, b: fn(a, b).transpose(0, 1)) if name != "to_dtype" else (
        lambda a, b: (a.to(torch.float64) * b).transpose(0, 1))
    check_op(lambda a, b: fn(a, b).transpose(0, 1), rand(*sa, seed=1), rand(*sb, seed=2),
             torch_fn=torch_fn, layouts=("contiguous", "permuted"))


def test_index_ops_with_a_non_contiguous_out_grad():
    x, idx = rand(4, 3), np.array([[0, 2], [1, 1], [2, 0], [0, 0]])
    check_op(lambda x, i: x.gather(1, i).transpose(0, 1), x, idx, layouts=("contiguous", "permuted"))
    check_op(lambda x, i: x.index_select(0, i[:, 0]).transpose(0, 1), x, idx, layouts=("contiguous", "permuted"))


def test_ops_on_zero_dim_tensors():
    check_op(lambda x: (x.sum() * 2.0).exp() + x.mean(), rand(3), reference=lambda x: np.exp(x.sum() * 2) + x.mean())
    check_op(lambda x: x[1] * x[2], rand(3), reference=lambda x: x[1] * x[2])

"""PyTorch's type promotion (issue 13, item 3), checked against torch itself for every pair of
dtypes, in every operand form (tensor with tensor, with a 0-d tensor, with a Python number), for
the binary ops, comparisons, where and clamp, on every device here (mps through MLX)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import deers
from deers.dtype import ALL_DTYPES, PROMOTION_ORDER, promote_types
from deers.errors import DTypeError
from deers.ops.operands import result_type
from devices import DEVICES

torch = pytest.importorskip("torch", reason="the promotion table is checked against PyTorch")

DTYPES = [d for d in ALL_DTYPES]  # bf16 only when ml_dtypes is installed
TORCH = {"bool": torch.bool, "u8": torch.uint8, "i64": torch.int64, "f16": torch.float16, "bf16": torch.bfloat16,
         "f32": torch.float32, "f64": torch.float64}
VALUES = {"bool": [True, False, True], "u8": [1, 2, 3], "i64": [3, -2, 1]}
FLOAT_VALUES = [1.5, -2.0, 0.25]  # exact in every float type
DIVISOR_VALUES = {"bool": [True, True, True], "u8": [2, 3, 1], "i64": [-2, 3, 2], "float": [0.5, -1.5, 2.0]}


def _values(dtype: deers.DType, divisor: bool = False) -> list:
    if divisor:  # no zeros: integer division by zero is an error of its own
        return DIVISOR_VALUES.get(dtype.name, DIVISOR_VALUES["float"])
    return VALUES.get(dtype.name, FLOAT_VALUES)


def _pair(dtype, form: str, device: str, divisor: bool = False):
    """The same operand in Deers and torch: a (3,) tensor, a 0-d tensor, or a Python number."""
    values = _values(dtype, divisor)
    if form == "tensor":
        array = np.array(values, dtype=np.float64)
        return deers.tensor(array, device=device).to_dtype(dtype) if dtype.name != "bool" else \
            deers.tensor(values, device=device), torch.tensor(values, dtype=TORCH[dtype.name])
    if form == "0-d":
        value = values[0]
        ours = deers.tensor(np.float64(value), device=device).to_dtype(dtype)
        return ours, torch.tensor(value, dtype=TORCH[dtype.name])
    number = {"bool": True, "u8": 2, "i64": 2}.get(dtype.name, 0.5)  # a bool, an int or a float
    return number, number


def _skip_unsupported(device: str, *dtypes) -> None:
    if device == "mps" and any(d.name == "f64" for d in dtypes):
        from deers.backend.mlx import on_gpu

        if on_gpu():
            pytest.skip("the Apple GPU has no float64")


def test_the_table_is_symmetric_and_matches_torch_promote_types():
    for a, b in itertools.product(DTYPES, DTYPES):
        assert promote_types(a, b) is promote_types(b, a)
        assert TORCH[promote_types(a, b).name] == torch.promote_types(TORCH[a.name], TORCH[b.name]), (a, b)
    assert set(PROMOTION_ORDER) == {"bool", "u8", "i64", "f16", "bf16", "f32", "f64"}


@pytest.mark.parametrize("forms", [("tensor", "tensor"), ("tensor", "0-d"), ("0-d", "tensor"), ("0-d", "0-d"),
                                   ("tensor", "number"), ("number", "tensor"), ("0-d", "number")])
def test_result_type_matches_torch_result_type_for_every_pair(forms):
    for a, b in itertools.product(DTYPES, DTYPES):
        x, tx = _pair(a, forms[0], "cpu")
        y, ty = _pair(b, forms[1], "cpu")
        expected = torch.result_type(tx, ty) if isinstance(tx, torch.Tensor) else torch.result_type(ty, tx)
        assert TORCH[result_type(x, y).name] == expected, (a, b, forms)


BINARY = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / y,
    "maximum": lambda x, y: x.maximum(y),
    "eq": lambda x, y: x == y,
    "lt": lambda x, y: x < y,
    "floor_divide": lambda x, y: x // y,
    "remainder": lambda x, y: x % y,
    "and": lambda x, y: x & y,
    "or": lambda x, y: x | y,
    "xor": lambda x, y: x ^ y,
}
DIVISIONS = ("div", "floor_divide", "remainder")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("forms", [("tensor", "tensor"), ("tensor", "0-d"), ("tensor", "number")])
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_ops_give_torchs_dtype_and_values_for_every_pair(op, forms, device):
    fn = BINARY[op]
    for a, b in itertools.product(DTYPES, DTYPES):
        _skip_unsupported(device, a, b)
        if forms[1] == "number" and b is not DTYPES[0] and b.name not in ("i64", "f32"):
            continue  # a number only comes as bool, int or float: one dtype per kind is enough
        x, tx = _pair(a, forms[0], device)
        y, ty = _pair(b, forms[1], device, divisor=op in DIVISIONS)
        if op == "maximum" and not isinstance(ty, torch.Tensor):
            continue  # torch.maximum takes tensors only (Deers' maximum(number) is clamp)
        try:
            expected = fn(tx, ty)
        except RuntimeError:  # torch refuses (bool - bool): Deers must refuse too
            with pytest.raises(DTypeError):
                fn(x, y)
            continue
        out = fn(x, y)
        assert out.dtype.name == {v: k for k, v in TORCH.items()}[expected.dtype], (op, a, b, forms)
        tol = 1e-2 if out.dtype.is_half else 1e-6
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected.double().numpy(), rtol=tol,
                                   err_msg=f"{op} {a} {b} {forms}")


@pytest.mark.parametrize("device", DEVICES)
def test_where_and_clamp_promote_like_torch(device):
    for a, b in itertools.product(DTYPES, DTYPES):
        _skip_unsupported(device, a, b)
        x, tx = _pair(a, "tensor", device)
        y, ty = _pair(b, "tensor", device)
        mask = deers.tensor([True, False, False], device=device)
        expected = torch.where(torch.tensor([True, False, False]), tx, ty)
        out = deers.where(mask, x, y)
        assert TORCH[out.dtype.name] == expected.dtype, (a, b)
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected.double().numpy(), rtol=1e-2)
    for a in DTYPES:
        if a.name == "bool":
            continue  # torch has no clamp for bool
        x, tx = _pair(a, "tensor", device)
        for low in (1, 1.5):
            expected = tx.clamp(min=low)
            out = x.clamp(min=low)
            assert TORCH[out.dtype.name] == expected.dtype, (a, low)
            np.testing.assert_allclose(out.numpy().astype(np.float64), expected.double().numpy(), rtol=1e-2)


def test_the_traps_of_the_issue():
    """Each gave a wrong value or an error before issue 13."""
    np.testing.assert_allclose(deers.tensor([1, 2, 3]).clamp(min=1.5).numpy(), [1.5, 2.0, 3.0])
    np.testing.assert_allclose(deers.where(deers.tensor([True, False, True]), 0.5, deers.tensor([1, 2, 3])).numpy(),
                               [0.5, 2.0, 0.5])
    assert (deers.tensor([1, 2]) + deers.tensor([0.5, 0.5])).dtype is deers.f32
    assert (deers.ones(2, dtype=deers.f16) + deers.ones(2)).dtype is deers.f32
    assert (deers.tensor([1, 2]) / 2).dtype is deers.f32 and (deers.tensor([1, 2]) ** 2).dtype is deers.i64
    assert (deers.tensor([True, False]) + deers.tensor([True, True])).dtype is deers.bool_


@pytest.mark.parametrize("device", DEVICES)
def test_python_integers_wrap_into_narrower_integer_tensors_like_torch(device):
    x = deers.tensor([1, 2, 250], device=device).to_dtype(deers.u8)
    for fn in (lambda t: t + 1000, lambda t: t - 3, lambda t: t * 300, lambda t: t + 10):
        expected = fn(torch.tensor([1, 2, 250], dtype=torch.uint8))
        out = fn(x)
        assert out.dtype is deers.u8 and out.numpy().tolist() == expected.tolist()
    with pytest.raises(DTypeError, match="does not fit in i64"):
        deers.tensor([1]) + 2 ** 70


def test_gradients_flow_back_in_each_operands_dtype():
    a = deers.tensor([1.0, 2.0], dtype=deers.f16).attach()
    b = deers.tensor([3.0, 4.0]).attach()  # f32
    out = a * b
    assert out.dtype is deers.f32
    grads = out.sum().backward()
    assert grads[a].dtype is deers.f16 and grads[b].dtype is deers.f32
    np.testing.assert_array_equal(grads[a].numpy(), [3.0, 4.0])
    np.testing.assert_array_equal(grads[b].numpy(), [1.0, 2.0])


REFLECTED = {"7 // x": lambda x: 7 // x, "-7 % x": lambda x: -7 % x, "2.5 // x": lambda x: 2.5 // x,
             "5.5 % x": lambda x: 5.5 % x, "3 & x": lambda x: 3 & x, "True | x": lambda x: True | x,
             "6 ^ x": lambda x: 6 ^ x, "~x": lambda x: ~x}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(REFLECTED))
def test_the_number_first_forms_and_not_give_torchs_dtype_and_values(op, device):
    fn = REFLECTED[op]
    for dtype in DTYPES:
        _skip_unsupported(device, dtype)
        x, tx = _pair(dtype, "tensor", device, divisor=True)
        try:
            expected = fn(tx)
        except (RuntimeError, TypeError):  # torch refuses (~ of a float, // of bools)
            with pytest.raises(DTypeError):
                fn(x)
            continue
        out = fn(x)
        assert TORCH[out.dtype.name] == expected.dtype, (op, dtype)
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected.double().numpy(),
                                   rtol=1e-2 if out.dtype.is_half else 1e-6, err_msg=f"{op} {dtype}")


@pytest.mark.parametrize("device", DEVICES)
def test_floor_divide_and_remainder_round_like_python(device):
    """-7 // 2 is -4 and -7 % 2 is 1: the quotient rounds down and the remainder has the divisor's
    sign (C would truncate: -3 and -1); floats give the same, and 1 // 0.1 is 9 (not floor(10.0))
    except on mps, where MLX rounds the quotient first."""
    a, b = [7, -7, 7, -7, 0, 6], [2, 2, -2, -2, 3, -3]
    x, y = deers.tensor(a, device=device), deers.tensor(b, device=device)
    assert (x // y).numpy().tolist() == [p // q for p, q in zip(a, b)] == (torch.tensor(a) // torch.tensor(b)).tolist()
    assert (x % y).numpy().tolist() == [p % q for p, q in zip(a, b)]
    fx, fy = x.to_dtype(deers.f32), y.to_dtype(deers.f32)
    assert (fx // fy).numpy().tolist() == [float(p // q) for p, q in zip(a, b)]
    assert (fx % fy).numpy().tolist() == [float(p % q) for p, q in zip(a, b)]
    if device != "mps":  # MLX computes floor(1 / 0.1) = floor(10.0): the quotient is rounded first
        assert (deers.tensor([1.0], device=device) // 0.1).item() == torch.tensor([1.0]).floor_divide(0.1).item() == 9.0
    inf_nan = (deers.tensor([1.0, -1.0, 0.0], device=device) // 0.0).numpy()
    np.testing.assert_array_equal(inf_nan, (torch.tensor([1.0, -1.0, 0.0]) // 0.0).numpy())  # inf, -inf, nan
    assert np.isnan((deers.tensor([1.0], device=device) % 0.0).item())


@pytest.mark.parametrize("device", DEVICES)
def test_integer_division_by_zero_raises_like_pytorchs_cpu(device):
    """cpu and mps raise (mps reads the divisor on the host); cuda gives an unspecified value, as
    PyTorch's CUDA does."""
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        torch.tensor([1, 2]) // torch.tensor([0, 1])
    for fn in (lambda x: x // deers.tensor([0, 1], device=device), lambda x: x % deers.tensor([1, 0], device=device),
               lambda x: x // 0, lambda x: x % 0, lambda x: 5 // (x - 1), lambda x: x.to_dtype(deers.u8) % 0):
        with pytest.raises(ZeroDivisionError, match="integer division by zero"):
            fn(deers.tensor([1, 2], device=device)).numpy()


def test_remainder_has_pytorchs_gradient():
    a, b = deers.tensor([5.5, -5.5, 3.0]).attach(), deers.tensor([2.0, 2.0, -4.0]).attach()
    ta, tb = torch.tensor([5.5, -5.5, 3.0], requires_grad=True), torch.tensor([2.0, 2.0, -4.0], requires_grad=True)
    grads = (a % b * 3.0).sum().backward()
    (ta % tb * 3.0).sum().backward()
    np.testing.assert_array_equal(grads[a].numpy(), ta.grad.numpy())  # 1
    np.testing.assert_array_equal(grads[b].numpy(), tb.grad.numpy())  # -floor(a / b)


@pytest.mark.parametrize("device", DEVICES)
def test_bitwise_ops_on_integers_and_masks(device):
    x, y = deers.tensor([12, -3, 0, 255], device=device), deers.tensor([10, 5, -1, 1], device=device)
    tx, ty = torch.tensor([12, -3, 0, 255]), torch.tensor([10, 5, -1, 1])

    def u8(t):
        return t.to(torch.uint8) if isinstance(t, torch.Tensor) else t.to_dtype(deers.u8)

    for fn in (lambda p, q: p & q, lambda p, q: p | q, lambda p, q: p ^ q, lambda p, q: ~p,
               lambda p, q: u8(p) & 7, lambda p, q: ~u8(p), lambda p, q: u8(p) ^ q):
        out, expected = fn(x, y), fn(tx, ty)
        assert TORCH[out.dtype.name] == expected.dtype and out.numpy().tolist() == expected.tolist()
    m = deers.tensor([True, False, True, False], device=device)
    n = deers.tensor([True, True, False, False], device=device)
    assert (m & n).numpy().tolist() == [True, False, False, False] and (m & n).dtype is deers.bool_
    assert (m | n).numpy().tolist() == [True, True, True, False]
    assert (m ^ n).numpy().tolist() == [False, True, True, False]
    assert (~m).numpy().tolist() == [False, True, False, True] and (~m).dtype is deers.bool_
    assert (False | m).numpy().tolist() == [True, False, True, False] and (m & 1).dtype is deers.i64  # as torch
    assert x.logical_and(y).numpy().tolist() == [True, True, False, True] and x.logical_not().numpy().tolist() == [
        False, False, True, False]


def test_bitwise_ops_on_floats_name_the_op_and_operands():
    with pytest.raises(DTypeError, match=r"bitwise_and: needs integer or bool operands, got shape \(2,\) f32"):
        deers.tensor([1.0, 2.0]) & deers.tensor([3, 4])
    with pytest.raises(DTypeError, match=r"bitwise_or: .* the Python number 0.5"):
        deers.tensor([1, 2]) | 0.5
    with pytest.raises(DTypeError, match="bitwise_not: "):
        ~deers.tensor([1.0])
    with pytest.raises(TypeError, match="bitwise_xor: expected a Tensor or a Python number, got str"):
        deers.tensor([1]) ^ "1"


# ---- the same on the CUDA backend (its kernels emulated on the CPU, or a real GPU when present) ----------
@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    from cuda_emulator import cuda_backend_fixture

    yield from cuda_backend_fixture(request)


def test_promotion_on_cuda(cuda):
    for op in ("add", "mul", "div", "eq"):
        test_binary_ops_give_torchs_dtype_and_values_for_every_pair(op, ("tensor", "tensor"), "cuda")
        test_binary_ops_give_torchs_dtype_and_values_for_every_pair(op, ("tensor", "number"), "cuda")
    for op in ("floor_divide", "remainder", "and", "xor"):
        test_binary_ops_give_torchs_dtype_and_values_for_every_pair(op, ("tensor", "tensor"), "cuda")
        test_binary_ops_give_torchs_dtype_and_values_for_every_pair(op, ("tensor", "number"), "cuda")
    test_where_and_clamp_promote_like_torch("cuda")
    for op in sorted(REFLECTED):
        test_the_number_first_forms_and_not_give_torchs_dtype_and_values(op, "cuda")
    test_floor_divide_and_remainder_round_like_python("cuda")
    test_bitwise_ops_on_integers_and_masks("cuda")

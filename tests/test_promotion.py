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


def _values(dtype: deers.DType) -> list:
    return VALUES.get(dtype.name, FLOAT_VALUES)


def _pair(dtype, form: str, device: str):
    """The same operand in Deers and torch: a (3,) tensor, a 0-d tensor, or a Python number."""
    values = _values(dtype)
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
}


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
        y, ty = _pair(b, forms[1], device)
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


LOGICAL = {"and": lambda x, y: x & y, "or": lambda x, y: x | y, "xor": lambda x, y: x ^ y,
           "and number": lambda x, y: x & True, "or reflected": lambda x, y: False | x, "not": lambda x, y: ~x}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(LOGICAL))
def test_logical_ops_on_bool_masks_match_torch(op, device):
    a, b = [True, False, True, False], [True, True, False, False]
    out = LOGICAL[op](deers.tensor(a, device=device), deers.tensor(b, device=device))
    expected = LOGICAL[op](torch.tensor(a), torch.tensor(b))
    assert out.dtype is deers.bool_ and out.numpy().tolist() == expected.tolist()


def test_logical_ops_on_integers_say_they_need_bool_masks():
    with pytest.raises(DTypeError, match=r"and: Deers has these for bool tensors only, got shape \(2,\) i64"):
        deers.tensor([1, 2]) & deers.tensor([3, 4])
    with pytest.raises(DTypeError, match="not: "):
        ~deers.tensor([1, 2])


# ---- the same on the CUDA backend (its kernels emulated on the CPU, or a real GPU when present) ----------
@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    from cuda_emulator import cuda_backend_fixture

    yield from cuda_backend_fixture(request)


def test_promotion_on_cuda(cuda):
    for op in ("add", "mul", "div", "eq"):
        test_binary_ops_give_torchs_dtype_and_values_for_every_pair(op, ("tensor", "tensor"), "cuda")
        test_binary_ops_give_torchs_dtype_and_values_for_every_pair(op, ("tensor", "number"), "cuda")
    test_where_and_clamp_promote_like_torch("cuda")
    for op in sorted(LOGICAL):
        test_logical_ops_on_bool_masks_match_torch(op, "cuda")

"""The edge cases PyTorch's own per-op samples exercise (issue 29): each row gives PyTorch's answer
(value, dtype or error) on every device here, compared with torch where it is installed and with a
NumPy or hand-computed expectation otherwise. Differentiable new paths also go through check_op
(finite differences in f64, and torch)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import deers
from deers.errors import DeersError, ShapeError
from deers.ops.special import erf, erfc
from devices import DEVICES
from helpers import check_op

try:
    import torch
except ImportError:
    torch = None


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, deers.Tensor) else np.asarray(x)


# ---- erf, erfc and the exact GELU: accurate to the dtype's rounding, f64 included ----------------------
@pytest.mark.parametrize("device", DEVICES)
def test_erf_and_erfc_match_math_to_the_dtype_rounding(device):
    z = np.concatenate([np.linspace(-7, 7, 2801), [0.0, -1e-12, 0.4999999, 0.5, 30.0, np.inf, -np.inf]])
    want_erf = np.array([math.erf(v) for v in z])
    want_erfc = np.array([math.erfc(v) for v in z])
    if device != "mps":  # MLX computes in f32 at most
        x = deers.tensor(z, device=device).data  # f64
        np.testing.assert_allclose(erf(x).numpy(), want_erf, rtol=1e-15, atol=3e-16)
        np.testing.assert_allclose(erfc(x).numpy(), want_erfc, rtol=2e-14, atol=1e-300)  # rtol: exp(-z^2) of a rounded z^2
    x32 = deers.tensor(z.astype(np.float32), device=device).data
    z32 = z.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(erf(x32).numpy(), [math.erf(v) for v in z32], atol=3e-7)
    np.testing.assert_allclose(erfc(x32).numpy(), [math.erfc(v) for v in z32], rtol=1e-5, atol=1e-30)
    assert np.isnan(erf(deers.tensor([math.nan], device=device).data).numpy()).all()


def test_exact_gelu_in_f64_has_f64_accuracy_value_and_gradient():
    x = np.linspace(-9, 9, 361)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    xt = deers.tensor(x).attach()
    y = deers.nn.gelu(xt)
    np.testing.assert_allclose(y.numpy(), x * cdf, rtol=3e-14, atol=1e-300)  # exp(-x^2 / 2) of a rounded x^2
    np.testing.assert_allclose(y.sum().backward()[xt].numpy(), cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
                               rtol=3e-14, atol=1e-16)
    check_op(lambda v: deers.nn.gelu(v) if isinstance(v, deers.Tensor) else torch.nn.functional.gelu(v),
             np.random.default_rng(0).standard_normal((3, 4)) * 3, atol=1e-15, rtol=1e-14)


# ---- the defects: answers PyTorch does not give --------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_a_dim_named_twice_raises_and_an_empty_dim_tuple_reduces_everything(device):
    x = deers.tensor(np.arange(24.0).reshape(2, 3, 4), dtype="f32", device=device)
    for reduce in (lambda v, d: v.sum(dim=d), lambda v, d: v.mean(dim=d), lambda v, d: v.amax(dim=d),
                   lambda v, d: v.amin(dim=d), lambda v, d: v.var(dim=d), lambda v, d: v.logsumexp(dim=d),
                   lambda v, d: v.norm(dim=d)):
        with pytest.raises(ShapeError, match="appears more than once"):
            reduce(x, (0, -3))
        with pytest.raises(ShapeError, match="dim 1 appears"):
            reduce(x, [1, 1])
    a = np.arange(24.0).reshape(2, 3, 4)
    for name, want in [("sum", a.sum()), ("mean", a.mean()), ("amax", a.max()), ("amin", a.min()),
                       ("var", a.var(ddof=1)), ("std", a.std(ddof=1)), ("norm", np.sqrt((a * a).sum()))]:
        out = getattr(x, name)(dim=())
        assert out.shape == () and out.dtype is deers.f32, name
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, err_msg=name)
    assert deers.tensor(2.0, device=device).sum(dim=()).shape == ()
    if torch is not None:
        t = torch.arange(24.0).reshape(2, 3, 4)
        np.testing.assert_allclose(x.sum(dim=()).numpy(), t.sum(dim=()).numpy())
        with pytest.raises(RuntimeError, match="appears multiple times"):
            t.amax(dim=(0, -3))


@pytest.mark.parametrize("device", DEVICES)
def test_masked_fill_takes_a_number_or_a_0d_value_and_a_bool_mask(device):
    x = deers.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], device=device)
    mask = deers.tensor([True, False, True], device=device)
    with pytest.raises(ShapeError, match="masked_fill: value must be a Python number or a 0-d tensor"):
        x.masked_fill(mask, deers.tensor([9.0], device=device))
    with pytest.raises(DeersError, match="masked_fill: mask must be a bool tensor"):
        x.masked_fill(deers.tensor([1, 0, 1], device=device), 9.0)
    np.testing.assert_array_equal(x.masked_fill(mask, deers.tensor(9.0, device=device)).numpy(),
                                  [[9, 2, 9], [9, 5, 9]])
    ints = deers.tensor([1, 2, 3], device=device).masked_fill(mask, 0.5)  # cast to x's dtype, as PyTorch
    assert ints.dtype is deers.i64 and ints.tolist() == [0, 2, 0]
    halfs = x.masked_fill(mask, deers.tensor(0.5, dtype="f64", device=device))
    assert halfs.dtype is deers.f32
    assert x.masked_fill(deers.tensor([[True], [False]], device=device).broadcast_to(2, 3), 0.0).shape == (2, 3)
    if torch is not None:
        t = torch.tensor([1, 2, 3]).masked_fill(torch.tensor([True, False, True]), 0.5)
        assert t.tolist() == ints.tolist()
        with pytest.raises(RuntimeError, match="0-dimensional value"):
            torch.zeros(3).masked_fill(torch.tensor([True, False, True]), torch.tensor([1.0]))


def test_masked_fill_gradient_reaches_x_and_a_0d_value():
    mask = np.array([[True, False, False], [False, True, True]])
    check_op(lambda x, m, v: x.masked_fill(m, v[0, 0].reshape(())), np.random.default_rng(1).standard_normal((2, 3)),
             mask, np.array([[0.7]]), layouts=("contiguous", "permuted"),
             reference=lambda x, m, v: np.where(m, v[0, 0], x))


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_needs_a_2d_weight_and_takes_padding_idx(device):
    with pytest.raises(ShapeError, match="embedding: weight must be 2-D"):
        deers.embedding(deers.zeros(3, 4, 5, device=device), deers.tensor([0, 1], device=device))
    with pytest.raises(IndexError, match="padding_idx"):
        deers.embedding(deers.zeros(3, 4, device=device), deers.tensor([0], device=device), padding_idx=3)
    w = deers.tensor(np.arange(12.0).reshape(4, 3), device=device).attach()
    ids = deers.tensor([[0, 2, 2], [3, 2, 1]], device=device)
    out = deers.embedding(w, ids, padding_idx=-2)
    np.testing.assert_array_equal(out.numpy(), np.arange(12.0).reshape(4, 3)[ids.numpy()])
    grad = out.sum().backward()[w].numpy()
    np.testing.assert_array_equal(grad[:, 0], [1, 1, 0, 1])  # row 2 (= -2) is padding: no gradient
    layer = deers.nn.Embedding(5, 2, padding_idx=1, device=device)
    assert (layer.weight.numpy()[1] == 0).all() and (layer.weight.numpy()[0] != 0).any()
    assert "padding_idx=1" in repr(layer)
    if torch is not None:
        wt = torch.arange(12.0).reshape(4, 3).requires_grad_()
        torch.nn.functional.embedding(torch.tensor(ids.numpy()), wt, padding_idx=-2).sum().backward()
        np.testing.assert_array_equal(grad, wt.grad.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_max_and_min_of_two_tensors_are_element_wise(device):
    a = deers.tensor([[1.0, 5.0, -2.0]], device=device)
    b = deers.tensor([[3.0], [0.0]], device=device)
    np.testing.assert_array_equal(a.max(b).numpy(), np.maximum(a.numpy(), b.numpy()))
    np.testing.assert_array_equal(deers.min(a, b).numpy(), np.minimum(a.numpy(), b.numpy()))
    assert deers.tensor(0.5, device=device).max(deers.tensor(0.7, device=device)).item() == pytest.approx(0.7)
    mixed = deers.max(deers.tensor([1, 4], device=device), deers.tensor([2.5, 0.5], device=device))
    assert mixed.dtype is deers.f32 and mixed.tolist() == [2.5, 4.0]
    values, indices = deers.max(a, 1)  # the reduction forms are unchanged
    assert values.tolist() == [5.0] and indices.tolist() == [1]
    with pytest.raises(TypeError, match="keepdim"):
        a.max(b, True)
    if torch is not None:
        assert torch.max(torch.tensor([1, 4]), torch.tensor([2.5, 0.5])).dtype == torch.float32


def test_max_of_two_tensors_gradient():
    rng = np.random.default_rng(2)
    check_op(lambda a, b: a.max(b) * 1.0, rng.standard_normal((3, 4)), rng.standard_normal(4),
             layouts=("contiguous", "permuted"), reference=np.maximum)
    check_op(lambda a, b: a.min(b) * 1.0, rng.standard_normal((3, 4)), rng.standard_normal((3, 1)),
             layouts=("contiguous",), reference=np.minimum)


@pytest.mark.parametrize("device", DEVICES)
def test_var_reads_a_bool_as_unbiased_and_correction_none_as_one(device):
    a = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    x = deers.tensor(a, device=device)
    np.testing.assert_allclose(x.var(True).numpy(), a.var(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(x.var(False).numpy(), a.var(), rtol=1e-5)
    np.testing.assert_allclose(x.std(False).numpy(), a.std(), rtol=1e-5)
    np.testing.assert_allclose(x.var(1, False).numpy(), a.var(1), rtol=1e-5)
    np.testing.assert_allclose(x.var(1, True, True).numpy(), a.var(1, ddof=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(x.var(correction=None).numpy(), a.var(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(x.std(0, correction=None).numpy(), a.std(0, ddof=1), rtol=1e-5)
    if torch is not None:
        t = torch.tensor(a)
        for ours, theirs in [(x.var(True), t.var(True)), (x.var(False), t.var(False)), (x.var(1, False), t.var(1, False)),
                             (x.std(correction=None), t.std(correction=None))]:
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5)

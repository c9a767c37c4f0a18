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


# ---- cross_entropy and nll_loss in PyTorch's forms ------------------------------------------------------
def _np_cross_entropy(x, t, w=None, reduction="mean", s=0.0, log_probs=False, ignore=-100):
    """NumPy reference: x (N, C, d...) or (C,); t indices (N, d...) / () or probabilities like x."""
    x = np.moveaxis(x[None] if x.ndim == 1 else x, 1, -1)  # (N, d..., C)
    lq = x if log_probs else x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    c = x.shape[-1]
    w = np.ones(c) if w is None else w
    if t.dtype.kind == "f":
        p = np.moveaxis(t[None] if t.ndim == 1 else t, 1, -1) * (1 - s) + s / c
        per = -(lq * p * w).sum(-1)
        out = {"none": per, "sum": per.sum(), "mean": per.sum() / per.size}[reduction]
    else:
        t = t[None] if t.ndim == 0 else t
        valid = t != ignore
        safe = np.where(valid, t, 0)
        wt = np.where(valid, w[safe], 0.0)
        per = -np.take_along_axis(lq, safe[..., None], -1)[..., 0] * wt * (1 - s) - np.where(valid, (lq * w).sum(-1), 0) * s / c
        out = {"none": per, "sum": per.sum(), "mean": per.sum() / wt.sum()}[reduction]
    return out.reshape(()) if reduction == "none" and per.shape == (1,) else out


def _ce(lib_fn, x, t, **kw):
    """Call cross_entropy / nll_loss in Deers or torch; a `weight` array becomes a tensor of that library."""
    if "weight" in kw:
        kw["weight"] = (torch.tensor if torch is not None and isinstance(x, torch.Tensor) else deers.tensor)(kw["weight"])
    if torch is not None and isinstance(x, torch.Tensor):
        return getattr(torch.nn.functional, lib_fn)(x, t, **kw)
    return getattr(deers.loss, lib_fn)(x, t, **kw)


CE_CASES = {
    "(N, C, d1, d2) indices": ((2, 4, 3, 2), "index"),
    "(C,) unbatched": ((5,), "index"),
    "(N, C) probabilities": ((3, 4), "prob"),
    "(N, C, d) probabilities": ((2, 3, 4), "prob"),
    "(C,) unbatched probabilities": ((4,), "prob"),
}


def _ce_data(shape, kind, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    classes = shape[0] if len(shape) == 1 else shape[1]
    if kind == "prob":
        t = rng.random(shape)
        t = t / t.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    else:
        t = rng.integers(0, classes, shape[:1] + shape[2:] if len(shape) > 1 else ())
        if t.ndim:
            t.reshape(-1)[0] = -100
    return x, t, rng.random(classes) + 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CE_CASES))
def test_cross_entropy_and_nll_take_pytorchs_forms(case, device):
    shape, kind = CE_CASES[case]
    x, t, w = _ce_data(shape, kind)
    dtype = "f32" if device == "mps" else "f64"
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "f32" else dict(rtol=1e-12, atol=1e-13)
    xt, tt = deers.tensor(x, dtype=dtype, device=device), deers.tensor(t, dtype=dtype if kind == "prob" else "i64", device=device)
    for reduction in ("mean", "sum", "none"):
        for kw in ({}, {"weight": w}, {"label_smoothing": 0.1}, {"weight": w, "label_smoothing": 0.3}):
            kw_d = dict(kw, reduction=reduction)
            if "weight" in kw:
                kw_d["weight"] = deers.tensor(w, dtype=dtype, device=device)
            ours = deers.loss.cross_entropy(xt, tt, **kw_d)
            want = _np_cross_entropy(x, t, kw.get("weight"), reduction, kw.get("label_smoothing", 0.0))
            assert ours.shape == np.shape(want), (case, reduction, kw)
            np.testing.assert_allclose(ours.numpy(), want, **tol, err_msg=f"{case} {reduction} {kw}")
            if torch is not None:
                theirs = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t), reduction=reduction,
                                                           **{k: torch.tensor(v) if k == "weight" else v for k, v in kw.items()})
                np.testing.assert_allclose(ours.numpy(), theirs.numpy(), **tol)
            if kind == "index" and "label_smoothing" not in kw:
                lq = xt.log_softmax(dim=0 if len(shape) == 1 else 1)
                ours = deers.loss.nll_loss(lq, tt, **kw_d)
                np.testing.assert_allclose(ours.numpy(), _np_cross_entropy(lq.numpy().astype(np.float64), t, kw.get("weight"),
                                                                           reduction, log_probs=True), **tol)


@pytest.mark.parametrize("case", sorted(CE_CASES))
def test_cross_entropy_new_forms_gradients(case):
    """Finite differences in f64 and torch, for the logits, the probability targets and with weight=."""
    shape, kind = CE_CASES[case]
    x, t, w = _ce_data(shape, kind, seed=1)
    for kw in ({"weight": w, "label_smoothing": 0.2}, {"reduction": "none"}):
        check_op(lambda a, b: _ce("cross_entropy", a, b, **kw), x, t, layouts=("contiguous", "permuted"))
    if kind == "index":
        lq = np.log(np.exp(x) / np.exp(x).sum(axis=0 if len(shape) == 1 else 1, keepdims=True))
        check_op(lambda a, b: _ce("nll_loss", a, b, weight=w), lq, t, layouts=("contiguous",))


def test_cross_entropy_form_errors():
    x = deers.zeros(2, 5, 5)
    with pytest.raises(ShapeError, match=r"fit both the classes at dim 1.*reshape to \(N, C\)"):
        deers.loss.cross_entropy(x, deers.zeros(2, 5, dtype="i64"))
    assert deers.loss.cross_entropy(deers.zeros(2, 5, 4), deers.zeros(2, 5, dtype="i64"), reduction="none").shape == (2, 5)
    assert deers.loss.cross_entropy(deers.zeros(2, 5, 4), deers.zeros(2, 4, dtype="i64"), reduction="none").shape == (2, 4)
    with pytest.raises(ShapeError, match=r"cross_entropy: expected scores \(N, C\)"):
        deers.loss.cross_entropy(deers.zeros(2, 5, 4), deers.zeros(3, dtype="i64"))
    with pytest.raises(ShapeError, match=r"weight must have one entry per class, shape \(5,\)"):
        deers.loss.cross_entropy(deers.zeros(3, 5), deers.zeros(3, dtype="i64"), weight=deers.ones(4))
    with pytest.raises(DeersError, match="weight .* must have the scores' dtype"):
        deers.loss.nll_loss(deers.zeros(3, 5), deers.zeros(3, dtype="i64"), weight=deers.ones(5, dtype="f64"))
    with pytest.raises(ValueError, match="ignore_index=0 is for class indices"):
        deers.loss.cross_entropy(deers.zeros(3, 5), deers.ones(3, 5), ignore_index=0)
    with pytest.raises(DeersError, match=r"nll_loss: targets must be i64 class indices"):
        deers.loss.nll_loss(deers.zeros(3, 5), deers.ones(3, 5))
    everything_ignored = deers.loss.nll_loss(deers.zeros(3, 5), deers.full((3,), -100, dtype="i64"), weight=deers.ones(5))
    assert math.isnan(everything_ignored.item())  # 0 / 0, as in PyTorch


# ---- groups of valid input that used to raise ------------------------------------------------------------
def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("p, dim, keepdim", [(-1, None, False), (-2, 1, True), (-0.5, (0, 2), False), (3, -1, False),
                                             ("nuc", (1, 2), False), ("nuc", (2, 0), True)])
def test_norm_with_negative_p_and_nuc(p, dim, keepdim):
    check_op(lambda x: x.norm(p, dim, keepdim), _rand(2, 3, 4) + 0.1, layouts=("contiguous", "permuted"))


@pytest.mark.parametrize("device", DEVICES)
def test_norm_forms_on_devices(device):
    a = np.array([[3.0, 0.0], [0.0, -4.0]], np.float32)
    x = deers.tensor(a, device=device)
    assert x.norm("nuc").item() == pytest.approx(7.0, rel=1e-6)
    assert x.norm(-1).item() == 0.0  # a zero makes sum |x|^-1 infinite: the norm is 0, as in PyTorch
    np.testing.assert_allclose(deers.tensor([[1.0, 2.0], [1.0, -2.0]], device=device).norm(-1, dim=0).numpy(), [0.5, 1.0])
    with pytest.raises(ShapeError, match="p='nuc' is a matrix norm"):
        deers.zeros(2, 3, 4, device=device).norm("nuc")
    with pytest.raises(ValueError, match="'fro' or 'nuc'"):
        x.norm("max")


@pytest.mark.parametrize("device", DEVICES)
def test_squeeze_with_a_tuple_and_narrow_with_a_0d_start(device):
    x = deers.zeros(1, 3, 1, device=device)
    assert x.squeeze((0, 2)).shape == (3,) and x.squeeze([0, 1]).shape == (3, 1) and x.squeeze((-1,)).shape == (1, 3)
    with pytest.raises(ShapeError, match="more than once"):
        x.squeeze((0, 0))
    y = deers.tensor(np.arange(12.0).reshape(3, 4), device=device)
    np.testing.assert_array_equal(y.narrow(1, deers.tensor(1, device=device), 2).numpy(), np.arange(12.0).reshape(3, 4)[:, 1:3])
    np.testing.assert_array_equal(y.narrow(0, deers.tensor(-1), 1).numpy(), [[8.0, 9.0, 10.0, 11.0]])
    for bad in (deers.tensor([1]), deers.tensor(1.0)):
        with pytest.raises(TypeError, match="narrow: start must be an int or a 0-d integer tensor"):
            y.narrow(1, bad, 2)
    if torch is not None:
        assert tuple(torch.zeros(1, 3, 1).squeeze((0, 2)).shape) == (3,)
        assert torch.arange(12.0).reshape(3, 4).narrow(1, torch.tensor(1), 2).tolist() == y.narrow(1, deers.tensor(1), 2).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_zero_size_tensors(device):
    for shape, dim in [((5, 0, 0), 1), ((5, 0, 0), -1), ((0,), 0), ((3, 0), 1), ((0, 3), 0)]:
        for name in ("softmax", "log_softmax"):
            x = deers.zeros(*shape, device=device).attach()
            out = getattr(x, name)(dim)
            assert out.shape == shape and out.dtype is deers.f32
            assert out.backward(deers.zeros(*shape, device=device))[x].shape == shape
    a, b = deers.zeros(5, 5, 0, device=device).attach(), deers.zeros(0, 5, device=device).attach()
    product = a @ b
    assert product.shape == (5, 5, 5) and (product.numpy() == 0).all()  # an empty sum is 0
    grads = product.sum().backward()
    assert grads[a].shape == (5, 5, 0) and grads[b].shape == (0, 5)
    joined = deers.cat([deers.zeros(0, dtype="f64", device=device), deers.ones(2, 3, device=device)])
    assert joined.shape == (2, 3) and joined.dtype is deers.f64  # the skipped legacy (0,) still promotes
    assert deers.cat([deers.zeros(0, device=device), deers.ones(2, 3, device=device)], 1).shape == (2, 3)
    assert deers.cat([deers.zeros(0, device=device), deers.zeros(0, device=device)]).shape == (0,)
    x = deers.ones(3, 4, device=device).attach()
    for index_shape in [(0,), (3, 0), (0, 5)]:
        out = x.gather(1, deers.zeros(*index_shape, dtype="i64", device=device))
        assert out.shape == index_shape
        assert (out.sum().backward()[x].numpy() == 0).all()
    if torch is not None:
        assert tuple(torch.cat([torch.zeros(0, dtype=torch.float64), torch.ones(2, 3)]).shape) == (2, 3)
        assert tuple(torch.ones(3, 4).gather(1, torch.zeros(0, 5, dtype=torch.long)).shape) == (0, 5)
        assert tuple((torch.zeros(5, 5, 0) @ torch.zeros(0, 5)).shape) == (5, 5, 5)


EINSUM_NEW = [
    ("...ij->...ji", [(2, 3, 4)]),
    ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]),
    ("bii->bi", [(2, 3, 3)]),
    ("ij,ij->ij", [(3, 1), (1, 4)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (3, 4, 2)]),
    ("i,i,i", [(3,), (3,), (3,)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("ij...,jk...->ik...", [(2, 3, 2), (3, 4, 2)]),
    ("iji->j", [(3, 2, 3)]),
]


@pytest.mark.parametrize("equation, shapes", EINSUM_NEW, ids=[e[0] for e in EINSUM_NEW])
def test_einsum_with_ellipsis_diagonals_broadcasting_and_more_operands(equation, shapes):
    arrays = [_rand(*s, seed=i) for i, s in enumerate(shapes)]
    einsum = lambda *xs: (torch if torch is not None and isinstance(xs[0], torch.Tensor) else deers).einsum(equation, *xs)  # noqa: E731
    check_op(einsum, *arrays, reference=lambda *xs: np.einsum(equation, *xs), layouts=("contiguous", "permuted"))


@pytest.mark.parametrize("device", DEVICES)
def test_einsum_new_forms_on_devices(device):
    a = _rand(2, 3, 3).astype(np.float32)
    ours = deers.einsum("...ii->...i", deers.tensor(a, device=device))
    np.testing.assert_allclose(ours.numpy(), np.einsum("...ii->...i", a), rtol=1e-6)


# ---- keyword arguments people type -----------------------------------------------------------------------
DIV_A = np.array([-7, 7, -6, 6, 5, -5, 0, 9])
DIV_B = np.array([2, 2, -3, -4, -2, 3, 3, -1])
DIV_WANT = {"trunc": np.trunc(DIV_A / DIV_B), "floor": np.floor_divide(DIV_A, DIV_B)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["trunc", "floor"])
def test_div_rounding_mode(mode, device):
    for dtype in ("i64", "f32"):
        a, b = deers.tensor(DIV_A, dtype=dtype, device=device), deers.tensor(DIV_B, dtype=dtype, device=device)
        out = a.div(b, rounding_mode=mode)
        assert out.dtype.name == dtype
        np.testing.assert_array_equal(out.numpy(), DIV_WANT[mode])
        by_number = np.trunc(DIV_A / -2) if mode == "trunc" else np.floor_divide(DIV_A, -2)
        np.testing.assert_array_equal(a.div(-2, rounding_mode=mode).numpy(), by_number)
        if torch is not None:
            t = torch.tensor(DIV_A).to(torch.float32 if dtype == "f32" else torch.int64)
            assert out.tolist() == t.div(torch.tensor(DIV_B).to(t.dtype), rounding_mode=mode).tolist()
    x = deers.tensor([2.5, -2.5], device=device).attach()
    assert x.div(2, rounding_mode=mode).requires_grad is False  # piecewise constant: no gradient flows
    assert x.div(2).dtype is deers.f32 and deers.tensor([3, 4]).div(2).tolist() == [1.5, 2.0]
    with pytest.raises(ValueError, match="div: rounding_mode must be None, 'trunc' or 'floor'"):
        x.div(2, rounding_mode="round")


@pytest.mark.parametrize("device", DEVICES)
def test_add_and_sub_take_alpha(device):
    a, b = deers.tensor([1.0, 2.0], device=device), deers.tensor([10.0, 20.0], device=device)
    assert a.add(b, alpha=2).tolist() == [21.0, 42.0] and a.sub(b, alpha=0.5).tolist() == [-4.0, -8.0]
    assert a.sub(3.0, alpha=2).tolist() == [-5.0, -4.0]
    ints = deers.tensor([1, 2], device=device)
    assert ints.add(ints, alpha=3).tolist() == [4, 8] and ints.add(ints, alpha=3).dtype is deers.i64
    with pytest.raises(DeersError, match="add: alpha=0.5 is a float but the result is i64"):
        ints.add(ints, alpha=0.5)
    flags = deers.tensor([True, False], device=device)
    assert flags.add(flags, alpha=2).dtype is deers.bool_
    if torch is not None:
        assert torch.tensor([1, 2]).add(torch.tensor([1, 2]), alpha=3).tolist() == [4, 8]
    check_op(lambda x, y: x.sub(y, alpha=-1.5), _rand(3, 4), _rand(4, seed=1), layouts=("contiguous",),
             reference=lambda x, y: x + 1.5 * y)


@pytest.mark.parametrize("device", DEVICES)
def test_dtype_keyword_on_softmax_log_softmax_cumsum_sum_mean(device):
    ints = deers.tensor([1, 2, 3], device=device)
    soft = ints.softmax(0, dtype=deers.f32)
    assert soft.dtype is deers.f32
    np.testing.assert_allclose(soft.numpy(), np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-6)
    assert ints.log_softmax(-1, dtype="f32").dtype is deers.f32
    assert ints.cumsum(0, dtype=deers.f32).tolist() == [1.0, 3.0, 6.0]
    assert deers.tensor([1.5, 2.0], device=device).cumsum(0, dtype="i64").tolist() == [1, 3]
    assert ints.sum(dtype="f32").dtype is deers.f32 and ints.mean(dtype=deers.f32).item() == pytest.approx(2.0)
    assert deers.tensor([1.5, 2.5], device=device).sum(dtype="i64").item() == 3  # cast first, then summed
    with pytest.raises(DeersError, match="softmax"):
        deers.ones(2, device=device).softmax(0, dtype="i64")
    if torch is not None:
        assert torch.tensor([1.5, 2.0]).cumsum(0, dtype=torch.long).tolist() == [1, 3]
    if device != "mps":
        check_op(lambda x: x.float().softmax(1, dtype=deers.f64 if isinstance(x, deers.Tensor) else torch.float64),
                 _rand(2, 3), layouts=("contiguous",), atol=1e-6, grad_atol=1e-4, eps=1e-3)


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)], ids=str)
def test_layer_norm_over_trailing_dims(shape):
    x = _rand(2, 5, *shape) if len(shape) < 3 else _rand(2, *shape)
    weight, bias = _rand(*shape, seed=1), _rand(*shape, seed=2)

    def fn(x, w, b):
        if isinstance(x, deers.Tensor):
            return deers.nn.layer_norm(x, shape, w, b, eps=1e-5)
        return torch.nn.functional.layer_norm(x, shape, w, b, eps=1e-5)

    def reference(x, w, b):
        dims = tuple(range(x.ndim - len(shape), x.ndim))
        centered = x - x.mean(dims, keepdims=True)
        return centered / np.sqrt((centered ** 2).mean(dims, keepdims=True) + 1e-5) * w + b

    check_op(fn, x, weight, bias, reference=reference, layouts=("contiguous", "permuted"), atol=1e-10)
    layer = deers.nn.LayerNorm(shape, dtype="f64")
    assert layer.weight.shape == shape and layer(deers.tensor(x)).shape == x.shape
    with pytest.raises(ShapeError, match="must end in"):
        layer(deers.zeros(2, 7))


# ---- past the list: more of PyTorch's edge cases -------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_integer_powers_with_negative_exponents(device):
    exponents = [-3, -2, -1, 0, 1, 2, 3]
    for base in (-2, -1, 0, 1, 2):
        # PyTorch: 1 / base^|e| rounded toward zero: 1 for base 1, +-1 for base -1, else 0
        want = [int(base ** e) if e >= 0 else (1 if base == 1 else (-1) ** (-e) if base == -1 else 0) for e in exponents]
        out = deers.tensor(base, device=device) ** deers.tensor(exponents, device=device)
        assert out.dtype is deers.i64 and out.tolist() == want, base
        assert (base ** deers.tensor(exponents, device=device)).tolist() == want
        if torch is not None:
            assert (torch.tensor(base) ** torch.tensor(exponents)).tolist() == want
    with pytest.raises(DeersError, match="pow: an integer tensor .* to the negative power -1"):
        deers.tensor([2, 3], device=device) ** -1
    assert (deers.tensor([2.0, 4.0], device=device) ** -1).tolist() == [0.5, 0.25]


@pytest.mark.parametrize("device", DEVICES)
def test_chunk_of_an_empty_dim_tril_of_bool_logsumexp_of_nothing(device):
    pieces = deers.zeros(2, 0, device=device).chunk(3, 1)
    assert len(pieces) == 3 and all(p.shape == (2, 0) for p in pieces)
    mask = deers.ones(2, 3, dtype="bool", device=device)
    assert mask.tril().dtype is deers.bool_ and mask.triu(1).tolist() == [[False, True, True], [False, False, True]]
    empty = deers.zeros(2, 0, device=device)
    assert empty.logsumexp(1).tolist() == [-math.inf, -math.inf] and empty.logsumexp(0).shape == (0,)
    if torch is not None:
        assert len(torch.zeros(2, 0).chunk(3, 1)) == 3
        assert torch.ones(2, 3, dtype=torch.bool).tril().dtype == torch.bool
        assert torch.zeros(2, 0).logsumexp(1).tolist() == [-math.inf, -math.inf]


@pytest.mark.parametrize("device", DEVICES)
def test_argmax_keepdim_index_select_0d_and_bool_dims(device):
    x = deers.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]], device=device)
    assert x.argmax(keepdim=True).shape == (1, 1) and x.argmax(keepdim=True).tolist() == [[3]]
    assert x.argmin(keepdim=True).tolist() == [[4]] and x.argmax().shape == ()
    picked = x.index_select(0, deers.tensor(1, device=device))  # a 0-d index is one index: (1, 3)
    assert picked.shape == (1, 3) and picked.tolist() == [[7.0, 0.0, 3.0]]
    assert x[deers.tensor(1, device=device)].shape == (3,)  # indexing with a 0-d tensor drops the dim, like x[1]
    assert deers.embedding(x, deers.tensor(0, device=device)).shape == (3,)
    with pytest.raises(TypeError, match="sum: dim must be an int or a tuple of ints, got True"):
        x.sum(True)
    if torch is not None:
        t = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
        assert tuple(t.argmax(keepdim=True).shape) == (1, 1) and tuple(t.index_select(0, torch.tensor(1)).shape) == (1, 3)
        with pytest.raises(TypeError):
            t.sum(True)


@pytest.mark.parametrize("device", DEVICES)
def test_dtype_rules_of_alpha_trunc_bool_pow_and_fill(device):
    small = deers.tensor([1, 2, 3], dtype="u8", device=device)
    flags = deers.tensor([True, False, True], device=device)
    assert small.add(flags, alpha=2).dtype is deers.u8  # alpha * b is formed in the result's dtype
    assert small.add(flags, alpha=2).tolist() == [3, 2, 5]
    with pytest.raises(DeersError, match="sub: subtraction with a bool operand"):
        small.sub(True, alpha=3)
    inf = deers.tensor([1.0, -1.0, 0.0, 7.0], device=device).div(deers.tensor([0.0, 0.0, 0.0, 2.0], device=device),
                                                                   rounding_mode="trunc")
    assert inf.numpy()[:2].tolist() == [math.inf, -math.inf] and math.isnan(inf.numpy()[2]) and inf.numpy()[3] == 3.0
    assert small.div(-1, rounding_mode="trunc").tolist() == [0, 0, 0]  # -1 wraps to 255 in u8, as the divisor
    assert (flags ** True).tolist() == [True, False, True] and (flags ** False).tolist() == [True, True, True]
    filled = deers.zeros(3, dtype="u8", device=device).fill_(-1)
    assert filled.tolist() == [255, 255, 255]  # wraps, as PyTorch
    assert deers.zeros(2, dtype="i64", device=device).fill_(2.7).tolist() == [2, 2]  # rounds toward zero
    if torch is not None:
        assert torch.tensor([1, 2, 3], dtype=torch.uint8).add(torch.tensor([True, False, True]), alpha=2).dtype == torch.uint8
        assert torch.zeros(3, dtype=torch.uint8).fill_(-1).tolist() == [255, 255, 255]
        assert torch.zeros(2, dtype=torch.long).fill_(2.7).tolist() == [2, 2]
        assert torch.tensor([1.0, -1.0]).div(torch.tensor([0.0, 0.0]), rounding_mode="trunc").tolist() == [math.inf, -math.inf]


def test_pytorch_keyword_names_of_shape_methods():
    x = deers.tensor(np.arange(6.0).reshape(2, 3))
    assert x.permute(dims=(1, 0)).shape == (3, 2) and x.reshape(shape=(-1,)).shape == (6,)
    assert x.expand(size=(4, 2, 3)).shape == (4, 2, 3) and x.flip(dims=(0,)).tolist() == [[3, 4, 5], [0, 1, 2]]
    assert x.max(other=x * 2).tolist() == (x * 2).tolist() and x.min(other=x * 2).tolist() == x.tolist()
    with pytest.raises(TypeError, match="permute: give the dims either positionally or as dims=, not both"):
        x.permute(1, 0, dims=(1, 0))
    if torch is not None:
        t = torch.arange(6.0).reshape(2, 3)
        assert t.permute(dims=(1, 0)).shape == (3, 2) and t.max(other=t * 2).tolist() == (x * 2).tolist()


# ---- the same rows on the CUDA backend (its kernels emulated on the CPU, or a real GPU when present) -------
@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    from cuda_emulator import cuda_backend_fixture

    yield from cuda_backend_fixture(request)


def test_the_edge_cases_on_cuda(cuda):
    test_erf_and_erfc_match_math_to_the_dtype_rounding("cuda")
    test_a_dim_named_twice_raises_and_an_empty_dim_tuple_reduces_everything("cuda")
    test_masked_fill_takes_a_number_or_a_0d_value_and_a_bool_mask("cuda")
    test_embedding_needs_a_2d_weight_and_takes_padding_idx("cuda")
    test_max_and_min_of_two_tensors_are_element_wise("cuda")
    test_var_reads_a_bool_as_unbiased_and_correction_none_as_one("cuda")
    for case in sorted(CE_CASES):
        test_cross_entropy_and_nll_take_pytorchs_forms(case, "cuda")
    test_norm_forms_on_devices("cuda")
    test_squeeze_with_a_tuple_and_narrow_with_a_0d_start("cuda")
    test_zero_size_tensors("cuda")
    test_einsum_new_forms_on_devices("cuda")
    for mode in ("trunc", "floor"):
        test_div_rounding_mode(mode, "cuda")
    test_add_and_sub_take_alpha("cuda")
    test_dtype_keyword_on_softmax_log_softmax_cumsum_sum_mean("cuda")
    # integer powers are not run: the CUDA backend has no integer pow kernel (it raises a TypeError)
    test_chunk_of_an_empty_dim_tril_of_bool_logsumexp_of_nothing("cuda")
    test_argmax_keepdim_index_select_0d_and_bool_dims("cuda")
    test_dtype_rules_of_alpha_trunc_bool_pow_and_fill("cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_bool_and_u8_unary_and_power_follow_pytorch(device):
    b = deers.tensor([True, False], device=device)
    assert b.sign().dtype is deers.bool_ and b.sign().numpy().tolist() == [True, False]
    assert b.square().dtype is deers.i64 and b.square().numpy().tolist() == [1, 0]
    for name in ("relu", "abs"):  # PyTorch: not implemented for Bool
        with pytest.raises(DeersError, match=f"{name}: not defined for a bool tensor"):
            getattr(b, name)()
    x = deers.tensor(np.array([200, 7], np.uint8), device=device)  # a uint8 array stays u8, as torch.tensor
    assert x.dtype is deers.u8
    assert (x * x).numpy().tolist() == [64, 49] and (x ** 3).numpy().tolist() == [0, 87]  # wraps mod 256
    if torch is not None:
        t = torch.tensor(np.array([200, 7], np.uint8))
        assert (x ** 3).numpy().tolist() == (t ** 3).numpy().tolist()
        assert torch.sign(torch.tensor([True, False])).tolist() == [True, False]
        assert torch.square(torch.tensor([True, False])).dtype == torch.int64

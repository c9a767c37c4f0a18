"""Every fused op against its reference written from core ops: same values, same gradients, on
contiguous and non-contiguous inputs; and the fused ops' autograd contract (retain_graph, the
loss as a 0-d tensor on the device, gradients handed out once without aliasing)."""
from __future__ import annotations

import numpy as np
import pytest

import deers
from deers import Var
from deers.array import NDArray
from deers.fused.adamw import adamw_update, adamw_update_reference
from deers.errors import DTypeError, ShapeError
from deers.fused.attention import (apply_rope, apply_rope_reference, causal_attention, causal_attention_reference,
                                   causal_softmax, causal_softmax_reference)
from deers.fused.cross_entropy import cross_entropy, cross_entropy_reference
from deers.fused.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from deers.fused.rms_norm import rms_norm, rms_norm_reference
from deers.models.gpt import rope_tables
from helpers import make_input

RNG = np.random.default_rng(0)
LAYOUTS = ("contiguous", "permuted", "narrowed")


def _leaves(arrays, layout, grad_mask):
    return [make_input(a, layout if a.dtype.kind == "f" else "contiguous", requires_grad=g)
            for a, g in zip(arrays, grad_mask)]


def assert_fused_matches_reference(fused, reference, arrays, grad_mask, layout, atol=1e-10):
    """Run both on fresh leaves of `layout`; compare outputs and every requested input gradient."""
    results = []
    seed_values = None
    for fn in (fused, reference):
        leaves = _leaves(arrays, layout, grad_mask)
        out = fn(*leaves)
        if seed_values is None:  # one incoming gradient for both
            seed_values = RNG.standard_normal(out.shape) if out.ndim else np.array(1.7)
        grads = out.backward(deers.tensor(seed_values))
        results.append((out.numpy(), [grads[t].numpy() for t, g in zip(leaves, grad_mask) if g]))
    (out_f, grads_f), (out_r, grads_r) = results
    np.testing.assert_allclose(out_f, out_r, atol=atol, rtol=1e-9)
    for gf, gr in zip(grads_f, grads_r):
        np.testing.assert_allclose(gf, gr, atol=atol, rtol=1e-9)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_its_reference(layout, smoothing, reduction):
    logits = RNG.standard_normal((6, 5))
    targets = np.array([1, 0, -100, 4, 2, -100])
    assert_fused_matches_reference(
        lambda x, t: cross_entropy(x, t, label_smoothing=smoothing, reduction=reduction),
        lambda x, t: cross_entropy_reference(x, t, label_smoothing=smoothing, reduction=reduction),
        [logits, targets], [True, False], layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunk_rows", [None, 2, 3])
def test_linear_cross_entropy_matches_its_reference(layout, chunk_rows):
    x, w = RNG.standard_normal((7, 4)), RNG.standard_normal((9, 4))
    targets = np.array([3, 8, -100, 0, 5, 5, 1])
    assert_fused_matches_reference(lambda x, w, t: linear_cross_entropy(x, w, t, chunk_rows=chunk_rows),
                                   linear_cross_entropy_reference, [x, w, targets], [True, True, False], layout)


def test_linear_cross_entropy_with_every_row_ignored_is_nan_with_zero_gradients():
    x, w = Var(deers.tensor(RNG.standard_normal((4, 3)))), Var(deers.tensor(RNG.standard_normal((5, 3))))
    loss = linear_cross_entropy(x, w, deers.tensor([-100] * 4), chunk_rows=2)
    grads = loss.backward()
    assert np.isnan(loss.item())
    assert not grads[x].numpy().any() and not grads[w].numpy().any()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rms_norm_matches_its_reference(layout):
    assert_fused_matches_reference(lambda x, w: rms_norm(x, w, 1e-5), lambda x, w: rms_norm_reference(x, w, 1e-5),
                                   [RNG.standard_normal((2, 3, 8)), RNG.standard_normal(8)], [True, True], layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_matches_its_reference(layout):
    cos, sin = rope_tables(6, 5, 10000.0)
    assert_fused_matches_reference(apply_rope, apply_rope_reference, [RNG.standard_normal((2, 3, 5, 6)), cos, sin],
                                   [True, False, False], layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cached", [0, 5, 40])
def test_causal_softmax_matches_its_reference(layout, cached):
    scores = RNG.standard_normal((2, 3, 37, 37 + cached))  # several 32-row blocks, the last partial
    assert_fused_matches_reference(lambda s: causal_softmax(s, 0.3), lambda s: causal_softmax_reference(s, 0.3),
                                   [scores], [True], layout)


def test_causal_softmax_gives_exact_zeros_above_the_diagonal():
    y = causal_softmax(deers.tensor(RNG.standard_normal((1, 6, 6)))).numpy()[0]
    assert (y[np.triu_indices(6, 1)] == 0).all()
    np.testing.assert_allclose(y.sum(-1), 1.0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cached", [0, 9])
def test_causal_attention_matches_its_reference(layout, cached):
    t = 150  # three query blocks on the CPU, the last cut short
    q, k, v = (RNG.standard_normal((1, 2, n, 4)) for n in (t, t + cached, t + cached))
    assert_fused_matches_reference(lambda q, k, v: causal_attention(q, k, v, 0.3),
                                   lambda q, k, v: causal_attention_reference(q, k, v, 0.3),
                                   [q, k, v], [True, True, True], layout)


def test_causal_attention_names_the_operands_it_rejects():
    q, k = deers.randn(1, 4, 8), deers.randn(1, 3, 8)
    with pytest.raises(ShapeError, match=r"causal_attention: .*S >= T"):
        causal_attention(q, k, k)
    with pytest.raises(ShapeError, match="do not broadcast"):
        causal_attention(q, deers.randn(2, 4, 8), deers.randn(3, 4, 8))
    with pytest.raises(DTypeError, match="one floating-point dtype"):
        causal_attention(q, q.to(deers.f64), q)


@pytest.mark.parametrize("step", [1, 7])
def test_adamw_update_matches_its_reference(step):
    shape = (5, 3)
    arrays = [RNG.standard_normal(shape), RNG.standard_normal(shape), RNG.standard_normal(shape) * 0.1,
              RNG.random(shape)]
    results = []
    for update in (adamw_update, adamw_update_reference):
        param, grad, m, v = (NDArray.from_numpy(a, deers.f64, "cpu") for a in arrays)
        update([param], [grad.transpose(0, 1).transpose(0, 1)], [m], [v], 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
        results.append([a.numpy() for a in (param, m, v)])
    for fused, reference in zip(*results):
        np.testing.assert_allclose(fused, reference, rtol=1e-12, atol=1e-14)


# ---- the fused ops' autograd contract -----------------------------------------------------------
def _loss_cases():
    x = Var(deers.tensor(RNG.standard_normal((6, 4))))
    w = Var(deers.tensor(RNG.standard_normal((5, 4))))
    t = deers.tensor([1, 0, 4, 2, 3, 1])
    return {
        "cross_entropy": (lambda: cross_entropy(x @ w.T, t), [x, w]),
        "linear_cross_entropy": (lambda: linear_cross_entropy(x, w, t), [x, w]),
        "linear_cross_entropy chunked": (lambda: linear_cross_entropy(x, w, t, chunk_rows=4), [x, w]),
    }


@pytest.mark.parametrize("case", sorted(_loss_cases()))
def test_fused_losses_honour_retain_graph(case):
    make, leaves = _loss_cases()[case]
    loss = make()
    first = loss.backward(retain_graph=True)
    second = loss.backward()
    for leaf in leaves:
        np.testing.assert_array_equal(first[leaf].numpy(), second[leaf].numpy())
        assert first[leaf].data.storage_id() != second[leaf].data.storage_id()  # no gradient shared between stores


@pytest.mark.parametrize("case", sorted(_loss_cases()))
def test_fused_losses_backward_twice_without_retain_graph_raises(case):
    make, _ = _loss_cases()[case]
    loss = make()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


@pytest.mark.parametrize("case", sorted(_loss_cases()))
def test_fused_losses_are_0d_tensors_and_scale_by_the_incoming_gradient(case):
    make, leaves = _loss_cases()[case]
    loss = make()
    assert isinstance(loss, deers.Tensor) and loss.shape == () and loss.device == "cpu"
    plain = make().backward()
    doubled = (make() * 3.0).backward()
    for leaf in leaves:
        np.testing.assert_allclose(doubled[leaf].numpy(), 3.0 * plain[leaf].numpy(), rtol=1e-12)

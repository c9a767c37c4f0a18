"""The fused lm_head + cross-entropy op against the unfused path, NumPy, finite differences and PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

import deers
from deers import Var
from deers.errors import DTypeError, ShapeError
from deers.loss import cross_entropy
from deers.fused.linear_cross_entropy import linear_cross_entropy
from deers.layout import Layout
from helpers import check_op


def numpy_reference(x, w, t, ignore_index=-100):
    logits = x.reshape(-1, x.shape[-1]) @ w.T  # (N, V)
    t = t.reshape(-1)
    peak = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
    valid = t != ignore_index
    picked = logits[np.arange(len(t)), np.where(valid, t, 0)]
    return ((lse - picked) * valid).sum() / valid.sum()


@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_matches_reference_and_gradients(chunk_rows):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 8)), rng.standard_normal((11, 8))
    t = rng.integers(0, 11, (2, 5))
    t[0, 3] = -100
    check_op(lambda x, w, t: linear_cross_entropy(x, w, t, chunk_rows=chunk_rows), x, w, t,
             reference=numpy_reference, layouts=("contiguous", "permuted", "narrowed"),
             torch_fn=lambda x, w, t: __import__("torch").nn.functional.cross_entropy(
                 (x @ w.T).reshape(-1, w.shape[0]), t.reshape(-1)))


def test_same_as_unfused_path_in_f32():
    rng = np.random.default_rng(1)
    x = Var(deers.tensor(rng.standard_normal((64, 16), dtype=np.float32)))
    w = Var(deers.tensor(rng.standard_normal((300, 16), dtype=np.float32)))
    t = deers.tensor(rng.integers(0, 300, 64))
    fused = linear_cross_entropy(x, w, t, chunk_rows=10)
    g_fused = fused.backward()
    plain = cross_entropy(x @ w.T, t)
    g_plain = plain.backward()
    np.testing.assert_allclose(fused.item(), plain.item(), rtol=1e-6)
    np.testing.assert_allclose(g_fused[x].numpy(), g_plain[x].numpy(), atol=1e-6)
    np.testing.assert_allclose(g_fused[w].numpy(), g_plain[w].numpy(), atol=1e-6)


def test_only_the_loss_without_grad_and_a_scaled_backward():
    rng = np.random.default_rng(2)
    x = Var(deers.tensor(rng.standard_normal((6, 4))))
    w = deers.tensor(rng.standard_normal((7, 4)))  # not trainable: no dW is made
    t = deers.tensor(rng.integers(0, 7, 6))
    with deers.no_grad():
        value = linear_cross_entropy(x, w, t).item()
    np.testing.assert_allclose(value, numpy_reference(x.numpy(), w.numpy(), t.numpy()))
    grads = (linear_cross_entropy(x, w, t) * 3.0).backward()
    assert w not in grads
    single = linear_cross_entropy(x, w, t).backward()
    np.testing.assert_allclose(grads[x].numpy(), 3.0 * single[x].numpy())


def test_all_rows_ignored_is_nan_with_zero_gradient():
    x = Var(deers.ones(3, 4, dtype=deers.f64))
    w = Var(deers.ones(5, 4, dtype=deers.f64))
    t = deers.full((3,), -100)
    loss = linear_cross_entropy(x, w, t)
    assert np.isnan(loss.item())
    grads = loss.backward()
    assert not grads[x].numpy().any() and not grads[w].numpy().any()


def test_errors_name_the_operands():
    x, w = deers.ones(4, 8), deers.ones(10, 8)
    with pytest.raises(ShapeError, match="linear_cross_entropy.*targets"):
        linear_cross_entropy(x, w, deers.zeros(3, dtype=deers.i64))
    with pytest.raises(DTypeError, match="i64"):
        linear_cross_entropy(x, w, deers.zeros(4))
    with pytest.raises(ShapeError, match=r"\(10, 7\)"):
        linear_cross_entropy(x, deers.ones(10, 7), deers.zeros(4, dtype=deers.i64))
    with pytest.raises(IndexError):
        linear_cross_entropy(x, w, deers.full((4,), 10))


def test_cpu_kernel_may_write_the_gradient_over_the_logits():
    from deers.backend import backend_for

    backend = backend_for("cpu")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(6 * 9).astype(np.float32)
    targets = np.array([0, 8, -100, 3, 3, 1])
    logits_layout, targets_layout = Layout((6, 9)), Layout((6,))
    fresh = backend.cross_entropy(logits.copy(), logits_layout, targets, targets_layout, -100, 0.1)
    buffer = logits.copy()
    loss, count, grad = backend.cross_entropy(buffer, logits_layout, targets, targets_layout, -100, 0.1,
                                              overwrite_logits=True)
    assert np.shares_memory(grad, buffer)
    assert (float(loss[0]), int(count[0])) == pytest.approx((float(fresh[0][0]), int(fresh[1][0])))
    np.testing.assert_allclose(grad, fresh[2], atol=1e-7)


@pytest.mark.parametrize("chunk_rows", [None, 8])
def test_bf16_inputs_keep_16_bit_gemms_and_give_an_f32_loss(chunk_rows):
    """GPT.loss in bf16 hands the lm_head weight over as it is (no f32 copy): the loss is f32, the
    gradients bf16, and both are close to the f32 computation on the same (bf16-rounded) values;
    with several chunks dW is summed in f32 and rounded once."""
    if not deers.bf16.available:
        pytest.skip("bf16 needs ml_dtypes (pip install ml_dtypes)")
    rng = np.random.default_rng(5)
    x16 = Var(deers.tensor(rng.standard_normal((32, 16)), dtype=deers.bf16))
    w16 = Var(deers.tensor(rng.standard_normal((40, 16)) * 0.3, dtype=deers.bf16))
    t = deers.tensor(rng.integers(0, 40, (32,)))
    loss = linear_cross_entropy(x16, w16, t, chunk_rows=chunk_rows)
    assert loss.dtype is deers.f32
    grads = (loss * 2.0).backward()  # a non-unit incoming gradient, cast to bf16 for the saved ones
    x32 = Var(deers.tensor(x16.numpy().astype(np.float32)))
    w32 = Var(deers.tensor(w16.numpy().astype(np.float32)))
    loss32 = linear_cross_entropy(x32, w32, t)
    grads32 = (loss32 * 2.0).backward()
    np.testing.assert_allclose(loss.numpy(), loss32.numpy(), rtol=1e-2)
    for a16, a32 in ((x16, x32), (w16, w32)):
        assert grads[a16].dtype is deers.bf16
        np.testing.assert_allclose(grads[a16].numpy().astype(np.float32), grads32[a32].numpy(), atol=2e-3, rtol=3e-2)

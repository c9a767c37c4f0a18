"""deers.loss: the fused cross_entropy op (value and gradient vs NumPy, PyTorch and finite
differences; ignore_index, label smoothing, reductions, (B, T, C) inputs, errors), nll_loss, mse_loss."""
import numpy as np
import pytest

import deers
from deers import loss
from deers.fused.cross_entropy import CrossEntropy
from devices import DEVICES


def _reference(x, t, ignore_index=-100, smoothing=0.0):
    """NumPy cross-entropy: (mean loss, per-row losses, gradient of the mean) for logits (N, C)."""
    n, c = x.shape
    shifted = x - x.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    valid = t != ignore_index
    safe = np.where(valid, t, 0)
    target_dist = np.full((n, c), smoothing / c)
    target_dist[np.arange(n), safe] += 1 - smoothing
    rows = -(target_dist * log_probs).sum(1) * valid
    count = valid.sum()
    grad = (np.exp(log_probs) - target_dist) * valid[:, None] / count
    return rows.sum() / count, rows, grad


def _data(n=7, c=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c)) * 3).astype(dtype), rng.integers(0, c, n)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("ignore", [False, True])
def test_cross_entropy_value_and_gradient_match_numpy(smoothing, ignore):
    x, t = _data()
    if ignore:
        t[[1, 4]] = -100
    mean, rows, grad = _reference(x, t, smoothing=smoothing)
    xt = deers.tensor(x).attach()
    out = loss.cross_entropy(xt, deers.tensor(t), label_smoothing=smoothing)
    assert out.shape == () and out.dtype is deers.f64
    assert out.item() == pytest.approx(mean, rel=1e-12)
    np.testing.assert_allclose(out.backward()[xt].numpy(), grad, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(loss.cross_entropy(deers.tensor(x), deers.tensor(t), label_smoothing=smoothing,
                                                  reduction="none").numpy(), rows, rtol=1e-12, atol=1e-15)
    assert loss.cross_entropy(deers.tensor(x), deers.tensor(t), label_smoothing=smoothing,
                              reduction="sum").item() == pytest.approx(rows.sum(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch(reduction, smoothing):
    torch = pytest.importorskip("torch")
    x, t = _data(n=9, c=6, seed=1)
    t[[0, 5]] = 3  # a custom ignore_index
    weights = np.random.default_rng(2).standard_normal(9) if reduction == "none" else 1.0
    xt = deers.tensor(x).attach()
    out = loss.cross_entropy(xt, deers.tensor(t), ignore_index=3, label_smoothing=smoothing, reduction=reduction)
    grad = (out * deers.tensor(weights)).sum().backward()[xt] if reduction == "none" else out.backward()[xt]
    tx = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(tx, torch.tensor(t), ignore_index=3, label_smoothing=smoothing,
                                                 reduction=reduction)
    (expected * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_f32_matches_torch():
    torch = pytest.importorskip("torch")
    x, t = _data(n=64, c=50, seed=3, dtype=np.float32)
    xt = deers.tensor(x).attach()
    out = loss.cross_entropy(xt, deers.tensor(t), label_smoothing=0.1)
    tx = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(tx, torch.tensor(t), label_smoothing=0.1)
    expected.backward()
    assert out.dtype is deers.f32
    assert out.item() == pytest.approx(expected.item(), rel=1e-5)
    np.testing.assert_allclose(out.backward()[xt].numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_gradient_by_finite_differences(smoothing):
    x, t = _data(n=4, c=3, seed=4)
    t[2] = -100
    xt = deers.tensor(x).attach()
    analytic = loss.cross_entropy(xt, deers.tensor(t), label_smoothing=smoothing).backward()[xt].numpy()
    numeric = np.zeros_like(x)
    h = 1e-6
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        f_up = loss.cross_entropy(deers.tensor(up), deers.tensor(t), label_smoothing=smoothing).item()
        f_down = loss.cross_entropy(deers.tensor(down), deers.tensor(t), label_smoothing=smoothing).item()
        numeric[i] = (f_up - f_down) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, atol=1e-8)


def test_cross_entropy_is_one_fused_op_scaled_by_the_incoming_gradient():
    x, t = _data()
    xt = deers.tensor(x).attach()
    out = loss.cross_entropy(xt, deers.tensor(t))
    assert isinstance(out._op, CrossEntropy) and out._inputs[0] is xt  # no log_softmax/gather chain
    single = loss.cross_entropy(xt, deers.tensor(t)).backward()[xt].numpy()
    tripled = (out * 3.0).backward()[xt].numpy()
    np.testing.assert_allclose(tripled, 3 * single, rtol=1e-14)


def test_cross_entropy_flattens_batch_and_time():
    x, t = _data(n=6, c=4, seed=5)
    flat = loss.cross_entropy(deers.tensor(x), deers.tensor(t)).item()
    x3, t3 = x.reshape(2, 3, 4), t.reshape(2, 3)
    xt = deers.tensor(x3).attach()
    out = loss.cross_entropy(xt, deers.tensor(t3))
    assert out.item() == pytest.approx(flat, rel=1e-14)
    assert out.backward()[xt].shape == (2, 3, 4)
    assert loss.cross_entropy(deers.tensor(x3), deers.tensor(t3), reduction="none").shape == (2, 3)


def test_cross_entropy_on_views():
    x, t = _data(n=5, c=4, seed=6)
    xt = deers.tensor(np.ascontiguousarray(x.T)).attach()
    out = loss.cross_entropy(xt.T, deers.tensor(t))  # a permuted (non-contiguous) view
    mean, _, grad = _reference(x, t)
    assert out.item() == pytest.approx(mean, rel=1e-12)
    np.testing.assert_allclose(out.backward()[xt].numpy(), grad.T, rtol=1e-10, atol=1e-15)


def test_cross_entropy_errors():
    x, t = _data()
    logits, targets = deers.tensor(x), deers.tensor(t)
    with pytest.raises(TypeError, match=r"targets must be i64.*f64"):
        loss.cross_entropy(logits, targets.to_dtype(deers.f64))
    with pytest.raises(TypeError, match="logits must be floating point"):
        loss.cross_entropy(targets.reshape(7, 1), targets)
    with pytest.raises(ValueError, match=r"cross_entropy.*\(7, 5\).*\(6,\)"):
        loss.cross_entropy(logits, targets[:6])
    with pytest.raises(ValueError, match="cross_entropy"):
        loss.cross_entropy(logits.reshape(35), targets)
    with pytest.raises(ValueError, match="reduction"):
        loss.cross_entropy(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        loss.cross_entropy(logits, targets, label_smoothing=1.5)
    with pytest.raises(IndexError, match="cross_entropy"):
        loss.cross_entropy(logits, deers.tensor([0, 1, 2, 3, 4, 5, 0]))


def test_all_targets_ignored_gives_nan_like_torch():
    x, _ = _data(n=3)
    out = loss.cross_entropy(deers.tensor(x).attach(), deers.tensor([-100, -100, -100]))
    assert np.isnan(out.item())


def test_nll_loss_matches_numpy_and_torch():
    x, t = _data(n=6, c=4, seed=7)
    t[3] = -100
    log_probs = x - np.log(np.exp(x).sum(1, keepdims=True))
    valid = t != -100
    expected = -log_probs[np.arange(6)[valid], t[valid]].mean()
    lp = deers.tensor(log_probs).attach()
    out = loss.nll_loss(lp, deers.tensor(t))
    assert out.item() == pytest.approx(expected, rel=1e-12)
    grad = out.backward()[lp].numpy()
    want = np.zeros_like(x)
    want[np.arange(6)[valid], t[valid]] = -1 / valid.sum()
    np.testing.assert_allclose(grad, want, rtol=1e-12)
    np.testing.assert_allclose(loss.cross_entropy(deers.tensor(x), deers.tensor(t)).item(), expected, rtol=1e-12)
    torch = pytest.importorskip("torch")
    for reduction in ("sum", "none"):
        ours = loss.nll_loss(deers.tensor(log_probs), deers.tensor(t), reduction=reduction).numpy()
        theirs = torch.nn.functional.nll_loss(torch.tensor(log_probs), torch.tensor(t), reduction=reduction)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12)


def test_mse_loss():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    at = deers.tensor(a).attach()
    out = loss.mse_loss(at, deers.tensor(b))
    assert out.item() == pytest.approx(((a - b) ** 2).mean(), rel=1e-12)
    np.testing.assert_allclose(out.backward()[at].numpy(), 2 * (a - b) / a.size, rtol=1e-12)
    assert loss.mse_loss(deers.tensor(a), deers.tensor(b), reduction="sum").item() == pytest.approx(((a - b) ** 2).sum())
    with pytest.raises(ValueError, match=r"mse_loss.*\(3, 4\).*\(4, 3\)"):
        loss.mse_loss(deers.tensor(a), deers.tensor(b.T.copy()))


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_on_every_device_matches_cpu(device):
    x, t = _data(n=12, c=7, seed=9, dtype=np.float32)
    t[4] = -100
    mean, _, grad = _reference(x.astype(np.float64), t, smoothing=0.1)
    xt = deers.tensor(x, device=device).attach()
    out = loss.cross_entropy(xt, deers.tensor(t, device=device), label_smoothing=0.1)
    assert out.device == device
    assert out.item() == pytest.approx(mean, rel=1e-5)
    np.testing.assert_allclose(out.backward()[xt].numpy(), grad, rtol=1e-4, atol=1e-7)

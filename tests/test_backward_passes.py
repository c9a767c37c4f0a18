"""The backward pass in few array passes, with unchanged gradients.

Three changes keep a GPT step's backward from doing work it need not do; each is checked here
against central differences in float64 and PyTorch (`check_op`), on contiguous, permuted,
narrowed and broadcast inputs:
  - MatMul.backward makes each input's gradient in that input's memory order, so a Linear
    weight (x @ W.T) gets a dense gradient and the engine does not copy it;
  - the engine `Tensor.backward` runs (deers/view_grads.py) keeps a view's gradient (narrow,
    slicing) as a Region and writes the regions of one input (q, k, v of a qkv projection) into
    one buffer instead of adding zero arrays (tests/test_view_grads.py: the plain engine agrees);
  - Relu.backward is g * sign(y) (2 passes, not 3: compare, cast, multiply).
Then a count of the backend calls of a small GPT's backward, so the savings cannot be lost
silently, and the aliasing rules the in-place accumulation must keep.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import deers
from deers import Var
from deers.array import NDArray
from helpers import check_op, rand


# ---- gradients ---------------------------------------------------------------------------------
def test_narrow_split_like_qkv_matches_references():
    B, T, nh, hd = 2, 3, 2, 2
    D = nh * hd

    def qkv_attention_like(x):  # x: (B, T, 3D) -> q, k, v as (B, nh, T, hd) views, as GPT does
        q, k, v = (x.narrow(2, i * D, D).reshape(B, T, nh, hd).transpose(1, 2) for i in range(3))
        return (q * k + v * v).sum(-1) + x.narrow(2, D, D).sum(-1).reshape(B, T, 1).transpose(1, 2)

    check_op(qkv_attention_like, rand(B, T, 3 * D))


def test_views_used_in_any_order_overlapping_or_strided_sum_their_gradients():
    def pieces(x):  # (6, 4): narrows in backward order that is not monotone, overlapping narrows
        a, b, c = x.chunk(3, 0)
        overlap = x.narrow(0, 1, 3) * x.narrow(0, 2, 3)
        return (c * 2.0 + a * b).sum(0) + overlap.sum(0) + x[::2, 1:3].sum() + x[4]

    check_op(pieces, rand(6, 4))


@pytest.mark.parametrize("used", [(0, 1, 2), (2, 0), (1,)])
def test_split_pieces_that_tile_the_input_or_leave_gaps(used):
    def pieces(x):  # (2, 7): pieces of 3, 3, 1 along dim 1; the unused ones must get a zero gradient
        parts = x.split(3, 1)
        return sum(((parts[i] * float(i + 1)) ** 2.0).sum(1) for i in used)

    check_op(pieces, rand(2, 7, seed=21))


def test_a_view_and_the_whole_tensor_both_feed_the_loss():
    def both(x, w):
        head = x.narrow(1, 0, 2)  # the view's region is added to the full gradient of x @ w
        return (x @ w).relu().sum(1) + (head * head).sum(1) + x.narrow(1, 2, 1).sum(1)

    check_op(both, rand(3, 4, seed=1), rand(4, 5, seed=2))


def test_a_reshape_of_a_transposed_gradient_is_written_through_views_or_copied():
    def chains(x):  # x: (4, 6); each transpose makes the reshape's gradient one it cannot view
        through_narrow = x.narrow(1, 0, 4).reshape(4, 2, 2).transpose(1, 2).sum(0)  # written into x's window
        through_two = x.narrow(0, 1, 3).narrow(1, 2, 4).reshape(3, 2, 2).transpose(1, 2).sum(0)
        cannot_compose = x.narrow(1, 1, 4).reshape(2, 8).transpose(0, 1).reshape(4, 4)[:2]  # (2, 4)
        whole = x.reshape(4, 2, 3).transpose(1, 2).sum(0)  # (3, 2): the region covers all of x
        return (through_narrow * 2.0).sum() + (through_two * through_two).sum() + (cannot_compose ** 2.0).sum() \
            + (whole * whole).sum() + x.narrow(0, 0, 2).sum()

    check_op(chains, rand(4, 6, seed=19))
    check_op(lambda x: x.reshape(2, 2, 3).transpose(1, 2), rand(4, 3, seed=20))  # only a whole region: a leaf


@pytest.mark.parametrize("shapes,expression", [
    (((5, 3), (4, 3)), lambda x, w: x @ w.T),  # a Linear: the weight is a transposed view
    (((2, 5, 3), (4, 3)), lambda x, w: x @ w.T),  # batched x, flattened against the 2-D weight
    (((3, 5), (3, 4)), lambda a, b: a.T @ b),  # the left operand transposed
    (((5, 3), (4, 5)), lambda a, b: a.T @ b.T),  # both transposed
    (((2, 3, 4), (1, 5, 4)), lambda a, b: a @ b.transpose(1, 2)),  # broadcast batch, transposed
    (((2, 4, 3), (2, 4, 5)), lambda a, b: a.transpose(1, 2) @ b),  # batched, left transposed
])
def test_matmul_with_transposed_operands_matches_references(shapes, expression):
    check_op(expression, *(rand(*shape, seed=i) for i, shape in enumerate(shapes)))


def test_a_transposed_weight_gets_a_dense_gradient_that_matches_the_plain_one():
    w = Var(deers.from_numpy(rand(4, 3, seed=3)))
    x = deers.from_numpy(rand(5, 3, seed=4))
    grads = (x @ w.T).relu().sum().backward()
    data = grads.array(w)
    assert data.is_dense() and data.layout.strides == (3, 1)
    expected = ((x.numpy() @ w.numpy().T > 0).astype(np.float64).T @ x.numpy())
    np.testing.assert_allclose(grads[w].numpy(), expected, rtol=1e-12)


def test_a_matmul_input_used_twice_sums_both_gradients():
    check_op(lambda a, w: (a @ w.T) @ w + a @ (w.T @ w), rand(3, 4, seed=5), rand(2, 4, seed=6))


def test_relu_backward_matches_references_on_every_layout():
    check_op(lambda x: x.relu() * x, rand(4, 5, seed=7))
    check_op(lambda x: x.narrow(1, 1, 3).relu().relu(), rand(4, 5, seed=8))


def test_relu_backward_at_zero_and_infinity_is_pytorchs():
    torch = pytest.importorskip("torch")
    values = np.array([-1.0, 0.0, 2.0, -0.0, 3.0, np.inf, -np.inf])
    seed = np.array([5.0, 5.0, 5.0, 5.0, np.inf, 5.0, 5.0])
    x = Var(deers.from_numpy(values))
    ours = x.relu().backward(deers.from_numpy(seed))[x].numpy()
    t = torch.tensor(values, requires_grad=True)
    t.relu().backward(torch.tensor(seed))
    np.testing.assert_array_equal(ours, t.grad.numpy())


def test_relu_backward_is_two_backend_calls(monkeypatch):
    y = NDArray.from_numpy(rand(3, 4), deers.f64, "cpu").unary("relu")
    op = deers.ops.unary.Relu()
    op.y = y
    calls = _count_cpu_calls(monkeypatch, lambda: op.backward(NDArray.from_numpy(rand(3, 4, seed=1), deers.f64, "cpu")))
    assert calls <= 2, calls


# ---- how many backend calls a GPT backward makes -----------------------------------------------
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def _gpt_backward_counts(n_layer: int = 2):
    """Kernel launches and GEMMs of one GPT backward on the counting CUDA runtime (no GPU)."""
    from cuda_launches import CountingRuntime

    from deers.backend import _instances
    from deers.backend.cuda import CUDABackend
    from deers.models.gpt import GPT, GPTConfig

    runtime = CountingRuntime()
    cuda = deers.Device.cuda(0)
    saved = _instances.get(cuda)
    _instances[cuda] = CUDABackend(0, runtime=runtime)
    try:
        deers.manual_seed(0)
        config = GPTConfig(vocab_size=64, sequence_len=16, n_layer=n_layer, n_head=2, n_embd=32, mlp_hidden_dim=64)
        model = GPT(config, device=cuda)
        data = np.random.default_rng(0).integers(0, 64, (2, 17), dtype=np.int64)
        idx, targets = deers.tensor(data[:, :-1], device=cuda), deers.tensor(data[:, 1:], device=cuda)
        loss = model.loss(idx, targets)
        runtime.reset()
        grads = loss.backward()
        assert len(grads) == len(model.parameters())
        return runtime.launches.copy(), sum(runtime.gemms.values())
    finally:
        if saved is None:
            _instances.pop(cuda, None)
        else:
            _instances[cuda] = saved


def test_a_gpt_backward_makes_no_more_backend_calls_than_today():
    launches, gemms = _gpt_backward_counts(n_layer=2)
    one_more_layer, more_gemms = _gpt_backward_counts(n_layer=3)
    per_layer = {k: one_more_layer[k] - launches[k] for k in one_more_layer}
    # Per layer: the qkv gradient is 3 copies (q, k, v written through their reshape and narrow
    # straight into it; they tile it, so no fill), relu 1 sign + 1 multiply, no copy of a weight's
    # gradient; the rest are 2 residual additions and the fused ops' own (2 x 2 rms_norm, 2 rope,
    # 1 softmax).
    assert per_layer.get("fill_f32", 0) == 0, per_layer
    assert per_layer.get("copy_f32_f32", 0) <= 3, per_layer
    assert per_layer.get("compare_scalar_f32", 0) == 0 and per_layer.get("copy_bool_f32", 0) == 0, per_layer
    assert sum(per_layer.values()) <= 14, per_layer
    assert more_gemms - gemms == 12  # 2 GEMMs backward for each of the 6 forward (4 Linear, 2 attention)
    assert sum(launches.values()) <= 33, launches  # 2 layers


# ---- aliasing: in-place accumulation never writes into someone else's buffer -------------------
def test_retain_graph_twice_gives_equal_gradients():
    x, w = Var(deers.from_numpy(rand(2, 3, 6, seed=9))), Var(deers.from_numpy(rand(4, 6, seed=10)))
    q, k, v = x.chunk(3, 2)
    loss = ((x @ w.T).relu().sum() + (q * k).sum() + (v * x.narrow(2, 0, 2)).sum()) * 1.0
    first = loss.backward(retain_graph=True)
    second = loss.backward(retain_graph=True)
    for t in (x, w):
        np.testing.assert_array_equal(first[t].numpy(), second[t].numpy())
        assert first.array(t).storage_id() != second.array(t).storage_id()


def test_the_callers_out_grad_is_not_written_to():
    x = Var(deers.from_numpy(rand(4, 6, seed=11)))
    y = x * 1.0  # y's gradient is out_grad itself; its parts flow back to x through three narrows
    out = y.narrow(1, 0, 2) + y.narrow(1, 2, 2) + y.narrow(1, 4, 2) + y.narrow(1, 1, 2)
    seed = deers.from_numpy(rand(4, 2, seed=12))
    before = seed.numpy().copy()
    (out + out).backward(seed)
    np.testing.assert_array_equal(seed.numpy(), before)


def test_a_gradient_handed_to_two_inputs_is_not_written_to():
    a, b = Var(deers.from_numpy(rand(3, 4, seed=13))), Var(deers.from_numpy(rand(3, 4, seed=14)))
    s = a + b  # Add hands the same gradient to a and b; a also gets a view's region, b a product's
    loss = (s * 2.0).sum() + a.narrow(0, 0, 1).sum() + (b * b).sum()
    grads = loss.backward()
    np.testing.assert_allclose(grads[a].numpy(), 2.0 + np.r_[[np.ones(4)], np.zeros((2, 4))])
    np.testing.assert_allclose(grads[b].numpy(), 2.0 + 2 * b.numpy())


def test_two_leaves_never_share_a_buffer():
    a, b = Var(deers.from_numpy(rand(3, 4, seed=15))), Var(deers.from_numpy(rand(3, 4, seed=16)))
    x = Var(deers.from_numpy(rand(3, 4, seed=17)))
    loss = (a + b).sum() + (x.narrow(0, 0, 3) + a).sum()  # Add hands one buffer to a, b and x's view
    grads = loss.backward()
    ids = [grads.array(t).storage_id() for t in (a, b, x)]
    assert len(set(ids)) == 3
    assert all(grads.array(t).is_dense() for t in (a, b, x))


def test_a_saved_activation_is_not_written_to():
    x = Var(deers.from_numpy(rand(3, 4, seed=18)))
    h = x * 3.0
    kept = h.detach().numpy().copy()
    loss = (h * h).sum() + h.narrow(1, 0, 2).sum()  # h is saved by the product and gets a region too
    retained = loss.backward(retain_graph=True)
    np.testing.assert_array_equal(h.numpy(), kept)
    np.testing.assert_allclose(retained[x].numpy(), 3.0 * (2 * kept + np.c_[np.ones((3, 2)), np.zeros((3, 2))]))


def _count_cpu_calls(monkeypatch, fn) -> int:
    """Backend calls made while fn runs, counted on the CPU backend's primitives."""
    from deers.backend import backend_for

    backend = backend_for("cpu")
    calls = []
    for name in ("full", "empty", "unary", "binary", "scalar", "where", "cast", "reduce", "matmul", "copy"):
        def counted(*args, _method=getattr(backend, name), _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)
        monkeypatch.setattr(backend, name, counted)
    fn()
    monkeypatch.undo()
    return len(calls)

"""max(dim)/min(dim) give (values, indices) like PyTorch; amax/amin values; argmin, sort, argsort, topk.

The trap this guards: `values, indices = x.max(dim=1)` used to unpack the two *values* of a
length-2 result silently.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from devices import DEVICES
from helpers import check_op, rand

try:
    import torch
except ImportError:
    torch = None

NO_BROADCAST = ("contiguous", "permuted", "narrowed")  # a stride-0 dim would make ties


@pytest.mark.parametrize("device", DEVICES)
def test_max_dim_unpacks_into_values_and_indices(device):
    x = deers.tensor([[1.0, 5.0, 3.0], [7.0, 2.0, 0.0]], device=device)
    values, indices = x.max(dim=1)  # a length-2 result: the old trap unpacked two values here
    assert values.tolist() == [5.0, 7.0] and indices.tolist() == [1, 0] and indices.dtype is deers.i64
    low = x.min(0)
    assert low.values.tolist() == [1.0, 2.0, 0.0] and low.indices.tolist() == [0, 1, 1]
    assert low._fields == ("values", "indices")
    kept = x.max(1, keepdim=True)
    assert kept.values.shape == (2, 1) and kept.indices.shape == (2, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_max_without_dim_and_amax_give_values(device):
    x = deers.tensor([[1.0, 5.0], [7.0, 2.0]], device=device)
    assert isinstance(x.max(), deers.Tensor) and x.max().item() == 7.0 and x.min().item() == 1.0
    assert x.amax(1).tolist() == [5.0, 7.0] and x.amin((0, 1)).item() == 1.0
    assert deers.ops.reduce.max(x).item() == 7.0


def test_max_with_several_dims_points_to_amax():
    x = deers.zeros(2, 3)
    with pytest.raises(TypeError, match="amax"):
        x.max((0, 1))
    with pytest.raises(TypeError, match="amin"):
        x.min([0])
    with pytest.raises(IndexError, match="max"):
        x.max((0, 5))


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_dim_values_forward_and_backward(dim, keepdim):
    x = rand(3, 4)
    check_op(lambda x: x.max(dim, keepdim=keepdim).values, x,
             reference=lambda x: np.max(x, dim, keepdims=keepdim), layouts=NO_BROADCAST)
    check_op(lambda x: x.min(dim, keepdim=keepdim).values, x,
             reference=lambda x: np.min(x, dim, keepdims=keepdim), layouts=NO_BROADCAST)


def test_max_dim_gives_the_whole_gradient_to_the_chosen_tie_like_pytorch():
    x = deers.tensor([[2.0, 2.0, 1.0]]).attach()
    grads = x.max(1).values.sum().backward()
    assert grads[x].tolist() == [[1.0, 0.0, 0.0]]  # max(dim) routes to its index
    grads = x.amax(1).sum().backward()
    assert grads[x].tolist() == [[0.5, 0.5, 0.0]]  # amax splits among ties


@pytest.mark.parametrize("device", DEVICES)
def test_argmin_matches_numpy_for_every_dtype(device):
    rng = np.random.default_rng(0)
    for array in (rng.standard_normal((4, 5)).astype(np.float32), rng.integers(-3, 3, (4, 5)),
                  rng.integers(0, 2, (4, 5)).astype(bool)):
        x = deers.tensor(array, device=device)
        for dim in (0, 1, -1):
            np.testing.assert_array_equal(x.argmin(dim).numpy(), np.argmin(array, dim))
        assert x.argmin().item() == np.argmin(array)
        assert x.argmin(1, keepdim=True).shape == (4, 1)


def test_argmin_and_min_report_nan_like_pytorch():
    x = deers.tensor([[1.0, float("nan"), -2.0], [3.0, 0.0, 4.0]])
    assert x.argmin(1).tolist() == [1, 1]
    values, indices = x.min(1)
    assert np.isnan(values.numpy()[0]) and indices.tolist() == [1, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("descending", [False, True])
def test_sort_and_argsort_are_stable_in_both_directions(device, descending):
    array = np.array([[3.0, 1.0, 3.0, 2.0, 1.0], [0.0, 0.0, 5.0, 0.0, -1.0]], np.float32)
    x = deers.tensor(array, device=device)
    values, indices = x.sort(1, descending=descending)
    expected = np.argsort(-array if descending else array, axis=1, kind="stable")
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(array, expected, 1))
    np.testing.assert_array_equal(x.argsort(1, descending=descending).numpy(), expected)
    assert indices.device == x.device and indices.dtype is deers.i64


def test_sort_puts_nan_last_ascending_and_first_descending():
    x = deers.tensor([2.0, float("nan"), -1.0])
    assert x.argsort().tolist() == [2, 0, 1] and x.argsort(descending=True).tolist() == [1, 0, 2]


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_values_forward_and_backward(dim, descending):
    x = rand(3, 4)
    reference = (lambda x: -np.sort(-x, dim)) if descending else (lambda x: np.sort(x, dim))
    check_op(lambda x: x.sort(dim, descending=descending).values, x, reference=reference, layouts=NO_BROADCAST)


@pytest.mark.parametrize("largest", [True, False])
def test_topk_forward_and_backward(largest):
    x = rand(3, 5)
    def reference(x):
        order = np.argsort(-x if largest else x, axis=1, kind="stable")[:, :2]
        return np.take_along_axis(x, order, 1)
    check_op(lambda x: x.topk(2, dim=1, largest=largest).values, x, reference=reference, layouts=NO_BROADCAST)
    check_op(lambda x: x.topk(3, dim=0, largest=largest).values * 2.0, x, layouts=NO_BROADCAST)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_indices_and_errors(device):
    x = deers.tensor([[1.0, 9.0, 4.0, 7.0]], device=device)
    values, indices = x.topk(2)
    assert values.tolist() == [[9.0, 7.0]] and indices.tolist() == [[1, 3]]
    assert x.topk(1, largest=False).indices.tolist() == [[0]]
    with pytest.raises(deers.ShapeError, match="topk"):
        x.topk(5)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_indices_match_torch():
    array = np.random.default_rng(1).standard_normal((4, 6))
    x, t = deers.tensor(array), torch.tensor(array)
    for dim in (0, 1):
        np.testing.assert_array_equal(x.max(dim).indices.numpy(), t.max(dim).indices.numpy())
        np.testing.assert_array_equal(x.min(dim).indices.numpy(), t.min(dim).indices.numpy())
        np.testing.assert_array_equal(x.argmin(dim).numpy(), t.argmin(dim).numpy())
        np.testing.assert_array_equal(x.sort(dim, descending=True).indices.numpy(),
                                      t.sort(dim=dim, descending=True, stable=True).indices.numpy())
        np.testing.assert_array_equal(x.topk(3, dim).indices.numpy(), t.topk(3, dim).indices.numpy())


def test_zero_dim_and_empty_inputs():
    values, indices = deers.tensor(2.0).max(0)
    assert values.item() == 2.0 and indices.item() == 0 and indices.shape == ()
    assert deers.tensor(2.0).min(-1).indices.item() == 0
    with pytest.raises(deers.ShapeError, match="max: dim 0 .* is empty"):
        deers.zeros(0, 3).max(0)
    assert deers.zeros(0, 3).max(1).values.shape == (0,)
    assert deers.zeros(0, 3).sort(0).values.shape == (0, 3)

"""The everyday functions a PyTorch user reaches for, forward and backward through check_op (NumPy,
finite differences, PyTorch): creation (eye, linspace, empty, *_like), grad-mode switches,
requires_grad_, split/chunk/unbind/stack, flip, cumsum, var/std/norm, tril/triu and einsum."""
from __future__ import annotations

import math

import numpy as np
import pytest

import deers
from devices import DEVICES
from helpers import check_op, lib, rand

try:
    import torch
except ImportError:
    torch = None

NO_BROADCAST = ("contiguous", "permuted", "narrowed")


# ---- creation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_eye_linspace_empty(device):
    np.testing.assert_array_equal(deers.eye(3, device=device).numpy(), np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(deers.eye(2, 4, dtype="i64", device=device).numpy(), np.eye(2, 4, dtype=np.int64))
    np.testing.assert_allclose(deers.linspace(-1, 2, 7, device=device).numpy(), np.linspace(-1, 2, 7), rtol=1e-6)
    assert deers.linspace(0, 1, 1).tolist() == [0.0] and deers.linspace(0, 1, 0).shape == (0,)
    e = deers.empty(2, 3, dtype="f64", device=device)
    assert e.shape == (2, 3) and e.dtype is deers.f64 and e.device == deers.zeros(1, device=device).device
    assert deers.empty((4,)).shape == (4,)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_linspace_matches_torch():
    for start, end, steps in [(0, 1, 5), (-3.5, 2.25, 11), (2, -2, 4)]:
        np.testing.assert_allclose(deers.linspace(start, end, steps).numpy(),
                                   torch.linspace(start, end, steps).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_like_functions_keep_shape_dtype_and_device_unless_told(device):
    x = deers.zeros(2, 3, dtype="f64", device=device)
    for make, value in [(deers.zeros_like, 0.0), (deers.ones_like, 1.0), (lambda t: deers.full_like(t, 2.5), 2.5)]:
        y = make(x)
        assert (y.shape, y.dtype, y.device) == (x.shape, x.dtype, x.device) and (y.numpy() == value).all()
    assert deers.zeros_like(x, dtype="i64").dtype is deers.i64 and deers.ones_like(x, device="cpu").device.kind == "cpu"
    assert deers.empty_like(x).shape == (2, 3)
    deers.manual_seed(3)
    a = deers.randn_like(x)
    deers.manual_seed(3)
    b = deers.randn(2, 3, dtype="f64", device=device)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    u = deers.rand_like(deers.zeros(1000))
    assert u.dtype is deers.f32 and 0.0 <= u.numpy().min() and u.numpy().max() < 1.0


def test_sizes_must_be_ints():
    for make in (deers.ones, deers.zeros, deers.empty, deers.randn, deers.rand):
        with pytest.raises(TypeError, match="ints, got 2.5"):
            make(2.5)
        with pytest.raises(TypeError):
            make((2, 3.0))
    with pytest.raises(ValueError, match=">= 0"):
        deers.zeros(-1)
    with pytest.raises(TypeError):
        deers.full(2.5, 1.0)
    with pytest.raises(TypeError):
        deers.eye(2.0)
    assert deers.ones(np.int64(3)).shape == (3,) and deers.ones([2, 1]).shape == (2, 1)


# ---- grad modes and requires_grad_ ---------------------------------------------------------------------------
def test_set_grad_enabled_and_enable_grad():
    w = deers.Var(deers.ones(2))
    with deers.set_grad_enabled(False):
        assert not (w * 2).requires_grad
        with deers.enable_grad():
            assert (w * 2).requires_grad
        assert not deers.is_grad_enabled()
    assert deers.is_grad_enabled()
    with deers.no_grad():
        with deers.enable_grad():
            assert (w * 2).requires_grad
    deers.set_grad_enabled(False)  # also a plain call, like torch.set_grad_enabled(False)
    try:
        assert not (w * 2).requires_grad
    finally:
        deers.set_grad_enabled(True)
    assert (w * 2).requires_grad


def test_requires_grad_():
    x = deers.tensor([1.0, 2.0])
    assert x.requires_grad_() is x and x.requires_grad
    grads = (x * x).sum().backward()
    assert grads[x].tolist() == [2.0, 4.0]
    assert not x.requires_grad_(False).requires_grad
    with pytest.raises(deers.DTypeError, match="floating"):
        deers.tensor([1, 2]).requires_grad_()
    y = deers.Var(deers.ones(2)) * 2
    with pytest.raises(RuntimeError, match="non-leaf"):
        y.requires_grad_(False)


# ---- pieces: split, chunk, unbind, stack ------------------------------------------------------------------------
def test_split_chunk_unbind_stack_forward_and_backward():
    x = rand(5, 4)
    check_op(lambda x: x.split(2, 0)[2] * 3.0, x, reference=lambda x: x[4:] * 3.0)
    check_op(lambda x: lib(x).cat(list(x.split([1, 3], 1))[::-1], 1), x,
             reference=lambda x: np.concatenate([x[:, 1:], x[:, :1]], 1))
    check_op(lambda x: lib(x).cat(list(x.chunk(3, 0))[::-1], 0), x,
             reference=lambda x: np.concatenate([x[4:], x[2:4], x[:2]], 0))
    check_op(lambda x: lib(x).stack(list(x.unbind(1))[::-1], 0), x, reference=lambda x: x[:, ::-1].T)
    check_op(lambda a, b: lib(a).stack([a, b], 1), x, rand(5, 4, seed=1),
             reference=lambda a, b: np.stack([a, b], 1))


def test_piece_counts_and_errors_match_torch_rules():
    x = deers.zeros(5, 2)
    assert [p.shape[0] for p in x.chunk(3)] == [2, 2, 1] and len(deers.zeros(6).chunk(4)) == 3
    assert [p.shape for p in deers.split(x, 2)] == [(2, 2), (2, 2), (1, 2)]
    assert len(x.unbind(1)) == 2 and x.unbind(1)[0].shape == (5,)
    with pytest.raises(deers.ShapeError, match="sum to 5"):
        x.split([2, 2])
    with pytest.raises(ValueError):
        x.chunk(0)
    x_np = np.arange(10.0).reshape(5, 2)
    pieces = deers.tensor(x_np).split(2)
    assert pieces[0].data.storage_id() == pieces[2].data.storage_id()  # views of one buffer


# ---- flip, cumsum -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [0, 1, (0, 1), (-1,)])
def test_flip(dims):
    check_op(lambda x: x.flip(dims), rand(3, 4), reference=lambda x: np.flip(x, dims))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
def test_cumsum_every_length(n):
    check_op(lambda x: x.cumsum(0), rand(n, 3), reference=lambda x: np.cumsum(x, 0))
    check_op(lambda x: x.cumsum(-1), rand(2, n), reference=lambda x: np.cumsum(x, -1), layouts=NO_BROADCAST)


def test_cumsum_of_ints_and_bools_is_i64():
    x = deers.tensor([[1, 2, 3], [4, 5, 6]])
    assert x.cumsum(1).tolist() == [[1, 3, 6], [4, 9, 15]] and x.cumsum(1).dtype is deers.i64
    assert deers.tensor([True, False, True]).cumsum(0).tolist() == [1, 1, 2]
    assert deers.cumsum(deers.tensor(2.0), 0).item() == 2.0


# ---- var, std, norm ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [None, 0, 1, (0, 1)])
@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_var_std(dim, correction, keepdim):
    x = rand(3, 4)
    check_op(lambda x: x.var(dim, correction=correction, keepdim=keepdim), x,
             reference=lambda x: np.var(x, dim, ddof=correction, keepdims=keepdim), layouts=NO_BROADCAST)
    check_op(lambda x: x.std(dim, correction=correction, keepdim=keepdim), x,
             reference=lambda x: np.std(x, dim, ddof=correction, keepdims=keepdim), layouts=NO_BROADCAST)


def test_var_edge_cases_like_torch():
    assert math.isnan(deers.tensor([3.0]).var().item())  # 0 / 0
    assert deers.tensor([1.0, 2.0]).var(unbiased=False).item() == 0.25
    assert math.isinf(deers.tensor([1.0, 2.0]).var(correction=2).item())
    with pytest.raises(deers.DTypeError):
        deers.tensor([1, 2]).var()


@pytest.mark.parametrize("p", [2, 1, 3, math.inf, -math.inf])
@pytest.mark.parametrize("dim", [None, 1])
def test_norm(p, dim):
    def reference(x):
        return np.linalg.norm(x.reshape(-1) if dim is None else x, ord=p, axis=None if dim is None else dim)
    check_op(lambda x: x.norm(p, dim), rand(3, 4), reference=reference, layouts=NO_BROADCAST)


def test_norm_gradient_at_zero_is_zero_like_torch():
    x = deers.zeros(2, 3).attach()
    grads = x.norm(dim=1).sum().backward()
    assert grads[x].tolist() == [[0.0] * 3] * 2
    assert deers.tensor([[1.0, 0.0], [0.0, 0.0]]).norm(0, 1).tolist() == [1.0, 0.0]


# ---- tril, triu -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("diagonal", [-1, 0, 2])
def test_tril_triu(diagonal):
    check_op(lambda x: x.tril(diagonal), rand(3, 4), reference=lambda x: np.tril(x, diagonal))
    check_op(lambda x: x.triu(diagonal), rand(2, 3, 4), reference=lambda x: np.triu(x, diagonal))
    with pytest.raises(deers.ShapeError, match="tril"):
        deers.zeros(3).tril()


# ---- einsum ---------------------------------------------------------------------------------------------------------
EINSUM = [
    ("ij,jk->ik", (3, 4), (4, 5)),
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    ("i,i->", (4,), (4,)),
    ("i,j->ij", (3,), (4,)),
    ("ij,kj->ik", (3, 4), (5, 4)),
    ("bhqd,bhkd->bhqk", (2, 1, 3, 4), (2, 1, 5, 4)),
    ("ij,jk", (3, 4), (4, 2)),  # implicit output "ik"
    ("ij,kl->jl", (2, 3), (4, 5)),  # summed letters in each operand alone
    ("ijk,ikj->ji", (2, 3, 4), (2, 4, 3)),
]


@pytest.mark.parametrize("equation, a_shape, b_shape", EINSUM, ids=[e[0] for e in EINSUM])
def test_einsum_two_operands(equation, a_shape, b_shape):
    check_op(lambda a, b: lib(a).einsum(equation, a, b), rand(*a_shape), rand(*b_shape, seed=1),
             reference=lambda a, b: np.einsum(equation, a, b), layouts=NO_BROADCAST)


@pytest.mark.parametrize("equation", ["ij->ji", "ij->j", "ijk->kij", "ij->", "ij"])
def test_einsum_one_operand(equation):
    check_op(lambda x: lib(x).einsum(equation, x), rand(2, 3) if equation.count("k") == 0 else rand(2, 3, 4),
             reference=lambda x: np.einsum(equation, x))


def test_einsum_errors_name_the_problem():
    a = deers.zeros(2, 3)
    with pytest.raises(deers.ShapeError, match="size 3 and 4"):
        deers.einsum("ij,jk->ik", a, deers.zeros(4, 2))
    with pytest.raises(deers.ShapeError, match="repeated 'i'"):
        deers.einsum("ii->i", deers.zeros(2, 3))
    with pytest.raises(ValueError, match=r"at most one '\.\.\.'"):
        deers.einsum("......ij->ij", a)
    with pytest.raises(ValueError, match="distinct letters"):
        deers.einsum("i,i,i->ii", deers.zeros(2), deers.zeros(2), deers.zeros(2))
    with pytest.raises(deers.ShapeError, match="names 3 dims"):
        deers.einsum("ijk->i", a)
    assert deers.einsum("ij,jk->ik", [a, deers.zeros(3, 1)]).shape == (2, 1)


# ---- every backend agrees with the CPU ---------------------------------------------------------------------------------
DEVICE_CASES = {
    "cumsum": lambda x: x.cumsum(1),
    "flip": lambda x: x.flip((0, 1)),
    "var": lambda x: x.var(1),
    "std": lambda x: x.std(),
    "norm": lambda x: x.norm(dim=0),
    "tril": lambda x: x.tril(),
    "einsum": lambda x: deers.einsum("ij,kj->ik", x, x),
    "split": lambda x: x.split(2, 1)[1],
    "unbind": lambda x: x.unbind(0)[2],
}


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"])
@pytest.mark.parametrize("name", list(DEVICE_CASES))
def test_device_matches_cpu(name, device):
    fn = DEVICE_CASES[name]
    array = rand(3, 5).astype(np.float32)
    cpu, dev = deers.tensor(array).attach(), deers.tensor(array, device=device).attach()
    out_cpu, out_dev = fn(cpu), fn(dev)
    assert out_dev.device == dev.device
    np.testing.assert_allclose(out_dev.numpy(), out_cpu.numpy(), rtol=1e-5, atol=1e-6)
    seed = np.random.default_rng(0).standard_normal(out_cpu.shape).astype(np.float32)
    g_cpu = out_cpu.backward(deers.tensor(seed))[cpu]
    g_dev = out_dev.backward(deers.tensor(seed, device=device))[dev]
    np.testing.assert_allclose(g_dev.numpy(), g_cpu.numpy(), rtol=1e-5, atol=1e-6)


# ---- indexing: negative-step slices, several tensor indices, bool masks on any dims ----------------------------
NEGATIVE_STEPS = [  # (key, the same in PyTorch, which has no negative steps: a flip)
    (np.s_[::-1], lambda x: x.flip(0)),
    (np.s_[:, 3:0:-2], lambda x: x[:, 1:4:2].flip(1)),
    (np.s_[..., ::-2], lambda x: x[..., ::2].flip(-1)),
    (np.s_[::-1, 1, -1:-4:-1], lambda x: x[:, 1, 2:].flip((0, 1))),
]


@pytest.mark.parametrize("case", range(len(NEGATIVE_STEPS)))
def test_negative_step_slices(case):
    key, torch_fn = NEGATIVE_STEPS[case]
    check_op(lambda x: x[key], rand(3, 4, 5) if case >= 2 else rand(3, 4), reference=lambda x: x[key],
             torch_fn=torch_fn)


def _index(values) -> np.ndarray:
    return np.asarray(values, np.int64)


ADVANCED = {  # name: key builder from (tensor maker) -> key; every form NumPy and PyTorch share
    "two indices": lambda t: (t(_index([0, 2, -1])), t(_index([1, 3, 0]))),
    "after a slice": lambda t: (slice(None), t(_index([0, 2, -1])), t(_index([1, 4, 0]))),
    "broadcast together": lambda t: (t(_index([[0], [2]])), t(_index([1, 3, 0]))),
    "apart: dims go first": lambda t: (t(_index([0, 2])), slice(1, 3), t(_index([4, 1]))),
    "int between tensors": lambda t: (t(_index([1, 2])), 1, t(_index([4, 0]))),
    "mask on dim 1": lambda t: (slice(None), t(np.array([True, False, True, True]))),
    "mask on dims 1, 2": lambda t: (slice(None), t(np.arange(20).reshape(4, 5) % 3 == 0)),
    "mask on dims 0, 1 then an int": lambda t: (t(np.arange(12).reshape(3, 4) % 5 < 2), 3),
    "mask and a tensor": lambda t: (t(np.array([True, False, True])), slice(None), t(_index([0, 4]))),
}


@pytest.mark.parametrize("name", list(ADVANCED))
def test_several_tensor_indices_and_masks(name):
    make = ADVANCED[name]
    check_op(lambda x: x[make(lambda v: lib(x).tensor(v))], rand(3, 4, 5), reference=lambda x: x[make(np.asarray)],
             layouts=NO_BROADCAST)


def test_ints_are_not_indexing_entries_as_in_pytorch():
    # NumPy would move the picked dim first here ((3, 4)); PyTorch reads x[0, :, idx] as x[0][:, idx]
    idx = _index([4, 1, 1])
    check_op(lambda x: x[0, :, lib(x).tensor(idx)], rand(3, 4, 5), reference=lambda x: x[0][:, idx],
             layouts=NO_BROADCAST)
    i, j = _index([1, 2, 0]), _index([3, 0, 1])
    check_op(lambda x: x[:, lib(x).tensor(i), 1, lib(x).tensor(j)], rand(2, 3, 4, 5),
             reference=lambda x: x[:, :, 1][:, i, j], layouts=NO_BROADCAST[:1])  # (2, 3): in place


@pytest.mark.parametrize("device", DEVICES)
def test_advanced_indexing_on_every_device_and_errors(device):
    array = np.arange(60.0).reshape(3, 4, 5)
    x = deers.tensor(array, device=device)
    i, j = deers.tensor([2, 0], device=device), deers.tensor([-1, 1], device=device)
    np.testing.assert_array_equal(x[i, :, j].numpy(), array[[2, 0], :, [-1, 1]])
    np.testing.assert_array_equal(x[::-1, ::-2].numpy(), array[::-1, ::-2])
    mask = deers.tensor(array[0] > 7, device=device)
    np.testing.assert_array_equal(x[:, mask].numpy(), array[:, array[0] > 7])
    with pytest.raises(IndexError, match="out of range"):
        x[deers.tensor([0], device=device), deers.tensor([4], device=device)]  # merged, row 1 col 0 would be wrong
    with pytest.raises(IndexError, match="broadcast"):
        x[deers.tensor([0, 1], device=device), deers.tensor([0, 1, 2], device=device)]
    with pytest.raises(IndexError, match="does not match"):
        x[:, deers.tensor(np.ones((3, 5), bool), device=device)]


def test_item_assignment_takes_the_new_index_forms():
    x = deers.zeros(3, 4)
    x[::-1, 0] = deers.tensor([1.0, 2.0, 3.0])
    x[deers.tensor([0, 1]), deers.tensor([3, 2])] = 9.0
    expected = np.zeros((3, 4), np.float32)
    expected[::-1, 0] = [1.0, 2.0, 3.0]
    expected[[0, 1], [3, 2]] = 9.0
    np.testing.assert_array_equal(x.numpy(), expected)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_random_index_keys_match_torch():
    """Random mixes of slices, ints, None, i64 tensors (negative entries too) and 1-D bool masks."""
    rng = np.random.default_rng(0)
    array = rng.standard_normal((3, 4, 5, 2))
    x, t = deers.tensor(array), torch.tensor(array)
    compared = 0
    for _ in range(300):
        ours, theirs, dim = [], [], 0
        for _ in range(rng.integers(1, 5)):
            if dim == array.ndim:
                break
            kind, size = rng.integers(7), array.shape[dim]
            if kind == 0:
                ours.append(None), theirs.append(None)
                continue
            entry = [slice(None), slice(1, None, 2), int(rng.integers(-size, size))][kind - 1] if kind < 4 else None
            if kind == 4:  # an index tensor, entries counting from either end
                entry = rng.integers(-size, size, rng.integers(1, 4))
            elif kind == 5:  # a column of indices, to broadcast against the others
                entry = rng.integers(0, size, (2, 1))
            elif kind == 6:
                entry = rng.random(size) > 0.4
            if isinstance(entry, np.ndarray):
                ours.append(deers.tensor(entry)), theirs.append(torch.tensor(entry))
            else:
                ours.append(entry), theirs.append(entry)
            dim += 1
        try:
            expected = t[tuple(theirs)].numpy()
        except (IndexError, RuntimeError):  # e.g. index shapes that do not broadcast
            continue
        np.testing.assert_array_equal(x[tuple(ours)].numpy(), expected, err_msg=str(theirs))
        compared += 1
    assert compared > 150

"""In-place updates (issue 13, item 1): add_/sub_/mul_/div_/zero_/fill_/copy_/clamp_, augmented
assignment and item assignment keep a tensor's identity and buffer, write through views, follow
PyTorch's casting rule, and refuse what would silently break gradients. Every case runs on every
device here (cpu; mps through MLX), and against PyTorch when it is installed."""
from __future__ import annotations

import numpy as np
import pytest

import deers
from deers import Var
from deers.errors import DTypeError, InPlaceError, ShapeError
from devices import DEVICES
from helpers import make_input

try:
    import torch
except ImportError:
    torch = None

RNG = np.random.default_rng(13)
BASE = RNG.standard_normal((3, 4)).astype(np.float32)

# name -> the same in-place update in Deers and PyTorch (same method names), and in NumPy
METHODS = {
    "add_": (lambda x: x.add_(2.0), lambda a: a + 2.0),
    "add_ tensor alpha": (lambda x: x.add_(x.detach() * 0 + 1.5, alpha=2), lambda a: a + 3.0),
    "sub_ row": (lambda x: x.sub_(_like(x, BASE[0])), lambda a: a - BASE[0]),
    "mul_": (lambda x: x.mul_(-3), lambda a: a * -3),
    "div_": (lambda x: x.div_(4.0), lambda a: a / 4.0),
    "zero_": (lambda x: x.zero_(), lambda a: np.zeros_like(a)),
    "fill_": (lambda x: x.fill_(0.25), lambda a: np.full_like(a, 0.25)),
    "copy_ broadcast": (lambda x: x.copy_(_like(x, BASE[:, :1])), lambda a: np.broadcast_to(BASE[:, :1], a.shape)),
    "clamp_": (lambda x: x.clamp_(-0.5, 0.5), lambda a: np.clip(a, -0.5, 0.5)),
    "clamp_ min": (lambda x: x.clamp_(min=0.0), lambda a: np.maximum(a, 0.0)),
    "floor_divide_": (lambda x: x.floor_divide_(0.3), lambda a: np.floor_divide(a, np.float32(0.3))),
    "remainder_": (lambda x: x.remainder_(-0.7), lambda a: np.remainder(a, np.float32(-0.7))),
}


def _like(x, array: np.ndarray):
    """`array` as a tensor of x's library, dtype and device (Deers or PyTorch)."""
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.tensor(array, dtype=x.dtype)
    return deers.tensor(array, dtype=x.dtype, device=x.device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "permuted", "narrowed"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_inplace_methods_keep_identity_and_match_numpy_and_torch(name, layout, device):
    fn, reference = METHODS[name]
    x = make_input(BASE, layout).to_device(device) if device != "cpu" else make_input(BASE, layout)
    storage = x.data.storage_id()
    out = fn(x)
    assert out is x and x.data.storage_id() == storage and x.shape == BASE.shape
    np.testing.assert_allclose(x.numpy(), reference(BASE.copy()), rtol=1e-6, atol=1e-7)
    if torch is not None:
        t = torch.tensor(BASE)
        fn(t)
        np.testing.assert_allclose(x.numpy(), t.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_on_a_view_writes_through_to_its_base(device):
    base = deers.zeros(3, 4, device=device)
    base[1].add_(2.0)  # a row view
    base.transpose(0, 1)[2].fill_(-1.0)  # a column, through a permuted view
    base.narrow(1, 0, 2)[0] += 5.0  # augmented assignment on a narrowed view
    expected = np.zeros((3, 4), np.float32)
    expected[1] += 2.0
    expected[:, 2] = -1.0
    expected[0, :2] += 5.0
    np.testing.assert_array_equal(base.numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_manual_sgd_under_no_grad_keeps_the_var_training(device):
    """The trap of the issue: `w -= lr * g` replaced the Var by a plain Tensor and froze it."""
    layer = deers.nn.Linear(3, 2, vb=deers.nn.ParamStore(device=device).root())
    x = deers.randn(4, 3, device=device)
    weight, before = layer.weight, layer.weight.numpy()
    for _ in range(2):
        grads = (layer(x) ** 2).sum().backward()
        g = grads[layer.weight]
        with deers.no_grad():
            layer.weight -= 0.1 * g
    assert layer.weight is weight and isinstance(layer.weight, Var)
    assert any(p is weight for p in layer.parameters())
    assert not np.allclose(layer.weight.numpy(), before)
    assert layer.weight in (layer(x) ** 2).sum().backward()  # still reached by the next backward


@pytest.mark.parametrize("op", ["iadd", "isub", "imul", "itruediv"])
def test_augmented_assignment_matches_torch(op):
    values = {"iadd": lambda a, b: a.__iadd__(b), "isub": lambda a, b: a.__isub__(b),
              "imul": lambda a, b: a.__imul__(b), "itruediv": lambda a, b: a.__itruediv__(b)}[op]
    x, other = deers.tensor(BASE), deers.tensor(BASE[0] + 2.0)
    storage = x.data.storage_id()
    assert values(x, other) is x and x.data.storage_id() == storage
    expected = {"iadd": BASE + BASE[0] + 2, "isub": BASE - BASE[0] - 2, "imul": BASE * (BASE[0] + 2),
                "itruediv": BASE / (BASE[0] + 2)}[op]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_integer_augmented_assignment_is_in_place_like_torch(device):
    """//=, %=, &=, |=, ^= keep the tensor's identity and buffer (a Var too, under no_grad)."""
    values = [13, -7, 6, 255]
    for op in ("__ifloordiv__", "__imod__", "__iand__", "__ior__", "__ixor__"):
        x, t = deers.tensor(values, device=device), torch.tensor(values) if torch is not None else None
        storage = x.data.storage_id()
        assert getattr(x, op)(3) is x and x.data.storage_id() == storage, op
        expected = {"__ifloordiv__": [v // 3 for v in values], "__imod__": [v % 3 for v in values],
                    "__iand__": [v & 3 for v in values], "__ior__": [v | 3 for v in values],
                    "__ixor__": [v ^ 3 for v in values]}[op]
        assert x.numpy().tolist() == expected, op
        if t is not None:
            assert getattr(t, op)(3).tolist() == expected, op
    mask = deers.tensor([True, False, True], device=device)
    mask &= deers.tensor([True, True, False], device=device)
    assert mask.numpy().tolist() == [True, False, False]
    with pytest.raises(DTypeError, match="cannot be written in place"):
        deers.tensor([1, 2], device=device).floor_divide_(0.5)  # f32 into i64, as PyTorch refuses
    w = Var(deers.tensor([5.0, -5.0], device=device))
    with deers.no_grad():
        w //= 2.0
    assert isinstance(w, Var) and w.numpy().tolist() == [2.0, -3.0]


def test_augmented_assignment_inside_a_recorded_graph_is_out_of_place_with_the_right_gradient():
    """Deers does not record in-place ops, so `h += y` on a tensor of the graph gives the value and
    the gradient PyTorch gives, as a new tensor (docs/pytorch.md)."""
    w = Var(deers.tensor(BASE))
    h = w * 2.0
    h += w
    grads = h.sum().backward()
    np.testing.assert_allclose(grads[w].numpy(), np.full(BASE.shape, 3.0))


def test_inplace_on_a_leaf_that_requires_grad_raises_under_grad_mode():
    w = Var(deers.tensor(BASE))
    for update in (lambda: w.add_(1.0), lambda: w.zero_(), lambda: w.__isub__(1.0), lambda: w.__setitem__(0, 1.0)):
        with pytest.raises(InPlaceError, match="leaf tensor that requires grad.*no_grad"):
            update()
    np.testing.assert_array_equal(w.numpy(), BASE)  # nothing was written
    assert issubclass(InPlaceError, RuntimeError)  # what PyTorch raises, so `except RuntimeError` still works
    with deers.no_grad():
        w.add_(1.0)
    np.testing.assert_allclose(w.numpy(), BASE + 1.0)


def test_inplace_that_would_need_recording_raises():
    w = Var(deers.tensor(BASE))
    h = w * 2.0
    with pytest.raises(InPlaceError, match="not recorded in the graph"):
        h.mul_(2.0)
    buf = deers.zeros(3, 4)
    with pytest.raises(InPlaceError, match="not recorded in the graph"):
        buf.add_(w)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_refuses_an_array_changed_in_place_after_it_was_saved(device):
    x = deers.tensor([1.0, 2.0], device=device).attach()
    y = x.exp()  # Exp saves its output y
    with deers.no_grad():
        y.mul_(2.0)
    with pytest.raises(InPlaceError, match="exp saved for its gradient.*changed by an in-place operation"):
        y.sum().backward()
    w = Var(deers.tensor([3.0, 4.0], device=device))
    loss = (w * x).sum()  # Mul saves w for x's gradient
    with deers.no_grad():
        w.sub_(1.0)
    with pytest.raises(InPlaceError, match="mul saved"):
        loss.backward()
    loss = (w * x).sum()  # a fresh graph after the update is fine
    np.testing.assert_allclose(loss.backward()[x].numpy(), w.numpy())


def test_an_update_of_an_operand_that_was_not_saved_is_allowed():
    """Add saves nothing, so changing its input afterwards cannot corrupt the gradient (PyTorch agrees)."""
    x = deers.tensor([1.0, 2.0]).attach()
    c = deers.tensor([5.0, 6.0])
    loss = (x + c).sum()
    c.add_(1.0)
    np.testing.assert_array_equal(loss.backward()[x].numpy(), [1.0, 1.0])


def test_in_place_results_follow_pytorchs_casting_rule():
    x = deers.tensor([1, 2, 3])
    with pytest.raises(DTypeError, match="add_: the result type f32 cannot be written in place into shape \\(3,\\) i64"):
        x.add_(0.5)
    with pytest.raises(DTypeError, match="div_"):
        x.div_(2)  # true division gives a float
    assert x.mul_(2).numpy().tolist() == [2, 4, 6]
    assert x.fill_(1.7).numpy().tolist() == [1, 1, 1]  # fill_ and copy_ cast, as in PyTorch
    assert x.copy_(deers.tensor([4.9, -1.2, 0.0])).numpy().tolist() == [4, -1, 0]
    h = deers.ones(2, dtype=deers.f16)
    assert h.add_(deers.tensor([0.5, 1.0])).dtype is deers.f16  # f32 result written into f16
    np.testing.assert_array_equal(h.numpy(), [1.5, 2.0])


def test_in_place_shape_and_layout_errors():
    with pytest.raises(ShapeError, match="add_: a result of shape \\(2, 3\\).*does not fit in place into shape \\(3,\\)"):
        deers.zeros(3).add_(deers.zeros(2, 3))
    with pytest.raises(ShapeError, match="broadcast view"):
        deers.zeros(3).broadcast_to(2, 3).add_(1.0)
    with pytest.raises(TypeError, match="copy_: expected a Tensor"):
        deers.zeros(3).copy_([1.0, 2.0, 3.0])


@pytest.mark.parametrize("device", DEVICES)
def test_copy_between_devices_is_an_explicit_move(device):
    x = deers.zeros(2, 2, device=device)
    x.copy_(deers.tensor([[1.0, 2.0], [3.0, 4.0]]))  # from the CPU
    assert x.device == device
    np.testing.assert_array_equal(x.numpy(), [[1.0, 2.0], [3.0, 4.0]])


def test_copy_from_an_overlapping_view_reads_before_it_writes():
    x = deers.tensor([[1.0, 2.0], [3.0, 4.0]])
    x.copy_(x.T)
    np.testing.assert_array_equal(x.numpy(), [[1.0, 3.0], [2.0, 4.0]])


# ---- item assignment: x[key] = value for every key getitem accepts --------------------------------------
SETITEM = {
    "int": (lambda i: 1, 7.0),
    "negative int": (lambda i: -1, 7.0),
    "int int": (lambda i: (0, -2), 7.0),
    "slice": (lambda i: (slice(None), slice(1, 3)), 7.0),
    "step slice": (lambda i: (slice(None, None, 2),), 7.0),
    "ellipsis": (lambda i: (Ellipsis, 0), 7.0),
    "none": (lambda i: (None, 1), 7.0),
    "row tensor value": (lambda i: 0, np.arange(4.0)),
    "column tensor value": (lambda i: (slice(None), 1), np.arange(3.0)),
    "tensor index": (lambda i: i([2, 0]), 7.0),
    "negative tensor index": (lambda i: i([-1]), np.arange(4.0)),
    "tensor index at dim 1": (lambda i: (slice(None), i([3, 1])), np.array([[1.0], [2.0], [3.0]])),
    "tensor index and int": (lambda i: (i([0, 2]), 1), np.array([5.0, 6.0])),
    "list index": (lambda i: [1, 2], 7.0),
    "bool mask": (lambda i: i(BASE > 0), -1.0),
    "row mask": (lambda i: i(np.array([True, False, True])), np.arange(4.0)),
    "mask at dim 1": (lambda i: (slice(None), i(np.array([False, True, True, False]))), 0.0),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(SETITEM))
def test_setitem_matches_numpy_for_every_getitem_form(name, device):
    key_of, value = SETITEM[name]
    x = deers.tensor(BASE, device=device)
    storage = x.data.storage_id()
    key = key_of(lambda v: deers.tensor(v, device=device))
    x[key] = deers.tensor(value, dtype=deers.f32, device=device) if isinstance(value, np.ndarray) else value
    expected = BASE.copy()
    expected[key_of(np.asarray)] = value
    assert x.data.storage_id() == storage
    np.testing.assert_allclose(x.numpy(), expected)


def test_setitem_on_a_view_writes_through_and_casts_like_pytorch():
    base = deers.zeros(2, 3, dtype=deers.i64)
    row = base[1]
    row[deers.tensor([0, 2])] = 2.9  # cast to i64, as torch does
    base[0, 1] = True
    assert base.numpy().tolist() == [[0, 1, 0], [2, 0, 2]]


def test_setitem_errors():
    x = deers.zeros(3, 4)
    with pytest.raises(ShapeError, match="setitem: a value of shape \\(2,\\).*does not fit x\\[key\\] of shape \\(4,\\)"):
        x[0] = deers.zeros(2)
    with pytest.raises(IndexError, match="more than once"):
        x[deers.tensor([1, 1])] = deers.ones(2, 4)
    with pytest.raises(IndexError, match="out of range"):
        x[5] = 1.0
    with pytest.raises(IndexError, match="out of range"):
        x[deers.tensor([4])] = 1.0


# ---- the same on the CUDA backend (its kernels emulated on the CPU, or a real GPU when present) ----------
@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    from cuda_emulator import cuda_backend_fixture

    yield from cuda_backend_fixture(request)


def test_inplace_methods_and_setitem_on_cuda(cuda):
    for name in sorted(METHODS):
        for layout in ("contiguous", "permuted"):
            test_inplace_methods_keep_identity_and_match_numpy_and_torch(name, layout, "cuda")
    for name in sorted(SETITEM):
        test_setitem_matches_numpy_for_every_getitem_form(name, "cuda")
    test_inplace_on_a_view_writes_through_to_its_base("cuda")
    test_backward_refuses_an_array_changed_in_place_after_it_was_saved("cuda")
    test_copy_between_devices_is_an_explicit_move("cuda")

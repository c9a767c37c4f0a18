"""Layout and NDArray: views share the buffer and carry the expected strides (0 for broadcast);
reshape is a view exactly when the strides allow; compact copies only when it must. Hypothesis
drives random shapes, permutations and reshapes against NumPy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deers
from deers.array import NDArray
from deers.layout import Layout, broadcast_shapes, contiguous_strides, infer_shape

CPU = deers.Device.CPU


def array(shape, dtype=deers.f64) -> NDArray:
    values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return NDArray.from_numpy(values, dtype, CPU)


# ---- Layout ----------------------------------------------------------------------------------------
def test_contiguous_strides_and_queries():
    layout = Layout((2, 3, 4))
    assert layout.strides == (12, 4, 1) and layout.offset == 0
    assert layout.is_contiguous() and layout.numel == 24 and layout.ndim == 3 and layout.span() == 24
    assert contiguous_strides(()) == () and Layout(()).numel == 1
    assert Layout((2, 0, 3)).numel == 0 and Layout((2, 0, 3)).span() == 0


def test_size_one_dims_may_have_any_stride_and_stay_contiguous():
    assert Layout((2, 1, 3), (3, 99, 1)).is_contiguous()
    assert not Layout((2, 3), (1, 2)).is_contiguous()


def test_layout_views():
    layout = Layout((2, 3, 4))
    assert layout.permute((2, 0, 1)) == Layout((4, 2, 3), (1, 12, 4))
    assert layout.narrow(1, 1, 2) == Layout((2, 2, 4), (12, 4, 1), 4)
    assert layout.slice(2, 1, 2, 2) == Layout((2, 3, 2), (12, 4, 2), 1)
    assert layout.select(0, 1) == Layout((3, 4), (4, 1), 12)
    assert layout.unsqueeze(1).shape == (2, 1, 3, 4) and layout.unsqueeze(3).shape == (2, 3, 4, 1)
    assert Layout((3, 1)).broadcast_to((2, 3, 5)) == Layout((2, 3, 5), (0, 1, 0))


def test_broadcast_shapes_and_infer_shape():
    assert broadcast_shapes((3, 1), (4,)) == (3, 4)
    assert broadcast_shapes((2, 1, 4), (3, 1)) == (2, 3, 4)
    assert broadcast_shapes((2, 3), (4,)) is None
    assert infer_shape((-1, 4), 12) == (3, 4)
    with pytest.raises(ValueError, match="only one"):
        infer_shape((-1, -1), 12)
    with pytest.raises(ValueError, match="infer the -1"):
        infer_shape((-1, 5), 12)


# ---- NDArray views share memory ------------------------------------------------------------------------
def test_views_share_the_buffer_and_have_the_expected_strides():
    a = array((2, 3, 4))
    views = {
        "permute": (a.permute((2, 0, 1)), (1, 12, 4), 0),
        "transpose": (a.transpose(0, 2), (1, 4, 12), 0),
        "narrow": (a.narrow(2, 1, 2), (12, 4, 1), 1),
        "strided_slice": (a.strided_slice(1, 0, 2, 2), (12, 8, 1), 0),
        "select": (a.select(1, 2), (12, 1), 8),
        "broadcast_to": (a.broadcast_to((5, 2, 3, 4)), (0, 12, 4, 1), 0),
        "reshape": (a.reshape((6, 4)), (4, 1), 0),
    }
    for name, (view, strides, offset) in views.items():
        assert view.buffer is a.buffer, name
        assert view.layout.strides == strides and view.layout.offset == offset, name
    np.testing.assert_array_equal(views["permute"][0].numpy(), a.numpy().transpose(2, 0, 1))
    np.testing.assert_array_equal(views["select"][0].numpy(), a.numpy()[:, 2])


def test_broadcast_dims_have_stride_zero():
    a = array((3, 1))
    b = a.broadcast_to((2, 3, 4))
    assert b.layout.strides == (0, 1, 0) and b.buffer is a.buffer
    np.testing.assert_array_equal(b.numpy(), np.broadcast_to(a.numpy(), (2, 3, 4)))
    t = deers.tensor([1.0, 2.0])
    assert t.broadcast_to(3, 2).data.layout.strides == (0, 1)
    assert t.broadcast_to(3, 2).data.buffer is t.data.buffer


def test_tensor_views_share_memory_with_their_base():
    x = deers.Var(deers.zeros(2, 3))
    views = [x.T, x.transpose(0, 1), x.permute(1, 0), x.narrow(1, 1, 2), x[1], x[:, ::2], x[None], x.reshape(3, 2),
             x.unsqueeze(0), x.broadcast_to(4, 2, 3), x.detach(), x.attach(), x.flatten()]
    x.set_data(deers.ones(2, 3))  # in place: every view sees it
    for view in views:
        assert view.data.buffer is x.data.buffer
        assert (view.numpy() == 1).all()


def test_write_through_a_view_reaches_the_base():
    base = array((3, 4))
    view = base.narrow(1, 1, 2).permute((1, 0))  # (2, 3), strides (1, 4), offset 1
    src = NDArray.from_numpy(-np.ones((2, 3)), deers.f64, CPU)
    base.backend.copy(src.buffer, src.layout, view.buffer, view.layout)
    expected = np.arange(12.0).reshape(3, 4)
    expected[:, 1:3] = -1
    np.testing.assert_array_equal(base.numpy(), expected)


# ---- reshape: view when possible, copy otherwise -------------------------------------------------------
@pytest.mark.parametrize("make, shape, is_view", [
    (lambda a: a, (4, 6), True),
    (lambda a: a.narrow(0, 1, 2), (12,), True),            # whole rows: still contiguous
    (lambda a: a.narrow(1, 1, 4), (4, 2, 2), True),         # split a dim: fine with any outer stride
    (lambda a: a.narrow(1, 1, 4), (16,), False),            # rows are not adjacent any more
    (lambda a: a.permute((1, 0)), (24,), False),            # a transpose cannot be flattened in place
    (lambda a: a.permute((1, 0)), (3, 2, 4), True),         # but its outer dim can be split
    (lambda a: a.reshape((4, 6, 1)).permute((2, 0, 1)), (2, 12), True),  # size-1 dims do not matter
    (lambda a: a.narrow(1, 0, 1).broadcast_to((4, 6)), (4, 2, 3), True),  # stride 0 splits into stride 0
    (lambda a: a.narrow(1, 0, 1).broadcast_to((4, 6)), (24,), False),
])
def test_reshape_is_a_view_when_the_strides_allow(make, shape, is_view):
    a = make(array((4, 6)))
    out = a.reshape(shape)
    assert (out.buffer is a.buffer) == is_view
    assert out.shape == shape
    np.testing.assert_array_equal(out.numpy(), a.numpy().reshape(shape))


def test_reshape_of_a_broadcast_keeps_stride_zero():
    a = array((1, 4)).broadcast_to((3, 4))
    out = a.reshape((3, 2, 2))
    assert out.buffer is a.buffer and out.layout.strides == (0, 2, 1)


def test_compact_returns_self_when_contiguous_and_a_new_buffer_for_a_view():
    a = array((3, 4))
    assert a.compact() is a
    rows = a.narrow(0, 1, 2)  # contiguous with an offset: still no copy
    assert rows.is_contiguous() and rows.compact() is rows
    t = a.permute((1, 0))
    c = t.compact()
    assert c is not t and c.buffer is not a.buffer
    assert c.is_contiguous() and c.layout == Layout((4, 3)) and c.buffer.size == 12
    np.testing.assert_array_equal(c.numpy(), a.numpy().T)
    b = array((1, 4)).broadcast_to((3, 4)).compact()
    assert b.layout.strides == (4, 1) and b.buffer.size == 12


def test_dense_copies_views_with_an_offset():
    rows = array((3, 4)).narrow(0, 1, 2)
    assert not rows.is_dense() and rows.dense().is_dense()
    np.testing.assert_array_equal(rows.dense().numpy(), rows.numpy())


# ---- hypothesis: random layouts against NumPy -------------------------------------------------------------
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


@st.composite
def permuted_arrays(draw):
    """An NDArray whose buffer holds a random permutation of its dims, plus the NumPy equivalent."""
    shape = draw(shapes)
    perm = draw(st.permutations(range(len(shape))))
    values = np.random.default_rng(len(shape)).standard_normal(shape)
    stored = np.ascontiguousarray(values.transpose(np.argsort(perm)))  # the permute below undoes it
    a = NDArray.from_numpy(stored, deers.f64, CPU).permute(tuple(perm))
    return a, stored.transpose(perm)


def _factor(n: int, draw) -> tuple[int, ...]:
    """A random shape with n elements."""
    out = []
    while n > 1:
        d = draw(st.sampled_from([k for k in range(2, n + 1) if n % k == 0]))
        out.append(d)
        n //= d
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), 1)
    return tuple(out) or (1,)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_permute_then_reshape_matches_numpy(data):
    a, expected = data.draw(permuted_arrays())
    np.testing.assert_array_equal(a.numpy(), expected)
    shape = _factor(a.numel, data.draw)
    out = a.reshape(shape)
    np.testing.assert_array_equal(out.numpy(), expected.reshape(shape))
    try:  # NumPy's no-copy rule and ours must agree on when a view is possible
        np.reshape(expected, shape, copy=False)
        numpy_view = True
    except ValueError:
        numpy_view = False
    assert (out.buffer is a.buffer) == numpy_view
    axes = data.draw(st.permutations(range(out.ndim)))
    np.testing.assert_array_equal(out.permute(tuple(axes)).compact().numpy(), expected.reshape(shape).transpose(axes))


@st.composite
def broadcastable_pairs(draw):
    shape = draw(shapes)
    other = tuple(1 if draw(st.booleans()) else s for s in shape)
    other = other[draw(st.integers(0, len(other) - 1)):]  # drop some leading dims
    return (shape, other) if draw(st.booleans()) else (other, shape)


@settings(max_examples=60, deadline=None)
@given(broadcastable_pairs(), st.sampled_from(["add", "mul", "sub", "maximum"]))
def test_broadcasting_binary_ops_match_numpy(pair, name):
    sa, sb = pair
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(sa), rng.standard_normal(sb)
    assert broadcast_shapes(sa, sb) == np.broadcast_shapes(sa, sb)
    out = NDArray.from_numpy(x, deers.f64, CPU).binary(name, NDArray.from_numpy(y, deers.f64, CPU))
    reference = {"add": np.add, "mul": np.multiply, "sub": np.subtract, "maximum": np.maximum}[name]
    np.testing.assert_allclose(out.numpy(), reference(x, y))
    t = deers.tensor(x).attach()
    grads = (t * deers.tensor(y)).sum().backward()  # d/dx sum(x*y) = y summed back to x's shape
    np.testing.assert_allclose(grads[t].numpy(), unbroadcast(np.broadcast_to(y, out.shape), x.shape))


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum g over the dims that broadcasting added or stretched to reach its shape from `shape`."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["sum", "max", "min"]), st.booleans())
def test_reductions_over_random_axes_match_numpy(data, name, keepdim):
    a, expected = data.draw(permuted_arrays())
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, a.ndim - 1), min_size=1))))
    out = a.reduce(name, axes, keepdim)
    reference = {"sum": np.sum, "max": np.max, "min": np.min}[name](expected, axis=axes, keepdims=keepdim)
    assert out.shape == reference.shape
    np.testing.assert_allclose(out.numpy(), reference, rtol=1e-12)
    t = deers.Tensor(a)
    assert t.sum(axes, keepdim=keepdim).shape == reference.shape


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_narrow_and_strided_slices_match_numpy(data):
    a, expected = data.draw(permuted_arrays())
    dim = data.draw(st.integers(0, a.ndim - 1))
    size = a.shape[dim]
    start = data.draw(st.integers(0, size - 1))
    step = data.draw(st.integers(1, 3))
    length = len(range(start, size, step))
    out = a.strided_slice(dim, start, length, step)
    index = (slice(None),) * dim + (slice(start, None, step),)
    np.testing.assert_array_equal(out.numpy(), expected[index])
    assert out.buffer is a.buffer
    np.testing.assert_array_equal(out.compact().numpy(), expected[index])

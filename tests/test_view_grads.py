"""deers.view_grads (view gradients written as regions of one buffer) gives the plain engine's gradients.

Each graph is built twice from the same leaves, once for each engine (a backward frees its
graph), and every leaf gradient must agree to the last bit in float64 (the region engine writes
where the plain one adds zeros, and adding 0.0 changes no value), on graphs of narrows, splits,
slices, reshapes of transposed gradients, tensors used several times, and with retain_graph.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from deers import Var, view_grads
from deers.autograd import Grads, UnitGrad, run_backward
from deers.ops.inplace import check_graph
from helpers import rand


def _both_engines(build, *arrays, retain_graph=False, seed=None):
    """Gradients of build(*leaves) for every leaf, from the plain engine and from view_grads."""
    results = []
    for engine in (run_backward, view_grads.run_backward):
        leaves = [Var(deers.from_numpy(a)) for a in arrays]
        out = build(*leaves)
        start = UnitGrad.full(out.shape, 1.0, out.dtype, out.device) if seed is None else seed.data
        check_graph(out)
        grads = engine(out, start, Grads(), retain_graph)
        if retain_graph:  # a second backward through the same graph gives the same gradients
            again = engine(out, start, Grads(), retain_graph)
            for leaf in leaves:
                np.testing.assert_array_equal(again[leaf].numpy(), grads[leaf].numpy())
        results.append([grads[leaf].numpy() if leaf in grads else None for leaf in leaves])
    for plain, regions in zip(*results):
        if plain is None or regions is None:
            assert plain is None and regions is None
        else:
            np.testing.assert_array_equal(regions, plain)
    return results[0]


def _pieces(x):  # x: (B, T, 3D) -> three (B, nh, T, hd) views, each narrow reshaped and transposed
    B, T, _ = x.shape
    return [x.narrow(2, i * 4, 4).reshape(B, T, 2, 2).transpose(1, 2) for i in range(3)]


GRAPHS = {
    "narrows that tile, reshaped and transposed": (lambda x: (lambda a, b, c: (a * b + c * c).sum())(*_pieces(x)),
                                                   [(2, 3, 12)]),
    "an unused piece and a reused one": (lambda x: (lambda a, b, c: (a * a * 3.0).sum() + a.sum())(*_pieces(x)),
                                         [(2, 3, 12)]),
    "overlapping and out-of-order narrows": (
        lambda x: (x.narrow(0, 1, 3) * x.narrow(0, 2, 3)).sum() + x.chunk(3, 0)[2].sum() * 2.0
        + x[::2, 1:3].sum() + x[4].sum(), [(6, 4)]),
    "split with a gap": (lambda x: sum(((p * float(i + 1)) ** 2.0).sum() for i, p in enumerate(x.split(3, 1))
                                       if i != 1), [(2, 7)]),
    "a view and the whole tensor": (lambda x, w: (x @ w).relu().sum() + (x.narrow(1, 0, 2) ** 2.0).sum(),
                                    [(3, 4), (4, 5)]),
    "reshapes of transposed gradients through narrows": (
        lambda x: (x.narrow(1, 0, 4).reshape(4, 2, 2).transpose(1, 2).sum(0) * 2.0).sum()
        + (x.narrow(0, 1, 3).narrow(1, 2, 4).reshape(3, 2, 2).transpose(1, 2) ** 2.0).sum()
        + (x.narrow(1, 1, 4).reshape(2, 8).transpose(0, 1).reshape(4, 4)[:2] ** 2.0).sum()
        + (x.reshape(4, 2, 3).transpose(1, 2) ** 2.0).sum(), [(4, 6)]),
    "one leaf feeding two adds": (lambda a, b: ((a + b) * 2.0).sum() + a.narrow(0, 0, 1).sum() + (b * b).sum(),
                                  [(3, 4), (3, 4)]),
}


@pytest.mark.parametrize("retain_graph", [False, True])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_view_grads_gives_the_plain_engines_gradients(name, retain_graph):
    build, shapes = GRAPHS[name]
    _both_engines(build, *(rand(*shape, seed=i) for i, shape in enumerate(shapes)), retain_graph=retain_graph)


def test_a_non_scalar_root_with_an_explicit_gradient():
    seed = deers.from_numpy(rand(2, 2, 3, 2, seed=5))
    _both_engines(lambda x: _pieces(x)[1] + _pieces(x)[0] * 0.5, rand(2, 3, 12, seed=4), seed=seed)


def test_a_view_leaf_root_gets_a_gradient_of_its_own():
    """The root is a view of a leaf: both engines copy the caller's gradient rather than keep it."""
    seed = deers.from_numpy(rand(2, 4, seed=7))
    for engine in (run_backward, view_grads.run_backward):
        x = Var(deers.from_numpy(rand(3, 4, seed=6)))
        grads = engine(x.narrow(0, 1, 2), seed.data, Grads(), False)
        assert grads.array(x).storage_id() != seed.data.storage_id() and grads.array(x).is_dense()
        np.testing.assert_array_equal(grads[x].numpy()[1:], seed.numpy())
        np.testing.assert_array_equal(grads[x].numpy()[0], 0.0)

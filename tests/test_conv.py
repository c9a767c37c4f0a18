"""conv2d, conv1d, max_pool2d and avg_pool2d: forward and every gradient against central finite
differences in f64 and against PyTorch over random configurations (non-square kernels 1-5,
strides 1-3, asymmetric padding pairs, "same"/"valid", dilation, groups incl. depthwise, odd
sizes, non-contiguous inputs); the errors; the im2col view itself; the mps and CUDA (emulated)
backends against the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from deers.array import NDArray
from deers.errors import ShapeError
from deers.nn import avg_pool2d, conv1d, conv2d, max_pool2d
from deers.ops.windows import windows
from helpers import finite_differences, make_input

try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = None


def _conv_config(rng: np.random.Generator) -> dict:
    """A random valid conv2d configuration (small shapes)."""
    groups = int(rng.choice([1, 1, 2, 3]))
    depthwise = rng.random() < 0.25
    cg = 1 if depthwise else int(rng.integers(1, 3))
    og = int(rng.integers(1, 3))
    kernel = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    size = [max(int(rng.integers(3, 9)), d * (k - 1) + 1 - 2 * p) for k, d, p in zip(kernel, dilation, padding)]
    return dict(n=int(rng.integers(1, 3)), c=groups * cg, o=groups * og, hw=tuple(size), kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, groups=groups, bias=bool(rng.random() < 0.7))


CONFIGS = [_conv_config(np.random.default_rng(seed)) for seed in range(24)]


def _arrays(cfg: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["n"], cfg["c"]) + cfg["hw"])
    w = rng.standard_normal((cfg["o"], cfg["c"] // cfg["groups"]) + cfg["kernel"])
    b = rng.standard_normal(cfg["o"]) if cfg["bias"] else None
    return x, w, b


def _conv_kwargs(cfg: dict) -> dict:
    return dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])


def _naive_conv2d(x, w, b, stride, padding, dilation, groups) -> np.ndarray:
    """The definition, by loops over output positions and kernel offsets (the NumPy reference)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out[:, g * og:(g + 1) * og] += np.einsum("ncyx,oc->noyx", patch, ws[:, :, i, j])
    return out + (b.reshape(1, o, 1, 1) if b is not None else 0)


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_conv2d_matches_the_definition_and_torch_on_random_configs(index):
    cfg = CONFIGS[index]
    x, w, b = _arrays(cfg, index)
    layout = ("contiguous", "permuted", "narrowed")[index % 3]  # non-contiguous inputs too
    xt, wt = make_input(x, layout, True), make_input(w, ("narrowed", "permuted", "contiguous")[index % 3], True)
    bt = make_input(b, "contiguous", True) if b is not None else None
    y = conv2d(xt, wt, bt, **_conv_kwargs(cfg))
    np.testing.assert_allclose(y.numpy(), _naive_conv2d(x, w, b, cfg["stride"], cfg["padding"], cfg["dilation"],
                                                         cfg["groups"]), atol=1e-12, rtol=1e-12)
    if torch is None:
        return
    seed = np.random.default_rng(1).standard_normal(y.shape)
    grads = y.backward(deers.from_numpy(seed))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if b is not None else None
    ty = TF.conv2d(tx, tw, tb, **_conv_kwargs(cfg))
    ty.backward(torch.tensor(seed))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-12, rtol=1e-12)
    for mine, theirs in ((xt, tx), (wt, tw), (bt, tb)):
        if mine is not None:
            np.testing.assert_allclose(grads[mine].numpy(), theirs.grad.numpy(), atol=1e-11, rtol=1e-11)


def _check_gradients(fn, arrays: list[np.ndarray]) -> None:
    """Every input's gradient of sum(fn(*inputs) * seed) against central finite differences (f64)."""
    tensors = [deers.from_numpy(a).attach() for a in arrays]
    out = fn(*tensors)
    seed = np.random.default_rng(2).standard_normal(out.shape)
    grads = out.backward(deers.from_numpy(seed))
    numeric = finite_differences(fn, arrays, seed, list(range(len(arrays))), 1e-6)
    for i, t in enumerate(tensors):
        np.testing.assert_allclose(grads[t].numpy(), numeric[i], atol=1e-7, rtol=1e-6, err_msg=f"input {i}")


@pytest.mark.parametrize("index", [0, 5, 11, 17])
def test_conv2d_gradients_match_finite_differences(index):
    cfg = dict(CONFIGS[index], n=1, bias=True)
    x, w, b = _arrays(cfg, index)
    _check_gradients(lambda x, w, b: conv2d(x, w, b, **_conv_kwargs(cfg)), [x, w, b])


def test_conv2d_gradients_depthwise_dilated_asymmetric_finite_differences():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 3, 5, 7)), rng.standard_normal((3, 1, 2, 3))
    _check_gradients(lambda x, w: conv2d(x, w, stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=3), [x, w])


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel,dilation", [((3, 3), (1, 1)), ((2, 4), (1, 1)), ((3, 2), (2, 3))])
def test_conv2d_same_and_valid_padding_like_torch(padding, kernel, dilation):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 4, 7, 8)), rng.standard_normal((6, 2) + kernel)
    xt, wt = deers.from_numpy(x).attach(), deers.from_numpy(w).attach()
    y = conv2d(xt, wt, padding=padding, dilation=dilation, groups=2)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, padding=padding, dilation=dilation, groups=2)
    if padding == "same":
        assert y.shape[2:] == x.shape[2:]
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-12)
    grads = y.backward(deers.from_numpy(np.ones(y.shape)))
    ty.sum().backward()
    np.testing.assert_allclose(grads[xt].numpy(), tx.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(grads[wt].numpy(), tw.grad.numpy(), atol=1e-11)


@pytest.mark.parametrize("seed", range(8))
def test_conv1d_like_torch_and_finite_differences(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2]))
    k, s, d, p = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 3))
    length = max(int(rng.integers(4, 11)), d * (k - 1) + 1)
    x, w, b = rng.standard_normal((2, 2 * groups, length)), rng.standard_normal((3 * groups, 2, k)), rng.standard_normal(3 * groups)
    fn = lambda x, w, b: conv1d(x, w, b, stride=s, padding=p, dilation=d, groups=groups)  # noqa: E731
    if seed < 2:
        _check_gradients(fn, [x[:1], w, b])
    torch = pytest.importorskip("torch")
    xt = make_input(x, "permuted", True)
    wt, bt = deers.from_numpy(w).attach(), deers.from_numpy(b).attach()
    y = fn(xt, wt, bt)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv1d(tx, tw, tb, stride=s, padding=p, dilation=d, groups=groups)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-12)
    seed_grad = rng.standard_normal(y.shape)
    grads = y.backward(deers.from_numpy(seed_grad))
    ty.backward(torch.tensor(seed_grad))
    for mine, theirs in ((xt, tx), (wt, tw), (bt, tb)):
        np.testing.assert_allclose(grads[mine].numpy(), theirs.grad.numpy(), atol=1e-11)


def test_unbatched_inputs_give_unbatched_outputs():
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((3, 6, 5)), rng.standard_normal((4, 3, 2, 2))
    batched = conv2d(deers.from_numpy(x[None]), deers.from_numpy(w), padding=1).numpy()
    assert conv2d(deers.from_numpy(x), deers.from_numpy(w), padding=1).shape == batched.shape[1:]
    np.testing.assert_allclose(conv2d(deers.from_numpy(x), deers.from_numpy(w), padding=1).numpy(), batched[0])
    np.testing.assert_allclose(max_pool2d(deers.from_numpy(x), 2).numpy(), max_pool2d(deers.from_numpy(x[None]), 2).numpy()[0])
    line = conv1d(deers.from_numpy(x[:, 0]), deers.from_numpy(w[:, :, 0]))  # (3, 5) -> (4, 4)
    assert line.shape == (4, 4)


def test_im2col_is_a_strided_view_of_the_input():
    x = NDArray.from_numpy(np.arange(2 * 3 * 6 * 7, dtype=np.float64).reshape(2, 3, 6, 7), deers.f64, "cpu")
    view = windows(x, (2, 3), (2, 1), (1, 2))
    assert view.storage_id() == x.storage_id()  # no copy
    assert view.shape == (2, 3, 2, 3, 3, 3)
    assert view.layout.strides == (126, 42, 7, 2, 14, 1)
    array = x.numpy()
    np.testing.assert_array_equal(view.numpy()[1, 2, 1, 2, 0, 1], array[1, 2, 0 * 2 + 1 * 1, 1 * 1 + 2 * 2])


# ---- pooling ----------------------------------------------------------------------------------------
POOLS = [  # (kernel, stride, padding, dilation)
    (2, None, 0, 1), ((3, 2), (2, 1), (1, 1), 1), (3, 2, 1, 1), ((2, 3), (3, 2), (1, 0), 1), (3, 1, 1, 1),
    ((4, 5), (1, 3), (2, 2), 1), ((3, 2), 1, (1, 1), (2, 1)),
]


@pytest.mark.parametrize("index", range(len(POOLS)))
@pytest.mark.parametrize("kind", ["max", "avg", "avg_exclude_pad"])
def test_pooling_like_torch_on_non_contiguous_inputs(kind, index):
    torch = pytest.importorskip("torch")
    kernel, stride, padding, dilation = POOLS[index]
    if kind != "max" and dilation != 1:
        pytest.skip("avg_pool2d has no dilation (as in PyTorch)")
    rng = np.random.default_rng(index)
    x = rng.standard_normal((2, 3, 9, 8))
    x[0, 0, :4, :4] = 0.5  # ties inside windows: the gradient goes to the first maximum, as in PyTorch
    xt = make_input(x, ("permuted", "narrowed")[index % 2], True)
    tx = torch.tensor(x, requires_grad=True)
    if kind == "max":
        y = max_pool2d(xt, kernel, stride, padding, dilation)
        ty = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, dilation)
    else:
        include = kind == "avg"
        y = avg_pool2d(xt, kernel, stride, padding, count_include_pad=include)
        ty = torch.nn.functional.avg_pool2d(tx, kernel, stride, padding, count_include_pad=include)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-12)
    seed = rng.standard_normal(y.shape)
    grads = y.backward(deers.from_numpy(seed))
    ty.backward(torch.tensor(seed))
    np.testing.assert_allclose(grads[xt].numpy(), tx.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_gradients_match_finite_differences(kind):
    x = np.random.default_rng(6).standard_normal((1, 2, 5, 6))  # distinct values: max is differentiable
    if kind == "max":
        _check_gradients(lambda x: max_pool2d(x, (3, 2), (2, 1), 1), [x])
    else:
        _check_gradients(lambda x: avg_pool2d(x, (3, 2), (2, 1), (1, 1)), [x])


def test_max_pool_pads_with_minus_infinity_and_avg_pool_counts_the_padding():
    x = deers.from_numpy(-np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(max_pool2d(x, 2, 1, 1).numpy(), -np.ones((1, 1, 3, 3)))  # never a padded 0
    np.testing.assert_allclose(avg_pool2d(x, 2, 1, 1).numpy()[0, 0, 0, 0], -0.25)  # 1 real of 4
    np.testing.assert_allclose(avg_pool2d(x, 2, 1, 1, count_include_pad=False).numpy()[0, 0, 0, 0], -1.0)
    assert avg_pool2d(deers.zeros(1, 1, 7, 7), 2).shape == (1, 1, 3, 3)  # the size rounds down


# ---- errors: ShapeError naming the op and the shapes, before any arithmetic --------------------------------
@pytest.mark.parametrize("call,words", [
    (lambda: conv2d(deers.zeros(1, 3, 8, 8), deers.zeros(4, 2, 3, 3)), ["conv2d", "3 channels", "(4, 2, 3, 3)"]),
    (lambda: conv2d(deers.zeros(1, 4, 8, 8), deers.zeros(6, 2, 3, 3), groups=3), ["conv2d", "groups=3"]),
    (lambda: conv2d(deers.zeros(1, 4, 8, 8), deers.zeros(6, 4, 3, 3), groups=2), ["conv2d", "expects 8"]),
    (lambda: conv2d(deers.zeros(1, 2, 3, 8), deers.zeros(4, 2, 5, 3), padding=(0, 1)),
     ["conv2d", "larger than the padded input", "(1, 2, 3, 8)", "(4, 2, 5, 3)"]),
    (lambda: conv2d(deers.zeros(2, 8, 8), deers.zeros(4, 2, 3)), ["conv2d", "4-d", "(4, 2, 3)"]),
    (lambda: conv2d(deers.zeros(8, 8), deers.zeros(4, 1, 3, 3)), ["conv2d", "(8, 8)"]),
    (lambda: conv2d(deers.zeros(1, 2, 8, 8), deers.zeros(4, 2, 3, 3), deers.zeros(3)), ["bias", "(3,)"]),
    (lambda: conv1d(deers.zeros(1, 2, 8, 8), deers.zeros(4, 2, 3)), ["conv1d", "(1, 2, 8, 8)"]),
    (lambda: conv1d(deers.zeros(1, 2, 2), deers.zeros(4, 2, 3)), ["conv1d", "larger"]),
    (lambda: max_pool2d(deers.zeros(1, 1, 4, 4), 2, padding=2), ["max_pool2d", "half the kernel"]),
    (lambda: avg_pool2d(deers.zeros(1, 1, 2, 2), 3), ["avg_pool2d", "(1, 1, 2, 2)"]),
    (lambda: max_pool2d(deers.zeros(4, 4), 2), ["max_pool2d", "(4, 4)"]),
])
def test_errors_name_the_op_and_the_shapes(call, words):
    with pytest.raises(ShapeError) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_argument_errors():
    x, w = deers.zeros(1, 2, 6, 6), deers.zeros(4, 2, 3, 3)
    with pytest.raises(ValueError, match="strided"):
        conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, w, stride=0)
    with pytest.raises(TypeError, match="padding"):
        conv2d(x, w, padding=(1, 2, 3))
    with pytest.raises(deers.errors.DTypeError):
        conv2d(x, deers.zeros(4, 2, 3, 3, dtype=deers.f64))


# ---- other backends against the CPU ---------------------------------------------------------------------
def _device_case(device: str) -> None:
    """conv2d (grouped, strided, padded, dilated, with bias), conv1d, both poolings and batch norm's
    functional form on `device` against the CPU, forward and every gradient, f32."""
    from deers.nn import batch_norm

    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(2, 4, 7, 6), (6, 2, 3, 2), (6,), (2, 4, 9), (4,)]]

    def run(dev):
        x, w, b, line, gamma = [deers.tensor(a, device=dev).attach() for a in arrays]
        y = conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
        z = max_pool2d(y, (3, 2), 1, (1, 1))[..., :, 1:] + avg_pool2d(y, 3, 1, 1)  # (2, 6, 4, 8)
        u = conv1d(line, w[:, :, 0], b, padding=1, groups=2)
        v = batch_norm(line, None, None, gamma, None, training=True)
        total = (z * z).sum() + (u * u).sum() + (v * v.exp()).sum()
        grads = total.backward()
        return [y, z, u, v] + [grads[t] for t in (x, w, b, line, gamma)]

    target = deers.tensor(0.0, device=device).device
    for got, expected in zip(run(device), run("cpu")):
        assert got.device == target
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4, rtol=1e-4)


def test_mps_backend_matches_cpu():
    pytest.importorskip("mlx.core")
    _device_case("mps")


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    from cuda_emulator import cuda_backend_fixture

    yield from cuda_backend_fixture(request)


def test_cuda_backend_matches_cpu(cuda):
    _device_case("cuda")



def test_the_im2col_matrix_is_not_kept_after_forward_or_backward():
    """What the graph holds after forward is the output and the padded input, not the column
    matrix (9x the input here); after backward only the gradients are left."""
    import gc

    from deers import memory

    x = deers.randn(4, 8, 12, 12).attach()
    w = deers.randn(16, 8, 3, 3).attach()
    gc.collect()
    before = memory.live_bytes("cpu")
    y = conv2d(x, w, padding=1)  # (4, 16, 12, 12)
    padded, columns = 4 * 8 * 14 * 14 * 4, 8 * 9 * 4 * 12 * 12 * 4
    held = memory.live_bytes("cpu") - before
    assert held <= y.numel() * 4 + padded < columns, held
    grads = y.backward(deers.ones(*y.shape))
    del y
    gc.collect()
    assert memory.live_bytes("cpu") - before <= (grads[x].numel() + grads[w].numel()) * 4

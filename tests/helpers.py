"""check_op: one helper that tests an op forward and backward against references.

    check_op(lambda x, w: x @ w, x_np, w_np, reference=np.matmul)

runs the expression on Deers tensors built from the NumPy inputs, and checks
  1. the forward against `reference(*numpy_inputs)` (when given),
  2. the backward against central finite differences in float64,
  3. forward and backward against the same expression run in PyTorch (when torch is importable).
Every check is repeated for each input layout in `layouts`: contiguous, permuted (strides
reversed), narrowed (a window with an offset into a larger buffer) and broadcast (stride 0 along
dim 0), so each op is exercised on views, not only on fresh buffers.

The expression must use only names that Deers and PyTorch share (x.sum(1), x.relu(), x @ w, ...);
`lib(x)` returns the module (`deers` or `torch`) for functions like `lib(x).cat([x, y], 0)`.
"""
from __future__ import annotations

import numpy as np

import deers
from deers.array import NDArray

try:
    import torch
except ImportError:  # the PyTorch comparison is skipped, the other checks still run
    torch = None

LAYOUTS = ("contiguous", "permuted", "narrowed", "broadcast")


def lib(x):
    """The module that owns x: torch for a torch tensor, deers otherwise."""
    return torch if torch is not None and isinstance(x, torch.Tensor) else deers


def make_input(array: np.ndarray, layout: str, requires_grad: bool = False) -> deers.Tensor:
    """A leaf Deers tensor equal to `array` whose buffer is laid out as `layout` says."""
    array = np.asarray(array)
    dtype = deers.dtype.as_dtype(array.dtype) if array.dtype.kind != "b" else deers.bool_
    if array.ndim == 0 or layout == "contiguous":
        data = NDArray.from_numpy(array, dtype, deers.Device.CPU)
    elif layout == "permuted":  # store the transpose; view it back (strides reversed, or step 2 for 1-D)
        if array.ndim == 1:
            storage = np.zeros(2 * array.shape[0], array.dtype)
            storage[::2] = array
            data = NDArray.from_numpy(storage, dtype, deers.Device.CPU).strided_slice(0, 0, array.shape[0], 2)
        else:
            axes = tuple(reversed(range(array.ndim)))
            data = NDArray.from_numpy(np.ascontiguousarray(array.transpose(axes)), dtype, deers.Device.CPU)
            data = data.permute(axes)
    elif layout == "narrowed":  # a window [1, n+1) of a buffer padded by one on each side of every dim
        storage = np.zeros(tuple(s + 2 for s in array.shape), array.dtype)
        storage[(slice(1, -1),) * array.ndim] = array
        data = NDArray.from_numpy(storage, dtype, deers.Device.CPU)
        for d, size in enumerate(array.shape):
            data = data.narrow(d, 1, size)
    elif layout == "broadcast":  # dim 0 read through stride 0: the caller must pass array[:1] repeated
        row = NDArray.from_numpy(np.ascontiguousarray(array[:1]), dtype, deers.Device.CPU)
        data = row.broadcast_to(array.shape)
        assert array.shape[0] == 1 or data.layout.strides[0] == 0
    else:
        raise ValueError(f"unknown layout {layout!r}")
    np.testing.assert_array_equal(data.numpy(), array)
    tensor = deers.Tensor(data)
    return tensor.attach() if requires_grad else tensor


def _as_broadcast(array: np.ndarray) -> np.ndarray:
    """The values a stride-0 dim 0 can hold: the first row repeated."""
    if array.ndim == 0:
        return array
    return np.ascontiguousarray(np.broadcast_to(array[:1], array.shape))


def _numpy(out) -> np.ndarray:
    return out.detach().numpy() if torch is not None and isinstance(out, torch.Tensor) else out.numpy()


def finite_differences(fn, inputs: list[np.ndarray], seed: np.ndarray, which: list[int], eps: float):
    """d sum(fn(inputs) * seed) / d inputs[i] by central differences, for i in `which` (float64)."""
    def loss(arrays):
        return float((fn(*[deers.from_numpy(a) for a in arrays]).numpy() * seed).sum())

    grads = {}
    for i in which:
        grad = np.zeros_like(inputs[i])
        for k in np.ndindex(inputs[i].shape):
            shifted = [a.copy() for a in inputs]
            shifted[i][k] += eps
            up = loss(shifted)
            shifted[i][k] -= 2 * eps
            grad[k] = (up - loss(shifted)) / (2 * eps)
        grads[i] = grad
    return grads


def check_op(fn, *numpy_inputs, reference=None, torch_fn=None, layouts=LAYOUTS, grad: bool = True,
             atol: float = 1e-6, rtol: float = 1e-6, grad_atol: float = 1e-5, eps: float = 1e-6) -> None:
    """Check `fn` forward (vs `reference` and torch) and backward (vs finite differences and torch).

    Float inputs are cast to float64 and get gradients; integer/bool inputs (indices, masks) are
    passed as they are. `torch_fn` replaces `fn` for PyTorch where the spelling differs; `eps` is
    the finite-difference step (larger when the expression rounds through a low-precision dtype).
    """
    inputs = [np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in numpy_inputs]
    float_inputs = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"]
    for layout in layouts:
        arrays = [_as_broadcast(a) for a in inputs] if layout == "broadcast" else inputs
        tensors = [make_input(a, layout, requires_grad=grad and i in float_inputs) for i, a in enumerate(arrays)]
        out = fn(*tensors)
        expected = None if reference is None else np.asarray(reference(*arrays))
        if expected is not None:
            assert out.shape == expected.shape, f"[{layout}] shape {out.shape}, expected {expected.shape}"
            np.testing.assert_allclose(out.numpy(), expected, atol=atol, rtol=rtol, err_msg=f"[{layout}] forward")
        seed = np.random.default_rng(0).standard_normal(out.shape)
        analytic = {}
        if grad and float_inputs:
            grads = out.backward(deers.from_numpy(seed))
            analytic = {i: grads[tensors[i]].numpy() if tensors[i] in grads else np.zeros(arrays[i].shape)
                        for i in float_inputs}
            for i, g in finite_differences(fn, arrays, seed, float_inputs, eps).items():
                assert analytic[i].shape == arrays[i].shape
                np.testing.assert_allclose(analytic[i], g, atol=grad_atol, rtol=1e-4,
                                           err_msg=f"[{layout}] gradient of input {i} vs finite differences")
        if torch is not None:
            _check_torch(torch_fn or fn, arrays, float_inputs if grad else [], out.numpy(), seed, analytic,
                         atol, rtol, layout)


def _check_torch(fn, arrays, float_inputs, forward, seed, analytic, atol, rtol, layout) -> None:
    """Run the expression in PyTorch (float64) and compare the forward and the input gradients."""
    tensors = [torch.tensor(a, requires_grad=i in float_inputs) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    np.testing.assert_allclose(forward, _numpy(out), atol=atol, rtol=rtol, err_msg=f"[{layout}] forward vs torch")
    if float_inputs:
        out.backward(torch.tensor(seed))
        for i in float_inputs:
            expected = tensors[i].grad.numpy() if tensors[i].grad is not None else np.zeros(arrays[i].shape)
            np.testing.assert_allclose(analytic[i], expected, atol=atol * 10, rtol=rtol * 10,
                                       err_msg=f"[{layout}] gradient of input {i} vs torch")


def rand(*shape: int, seed: int = 0, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """Reproducible uniform float64 test data."""
    return np.random.default_rng(seed).uniform(low, high, shape)

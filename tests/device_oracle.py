"""One op table and one checker for every non-CPU backend against the CPU oracle.

`check_against_cpu(name, layout, dtype, device, tol)` runs OPS[name] on CPU tensors and on
tensors of `device` that read the very same buffer layout (contiguous, permuted, narrowed or
broadcast, as tests/helpers.make_input builds them), then compares the forward and every input's
gradient. The reference is the CPU device computed by the reference backend (the oracle,
deers/backend/reference.py) in f32 (f64 for f64) on the same values rounded to the tested dtype. tests/test_backend_mlx.py and tests/test_cuda_kernels.py parametrize over it.
"""
from __future__ import annotations

import numpy as np

import deers
from deers.array import NDArray
from deers.backend import backend_for, use_backend
from deers.backend.reference import ReferenceBackend
from deers.fused.attention import apply_rope, causal_attention, causal_softmax
from deers.fused.rms_norm import rms_norm
from helpers import make_input

LOW_PRECISION = [d for d in (deers.f16, deers.bf16) if d.available]
LAYOUTS = ("contiguous", "permuted", "narrowed", "broadcast")


def F(*shape, low=-2.0, high=2.0):
    """A float input of `shape` drawn uniformly from [low, high)."""
    return ("float", shape, low, high)


IDX = np.array([4, 0, 4, 2], np.int64)
MASK = np.array([[True, False, True, False]])
_ANGLES = np.outer(np.arange(3), [1.0, 0.1])  # (T, hd/2) = (3, 2)
ROPE_COS = np.concatenate([np.cos(_ANGLES)] * 2, -1)  # (3, 4): [c, c]
ROPE_SIN = np.concatenate([np.sin(_ANGLES)] * 2, -1)  # (3, 4): [s, s]
OPS = {
    # unary
    "neg": (lambda x: -x, [F(3, 4)]),
    "exp": (lambda x: x.exp(), [F(3, 4)]),
    "log": (lambda x: x.log(), [F(3, 4, low=0.2)]),
    "sqrt": (lambda x: x.sqrt(), [F(3, 4, low=0.2)]),
    "rsqrt": (lambda x: x.rsqrt(), [F(3, 4, low=0.2)]),
    "sin": (lambda x: x.sin(), [F(3, 4)]),
    "cos": (lambda x: x.cos(), [F(3, 4)]),
    "tanh": (lambda x: x.tanh(), [F(3, 4)]),
    "sigmoid": (lambda x: x.sigmoid(), [F(3, 4)]),
    "relu": (lambda x: x.relu(), [F(3, 4)]),
    "softplus": (lambda x: x.softplus(), [F(3, 4)]),
    "softplus beta threshold": (lambda x: x.softplus(beta=2.0, threshold=1.5), [F(3, 4)]),
    "abs": (lambda x: x.abs(), [F(3, 4)]),
    "square": (lambda x: x.square(), [F(3, 4)]),
    # binary, broadcasting
    "add": (lambda a, b: a + b, [F(3, 4), F(4)]),
    "sub": (lambda a, b: a - b, [F(2, 3, 4), F(3, 1)]),
    "mul": (lambda a, b: a * b, [F(3, 1), F(1, 4)]),
    "div": (lambda a, b: a / b, [F(3, 4), F(3, 4, low=0.5)]),
    "pow": (lambda a, b: a ** b, [F(3, 4, low=0.5), F(3, 4)]),
    "maximum": (lambda a, b: a.maximum(b), [F(3, 4), F(3, 4)]),
    "minimum": (lambda a, b: a.minimum(b), [F(3, 4), F(4)]),
    # with a Python number
    "scalar add": (lambda x: x + 2.5, [F(3, 4)]),
    "scalar rsub": (lambda x: 2.0 - x, [F(3, 4)]),
    "scalar mul": (lambda x: x * 3.0, [F(3, 4)]),
    "scalar div": (lambda x: x / 4.0, [F(3, 4)]),
    "scalar rdiv": (lambda x: 1.0 / x, [F(3, 4, low=0.5)]),
    "powf": (lambda x: x.powf(3.0), [F(3, 4)]),
    "rpow": (lambda x: 2.0 ** x, [F(3, 4)]),
    "clamp": (lambda x: x.clamp(-0.5, 0.5), [F(3, 4)]),
    # selection
    "where": (lambda a, b: deers.where(a > 0, a, b), [F(3, 4), F(4)]),
    "masked_fill": (lambda x, m: x.masked_fill(m, -5.0), [F(3, 4), MASK]),
    # reductions and the softmax family
    "sum dim": (lambda x: x.sum(1), [F(3, 4)]),
    "sum all": (lambda x: x.sum(), [F(2, 3, 4)]),
    "sum dims keepdim": (lambda x: x.sum((0, 2), keepdim=True), [F(2, 3, 4)]),
    "sum over rows (cols kernel)": (lambda x: x.sum(0), [F(300, 3)]),
    "mean": (lambda x: x.mean(-1), [F(2, 3, 4)]),
    "max dim": (lambda x: x.max(1).values, [F(3, 4)]),
    "amax dim": (lambda x: x.amax(1), [F(3, 4)]),
    "min dims": (lambda x: x.amin((0, 1)), [F(3, 4, 2)]),
    "min dim": (lambda x: x.min(0).values, [F(3, 4)]),
    "max all": (lambda x: x.max(), [F(3, 4)]),
    "logsumexp": (lambda x: x.logsumexp(1), [F(3, 4)]),
    "softmax last": (lambda x: x.softmax(-1), [F(2, 3, 5)]),
    "softmax dim 0": (lambda x: x.softmax(0), [F(3, 4)]),
    "log_softmax": (lambda x: x.log_softmax(-1), [F(3, 5)]),
    # matmul
    "matmul 2d": (lambda a, b: a @ b, [F(3, 4), F(4, 5)]),
    "matmul batched": (lambda a, b: a @ b, [F(2, 3, 4), F(2, 4, 5)]),
    "matmul broadcast batch": (lambda a, b: a @ b, [F(2, 1, 3, 4), F(3, 4, 2)]),
    "matmul 3d @ 2d": (lambda a, b: a @ b, [F(2, 3, 4), F(4, 5)]),
    "matvec": (lambda a, b: a @ b, [F(3, 4), F(4)]),
    # views and copies
    "permute compact": (lambda x: x.permute(2, 0, 1).compact() * 1.0, [F(2, 3, 4)]),
    "reshape copy": (lambda x: x.transpose(0, 1).reshape(-1) * 1.0, [F(3, 4)]),
    "narrow": (lambda x: x.narrow(1, 1, 2) * 2.0, [F(3, 4)]),
    "getitem slices": (lambda x: x[1:, ::2] * 1.0, [F(3, 4)]),
    "getitem int": (lambda x: x[..., 1] * 1.0, [F(3, 4)]),
    "cat": (lambda a, b: deers.cat([a, b], 1), [F(3, 2), F(3, 4)]),
    "stack": (lambda a, b: deers.stack([a, b], 0), [F(3, 4), F(3, 4)]),
    "broadcast_to": (lambda x: x.broadcast_to(2, 3, 4) * 1.0, [F(3, 1)]),
    # indexing
    "index_select": (lambda x, i: x.index_select(0, i), [F(5, 3), IDX]),
    "index_select dim 1": (lambda x, i: x.index_select(1, i), [F(3, 5), IDX]),
    "embedding": (lambda w, i: deers.embedding(w, i), [F(5, 3), IDX.reshape(2, 2)]),
    "getitem tensor": (lambda x, i: x[i], [F(5, 3), IDX]),
    "gather": (lambda x, i: x.gather(1, i), [F(3, 5), np.array([[0, 4], [2, 2], [1, 0]])]),
    "gather dim 0, smaller index": (lambda x, i: x.gather(0, i), [F(3, 5), np.array([[2, 0, 2], [1, 1, 0]])]),
    # fused kernels
    "rms_norm": (lambda x, w: rms_norm(x, w, 1e-5), [F(2, 3, 8), F(8)]),
    "causal_softmax": (lambda s: causal_softmax(s, 0.5), [F(2, 4, 4)]),
    "causal_softmax with cached positions": (lambda s: causal_softmax(s, 0.5), [F(2, 3, 5)]),
    "causal_attention": (lambda q, k, v: causal_attention(q, k, v, 0.5), [F(2, 4, 3), F(2, 4, 3), F(2, 4, 5)]),
    "causal_attention with cached positions": (lambda q, k, v: causal_attention(q, k, v, 0.5),
                                               [F(2, 3, 3), F(2, 5, 3), F(2, 5, 2)]),
    "rope": (lambda x: apply_rope(x, deers.tensor(ROPE_COS, dtype=x.dtype, device=x.device),
                                  deers.tensor(ROPE_SIN, dtype=x.dtype, device=x.device)), [F(2, 3, 4)]),
    "cross_entropy": (lambda x: deers.loss.cross_entropy(x, deers.tensor([1, 0, 4], device=x.device)), [F(3, 5)]),
}


def _build(array: np.ndarray, layout: str, dtype: deers.DType, device) -> tuple[deers.Tensor, deers.Tensor]:
    """(cpu reference, device tensor) holding `array`, floats rounded to `dtype` first.

    The device tensor gets the CPU tensor's buffer and exact Layout, so it reads the same strides
    and offset. Index and mask inputs stay contiguous (broadcast would change their values).
    """
    if array.dtype.kind != "f":
        cpu = make_input(array, "contiguous")
        return cpu, cpu.to_device(device)
    if layout == "broadcast" and array.ndim:
        array = np.ascontiguousarray(np.broadcast_to(array[:1], array.shape))
    rounded = array.astype(dtype.numpy)
    host = make_input(rounded, layout).data
    on_device = NDArray(backend_for(device).from_numpy(host.buffer, dtype), host.layout, dtype, device)
    assert on_device.layout == host.layout
    reference = make_input(rounded.astype(np.float64 if dtype is deers.f64 else np.float32), layout)
    return reference.attach(), deers.Tensor(on_device).attach()


def assert_close(got: deers.Tensor, expected: deers.Tensor, dtype: deers.DType, device, tol: dict,
                 what: str) -> None:
    """`got` (on `device`, in `dtype` when float) equals the CPU `expected` within tol[dtype.name]."""
    assert got.device == device, f"{what}: result on {got.device}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape} vs {expected.shape}"
    assert got.dtype is (dtype if expected.dtype.is_float else expected.dtype), f"{what}: dtype {got.dtype}"
    if expected.dtype.is_float:
        atol, rtol = tol[dtype.name]
        np.testing.assert_allclose(got.numpy().astype(np.float64), expected.numpy().astype(np.float64),
                                   atol=atol, rtol=rtol, err_msg=what)
    else:
        np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=what)


ORACLE = ReferenceBackend()


def check_against_cpu(name: str, layout: str, dtype: deers.DType, device, tol: dict) -> None:
    """Run OPS[name] on cpu and `device` inputs; compare the forward and every input's gradient.
    The cpu side computes on the reference backend."""
    previous = use_backend("cpu", ORACLE)
    try:
        _check_against_cpu(name, layout, dtype, device, tol)
    finally:
        use_backend("cpu", previous)


def _check_against_cpu(name: str, layout: str, dtype: deers.DType, device, tol: dict) -> None:
    fn, specs = OPS[name]
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(s[2], s[3], s[1]) if isinstance(s, tuple) else np.asarray(s) for s in specs]
    pairs = [_build(a, layout, dtype, device) for a in arrays]
    cpu_inputs, device_inputs = [p[0] for p in pairs], [p[1] for p in pairs]
    cpu_out, device_out = fn(*cpu_inputs), fn(*device_inputs)
    assert_close(device_out, cpu_out, dtype, device, tol, f"{name} [{layout}, {dtype.name}] forward")
    seed = np.random.default_rng(1).standard_normal(cpu_out.shape).astype(dtype.numpy)
    cpu_grads = cpu_out.backward(deers.tensor(seed.astype(cpu_out.dtype.numpy), dtype=cpu_out.dtype))
    device_grads = device_out.backward(deers.tensor(seed, dtype=dtype, device=device))
    for i, (cpu_in, device_in) in enumerate(zip(cpu_inputs, device_inputs)):
        if cpu_in.requires_grad:
            assert_close(device_grads[device_in], cpu_grads[cpu_in], dtype, device, tol,
                         f"{name} [{layout}, {dtype.name}] grad {i}")

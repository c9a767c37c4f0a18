"""Creation functions (tensor, zeros, randn, eye, linspace, ..._like) and the random seed shared by
every backend. Sizes must be ints: `ones(2.5)` raises instead of making shape (2,)."""
from __future__ import annotations

import operator

import numpy as np

from .array import NDArray, rng_states, seed_all_devices, set_rng_states
from .device import Device, as_device
from .dtype import DType, as_dtype, default_float, i64
from .tensor import Tensor

_host = {"rng": np.random.default_rng()}  # the host generator for data sampling and dropout masks


def _size(s, op: str) -> int:
    """One dim size: an int (or an integer-like object, `operator.index`), never a float or bool."""
    if isinstance(s, bool):
        raise TypeError(f"{op}: sizes must be ints, got {s!r}")
    try:
        n = operator.index(s)
    except TypeError:
        raise TypeError(f"{op}: sizes must be ints, got {s!r} ({type(s).__name__})") from None
    if n < 0:
        raise ValueError(f"{op}: sizes must be >= 0, got {n}")
    return n


def _shape(shape, op: str = "creation") -> tuple[int, ...]:
    """Accept both zeros(2, 3) and zeros((2, 3)); every size checked by `_size`."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(_size(s, op) for s in shape)


def tensor(data, dtype: "DType | str | None" = None, device: "Device | str | None" = None,
           requires_grad: bool = False) -> Tensor:
    """A tensor from nested lists, numbers or a NumPy array (floats default to f32, ints to i64; a
    NumPy array keeps its float type, and a uint8 array stays u8, as torch.tensor does)."""
    if isinstance(data, Tensor):
        data = data.numpy()
    array = np.asarray(data)
    if dtype is None:
        if array.dtype.kind == "f":  # a NumPy array keeps its float type; Python floats become f32
            dtype = as_dtype(array.dtype) if isinstance(data, (np.ndarray, np.generic)) else default_float()
        elif array.dtype.kind == "b":
            dtype = as_dtype("bool")
        elif array.dtype == np.uint8 and isinstance(data, (np.ndarray, np.generic)):
            dtype = as_dtype("u8")
        elif array.dtype.kind in "iu":
            dtype = i64  # Deers' one signed integer type
        else:
            dtype = as_dtype(array.dtype)
    return Tensor(NDArray.from_numpy(array, as_dtype(dtype), as_device(device)), requires_grad=requires_grad)


def from_numpy(array: np.ndarray, device: "Device | str | None" = None) -> Tensor:
    """A tensor with the NumPy array's dtype (copied to the device's buffer)."""
    array = np.asarray(array)
    return Tensor(NDArray.from_numpy(array, as_dtype(array.dtype), as_device(device)))


def full(shape, value, dtype: "DType | str | None" = None, device: "Device | str | None" = None) -> Tensor:
    shape = _shape((shape,), "full")
    dtype = as_dtype(dtype) if dtype is not None else (i64 if isinstance(value, (int, np.integer))
                                                        and not isinstance(value, bool) else default_float())
    return Tensor(NDArray.full(shape, value, dtype, as_device(device)))


def zeros(*shape, dtype=None, device=None) -> Tensor:
    return full(_shape(shape, "zeros"), 0, as_dtype(dtype) if dtype is not None else default_float(), device)


def ones(*shape, dtype=None, device=None) -> Tensor:
    return full(_shape(shape, "ones"), 1, as_dtype(dtype) if dtype is not None else default_float(), device)


def empty(*shape, dtype=None, device=None) -> Tensor:
    """A tensor whose values are unspecified (to be overwritten); default dtype f32."""
    dtype = as_dtype(dtype) if dtype is not None else default_float()
    return Tensor(NDArray.empty(_shape(shape, "empty"), dtype, as_device(device)))


def full_like(x: Tensor, value, dtype=None, device=None) -> Tensor:
    """A tensor shaped like x filled with value, with x's dtype and device unless given."""
    return full(x.shape, value, x.dtype if dtype is None else dtype, x.device if device is None else device)


def zeros_like(x: Tensor, dtype=None, device=None) -> Tensor:
    return full_like(x, 0, dtype, device)


def ones_like(x: Tensor, dtype=None, device=None) -> Tensor:
    return full_like(x, 1, dtype, device)


def empty_like(x: Tensor, dtype=None, device=None) -> Tensor:
    return empty(x.shape, dtype=x.dtype if dtype is None else dtype, device=x.device if device is None else device)


def randn_like(x: Tensor, dtype=None, device=None) -> Tensor:
    """Standard normal samples shaped like x (x's dtype and device unless given)."""
    return randn(x.shape, dtype=x.dtype if dtype is None else dtype, device=x.device if device is None else device)


def rand_like(x: Tensor, dtype=None, device=None) -> Tensor:
    """Uniform [0, 1) samples shaped like x (x's dtype and device unless given)."""
    return rand(x.shape, dtype=x.dtype if dtype is None else dtype, device=x.device if device is None else device)


def eye(n: int, m: int | None = None, dtype=None, device=None) -> Tensor:
    """The (n, m) identity matrix: ones on the diagonal (m defaults to n)."""
    n = _size(n, "eye")
    m = n if m is None else _size(m, "eye")
    return tensor(np.eye(n, m), dtype=dtype if dtype is not None else default_float(), device=device)


def linspace(start: float, end: float, steps: int, dtype=None, device=None) -> Tensor:
    """`steps` evenly spaced values from start to end inclusive (computed in f64, then cast)."""
    steps = _size(steps, "linspace")
    return tensor(np.linspace(float(start), float(end), steps), dtype=dtype if dtype is not None else default_float(),
                  device=device)


def arange(start, end=None, step=1, dtype=None, device=None) -> Tensor:
    if end is None:
        start, end = 0, start
    values = np.arange(start, end, step)
    if dtype is None:
        dtype = i64 if values.dtype.kind in "iu" else default_float()
    return tensor(values, dtype=dtype, device=device)


def _random(kind: str, shape, dtype, device) -> Tensor:
    shape = _shape(shape, kind)
    dtype = as_dtype(dtype) if dtype is not None else default_float()
    device = as_device(device)
    return Tensor(NDArray.random(kind, shape, dtype, device))


def randn(*shape, dtype=None, device=None) -> Tensor:
    """Standard normal samples from the device's generator (seeded by manual_seed)."""
    return _random("randn", shape, dtype, device)


def rand(*shape, dtype=None, device=None) -> Tensor:
    """Uniform [0, 1) samples from the device's generator."""
    return _random("rand", shape, dtype, device)


def randint(low: int, high: int, shape, device=None) -> Tensor:
    """Uniform integers in [low, high) as i64."""
    shape = _shape((shape,), "randint")
    device = as_device(device)
    return Tensor(NDArray.randint(shape, low, high, device))


def manual_seed(seed: int) -> None:
    """Seed every backend's generator and the host generator used for data order and sampling."""
    _host["rng"] = np.random.default_rng(seed)
    seed_all_devices(seed)


def host_rng() -> np.random.Generator:
    """The host NumPy generator that data loaders and samplers draw from (seeded by manual_seed)."""
    return _host["rng"]


def get_rng_state() -> dict:
    """Every generator's state, for checkpoints (restored by set_rng_state)."""
    state = {"host": _host["rng"].bit_generator.state}
    state.update(rng_states())
    return state


def set_rng_state(state: dict) -> None:
    _host["rng"].bit_generator.state = state["host"]
    set_rng_states(state)

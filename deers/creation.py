"""Creation functions (tensor, zeros, randn, ...) and the random seed shared by every backend."""
from __future__ import annotations


import numpy as np

from .array import NDArray, rng_states, seed_all_devices, set_rng_states
from .device import Device, as_device
from .dtype import DType, as_dtype, default_float, i64
from .tensor import Tensor

_host = {"rng": np.random.default_rng()}  # the host generator for data sampling and dropout masks


def _shape(shape) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(int(s) for s in shape[0])
    return tuple(int(s) for s in shape)


def tensor(data, dtype: "DType | str | None" = None, device: "Device | str | None" = None,
           requires_grad: bool = False) -> Tensor:
    """A tensor from nested lists, numbers or a NumPy array (floats default to f32, ints to i64)."""
    if isinstance(data, Tensor):
        data = data.numpy()
    array = np.asarray(data)
    if dtype is None:
        if array.dtype.kind == "f":  # a NumPy array keeps its float type; Python floats become f32
            dtype = as_dtype(array.dtype) if isinstance(data, (np.ndarray, np.generic)) else default_float()
        elif array.dtype.kind == "b":
            dtype = as_dtype("bool")
        elif array.dtype.kind in "iu":
            dtype = i64
        else:
            dtype = as_dtype(array.dtype)
    return Tensor(NDArray.from_numpy(array, as_dtype(dtype), as_device(device)), requires_grad=requires_grad)


def from_numpy(array: np.ndarray, device: "Device | str | None" = None) -> Tensor:
    """A tensor with the NumPy array's dtype (copied to the device's buffer)."""
    array = np.asarray(array)
    return Tensor(NDArray.from_numpy(array, as_dtype(array.dtype), as_device(device)))


def full(shape, value, dtype: "DType | str | None" = None, device: "Device | str | None" = None) -> Tensor:
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    dtype = as_dtype(dtype) if dtype is not None else (i64 if isinstance(value, (int, np.integer))
                                                        and not isinstance(value, bool) else default_float())
    return Tensor(NDArray.full(shape, value, dtype, as_device(device)))


def zeros(*shape, dtype=None, device=None) -> Tensor:
    return full(_shape(shape), 0, as_dtype(dtype) if dtype is not None else default_float(), device)


def ones(*shape, dtype=None, device=None) -> Tensor:
    return full(_shape(shape), 1, as_dtype(dtype) if dtype is not None else default_float(), device)


def zeros_like(x: Tensor) -> Tensor:
    return full(x.shape, 0, x.dtype, x.device)


def ones_like(x: Tensor) -> Tensor:
    return full(x.shape, 1, x.dtype, x.device)


def arange(start, end=None, step=1, dtype=None, device=None) -> Tensor:
    if end is None:
        start, end = 0, start
    values = np.arange(start, end, step)
    if dtype is None:
        dtype = i64 if values.dtype.kind in "iu" else default_float()
    return tensor(values, dtype=dtype, device=device)


def _random(kind: str, shape, dtype, device) -> Tensor:
    shape = _shape(shape)
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
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
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

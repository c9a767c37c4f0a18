"""Errors raised by Deers. Each names the op and describes the operands it got."""
from __future__ import annotations


class DeersError(Exception):
    """Base class of every error Deers raises on purpose."""


class ShapeError(DeersError, ValueError):
    """Operand shapes do not fit the op."""


class DTypeError(DeersError, TypeError):
    """Operand dtypes do not fit the op (mixed dtypes, integers where floats are needed)."""


class DeviceError(DeersError, ValueError):
    """Operands live on different devices, or a device is not available."""


class InPlaceError(DeersError, RuntimeError):
    """An in-place write that would make the recorded graph give wrong gradients (a leaf that
    requires grad under grad mode, an operand of the graph, or an array saved for backward)."""


class BackendUnavailable(DeviceError):
    """A device was asked for whose backend package is not installed."""


class NotImplementedOnDevice(DeersError, NotImplementedError):
    """A backend lacks a primitive name of the shared vocabulary (say a unary function the reference
    backend has and this device has no kernel for yet): "softplus is not implemented on cuda:0"."""


class BackendContractError(DeersError, TypeError):
    """An object installed as a backend (`deers.backend.use_backend`) does not implement the
    contract: a primitive is missing or its parameters differ from the `Backend` Protocol's."""


def describe(t) -> str:
    """One operand as `shape (2, 3) f32 cpu` for error messages."""
    return f"shape {tuple(t.shape)} {t.dtype.name} {t.device}"

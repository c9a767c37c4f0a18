"""Devices: where a tensor's buffer lives. Strings "cpu", "cuda", "cuda:1", "mps" are accepted."""
from __future__ import annotations

from .errors import DeviceError


class Device:
    """A device kind ("cpu", "cuda", "mps") and an index (for several GPUs)."""

    __slots__ = ("kind", "index")
    CPU: "Device"
    CUDA: "Device"
    MPS: "Device"

    def __init__(self, kind: str, index: int = 0):
        if kind not in ("cpu", "cuda", "mps"):
            raise DeviceError(f"unknown device kind {kind!r}; expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
        self.kind = kind
        self.index = index

    @staticmethod
    def cuda(index: int = 0) -> "Device":
        return Device("cuda", index)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = as_device(other)
            except ValueError:  # not a device string: simply not equal
                return False
        return isinstance(other, Device) and self.kind == other.kind and self.index == other.index

    def __hash__(self) -> int:
        return hash((self.kind, self.index))

    def __repr__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    def __reduce__(self):
        return (Device, (self.kind, self.index))


Device.CPU = Device("cpu")
Device.CUDA = Device("cuda", 0)
Device.MPS = Device("mps")


def as_device(value: "Device | str | None") -> Device:
    """Parse "cpu", "cuda", "cuda:1", "mps" (or pass a Device through); None means CPU."""
    if value is None:
        return Device.CPU
    if isinstance(value, Device):
        return value
    if isinstance(value, str):
        kind, _, index = value.partition(":")
        if index and not index.isdigit():
            raise DeviceError(f"device {value!r}: the index after ':' must be a number, as in 'cuda:1'")
        return Device(kind, int(index) if index else 0)
    raise TypeError(f"expected a Device or a device string, got {type(value).__name__}")

"""How many bytes of device memory Deers holds right now, and the most it has held.

    deers.memory.live_bytes("cpu")     # bytes of the live buffers on the CPU
    deers.memory.peak_bytes("cpu")     # the most there were at once since the last reset
    deers.memory.reset_peak("cpu")     # start a new peak from the current live bytes

What is counted: every fresh buffer an `NDArray` makes (a result of a primitive, a copy, an array
made from NumPy, `full`, `empty`, random samples) with its full size, `numel * itemsize`. Views
(permute, narrow, broadcast, reshape without a copy) share their buffer and add nothing; a buffer
that several views keep alive counts once and is released when the last of them is gone.

How: `deers/array.py` calls `track(buffer, nbytes, device)` in the one place a fresh buffer gets
wrapped. The ledger keeps a weak reference to the buffer (an opaque object here: nothing in this
file reads or calls it) whose callback takes the bytes off when Python frees the buffer. No list
of tensors is kept, so the ledger never keeps memory alive. What a backend holds on its own — an
allocator's cache (CuPy's pool, MLX's cache), kernels, BLAS workspaces — is not Deers' and is not
counted; `peak_bytes` is therefore a lower bound of what the device saw.
"""
from __future__ import annotations

import threading
import weakref

from .device import Device, as_device


class _Held(weakref.ref):
    """A weak reference to one tracked buffer that remembers what to take off when it dies."""

    __slots__ = ("key", "nbytes", "device")


class _Ledger:
    """Live and peak bytes per device name ("cpu", "cuda:0", "mps"), and the total ever allocated."""

    def __init__(self):
        # Reentrant: a weak-reference callback may run (the garbage collector) while this thread holds it.
        self.lock = threading.RLock()
        self.held: dict[int, _Held] = {}  # id(buffer) -> its weak reference
        self.live: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.allocated = 0  # bytes of every buffer ever tracked, on all devices (the profiler's per-op bytes)
        self.watchers: list[dict[str, int]] = []  # extra peaks kept by running profiles
        self._release = self.release  # bound once: one callback object for every buffer

    def track(self, buffer, nbytes: int, device: Device) -> None:
        """Count a fresh buffer of `nbytes` on `device` until it is freed (called by deers/array.py)."""
        key = id(buffer)
        if key in self.held:  # the backend handed back a buffer Deers already holds
            return
        try:
            held = _Held(buffer, self._release)
        except TypeError:  # a buffer type without weak references cannot be followed to its end
            return
        name = str(device)
        held.key, held.nbytes, held.device = key, nbytes, name
        with self.lock:
            self.held[key] = held
            live = self.live.get(name, 0) + nbytes
            self.live[name] = live
            self.allocated += nbytes
            if live > self.peak.get(name, 0):
                self.peak[name] = live
            for peak in self.watchers:
                if live > peak.get(name, 0):
                    peak[name] = live

    def release(self, held: _Held) -> None:
        """The weak reference's callback: the buffer is gone."""
        with self.lock:
            if self.held.get(held.key) is held:
                del self.held[held.key]
                self.live[held.device] -= held.nbytes


_ledger = _Ledger()


track = _ledger.track  # deers/array.py calls it for every fresh buffer: no wrapper in between


def untrack(buffer) -> None:
    """Stop counting `buffer` now: its memory has been handed to a new buffer object that is tracked
    instead (a fused cross-entropy writes its gradient over the logits), so it must not count twice."""
    held = _ledger.held.get(id(buffer))
    if held is not None:
        _ledger.release(held)


def _name(device: "Device | str") -> str:
    return str(as_device(device))


def live_bytes(device: "Device | str" = "cpu") -> int:
    """Bytes of the buffers Deers holds on `device` now."""
    return _ledger.live.get(_name(device), 0)


def peak_bytes(device: "Device | str" = "cpu") -> int:
    """The most bytes Deers held on `device` at once since the start or the last `reset_peak`."""
    return _ledger.peak.get(_name(device), 0)


def reset_peak(device: "Device | str" = "cpu") -> None:
    """Start measuring the peak of `device` again from its current live bytes."""
    name = _name(device)
    with _ledger.lock:
        _ledger.peak[name] = _ledger.live.get(name, 0)


def allocated_bytes() -> int:
    """Bytes of all buffers ever allocated, on every device (a counter: differences are what ran between)."""
    return _ledger.allocated


def devices() -> list[str]:
    """The names of the devices that have had buffers counted, e.g. ["cpu", "mps"]."""
    return sorted(_ledger.live)


def watch_peak() -> dict[str, int]:
    """A peak of its own, per device name, that starts at the live bytes now and rises while watched.

    For `deers.profiler`: a profile reports the peak over its block without resetting the peak
    another user reads. Stop watching with `unwatch_peak(peak)`.
    """
    with _ledger.lock:
        peak = dict(_ledger.live)
        _ledger.watchers.append(peak)
    return peak


def unwatch_peak(peak: dict[str, int]) -> None:
    """Stop raising a peak that `watch_peak` gave."""
    with _ledger.lock:
        _ledger.watchers = [w for w in _ledger.watchers if w is not peak]

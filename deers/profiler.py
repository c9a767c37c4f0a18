"""Where a step's time and memory go: per-op forward and backward time, calls and bytes.

    with deers.profiler.profile() as prof:
        loss = model.loss(idx, targets)
        grads = loss.backward()
    print(prof.table())              # op | calls | forward ms | backward ms | total ms | % | bytes
    prof.events()                    # one Event per op run: name, phase, seconds, bytes, shape, device

How it hooks in: `apply` (deers/tensor.py) runs every forward and `run_backward`
(deers/autograd.py) every backward; each reads `profiling.session`, a per-thread attribute like
autograd's grad mode, once. When it is None (not profiling) nothing else happens — that one check is
the whole cost. Inside a profile each op is timed with `time.perf_counter` around its forward or
backward, with `NDArray.synchronize()` before and after on its device, so that on asynchronous
devices (cuda, mps) the time is the op's work and not the time to queue it. The bytes of an event
are the fresh buffers the op allocated (`deers.memory`); the profile's peak is the most live bytes
per device during the block.

What is not an op is not in the table: the optimizer's fused update, gradient clipping and host
reads (`loss.item()`) run on NDArrays directly. The table's last lines say how much of the block's
wall time that was.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from . import memory


class _Profiling(threading.local):
    """The profile that records this thread's ops, or None (the common case: not profiling)."""

    session: "Profile | None" = None


profiling = _Profiling()


@dataclass(frozen=True)
class Event:
    """One run of one op: its class name, "forward" or "backward", the seconds it took, the bytes
    of the buffers it allocated, its output shape (forward) or incoming gradient's shape (backward),
    its device, and the live bytes on that device right after it (a memory timeline of the block)."""

    name: str
    phase: str
    seconds: float
    bytes: int
    shape: tuple[int, ...]
    device: str
    live_bytes: int = 0


@dataclass
class OpTotals:
    """One row of the table: an op's runs added up."""

    name: str
    calls: int = 0  # forward runs (a backward run is the same call's other half)
    forward_seconds: float = 0.0
    backward_seconds: float = 0.0
    bytes: int = 0

    @property
    def seconds(self) -> float:
        return self.forward_seconds + self.backward_seconds


SORT_KEYS: dict[str, Callable[[OpTotals], object]] = {
    "total": lambda row: -row.seconds,
    "forward": lambda row: -row.forward_seconds,
    "backward": lambda row: -row.backward_seconds,
    "calls": lambda row: -row.calls,
    "bytes": lambda row: -row.bytes,
    "name": lambda row: row.name,
}


class Profile:
    """The record of one profiled block. Use `profile()` as a context manager, or `start()`/`stop()`."""

    def __init__(self):
        self._events: list[Event] = []
        self.wall_seconds = 0.0  # of the whole block, ops or not
        self.overhead_seconds = 0.0  # the profiler's own share of the wall: its syncs and bookkeeping
        self.peak: dict[str, int] = {}  # device name -> most live bytes during the block
        self.start_live: dict[str, int] = {}  # device name -> live bytes when the block began
        self._started: float | None = None
        self._watch: dict[str, int] | None = None

    # ---- starting and stopping ---------------------------------------------------------------
    def start(self) -> "Profile":
        """Record the ops this thread runs from now on (one profile at a time per thread)."""
        if profiling.session is not None:
            raise RuntimeError("profiler: a profile (or detect_anomaly) is already running in this thread; stop it first")
        self._watch = memory.watch_peak()
        self.start_live = dict(self._watch)
        self._started = time.perf_counter()
        profiling.session = self
        return self

    def stop(self) -> "Profile":
        """Stop recording; the table and events are ready."""
        if profiling.session is not self:
            raise RuntimeError("profiler: stop() of a profile that is not running in this thread")
        profiling.session = None
        self.wall_seconds += time.perf_counter() - self._started
        memory.unwatch_peak(self._watch)
        self.peak = dict(self._watch)
        return self

    def __enter__(self) -> "Profile":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- recording (called by apply and run_backward) -------------------------------------------
    def run(self, phase: str, op, call: Callable, arrays: Sequence):
        """Run `call(*arrays)` — an op's forward or backward — and record one Event for it.

        Ops that run inside it (a composite's forward that applies other ops) are part of its time,
        not events of their own, so the events never count a moment twice.
        """
        entered = time.perf_counter()
        anchor = next((a for a in arrays if a is not None), None)
        profiling.session = None
        try:
            if anchor is not None:
                anchor.synchronize()  # work queued before this op is not this op's
            allocated = memory.allocated_bytes()
            began = time.perf_counter()
            result = call(*arrays)
            if anchor is not None:
                anchor.synchronize()
            seconds = time.perf_counter() - began
        finally:
            profiling.session = self
        shaped = result if phase == "forward" else arrays[0]
        shape = tuple(getattr(shaped, "shape", ()))
        device = str(anchor.device) if anchor is not None else str(getattr(result, "device", "cpu"))
        self._events.append(Event(type(op).__name__, phase, seconds, memory.allocated_bytes() - allocated,
                                  shape, device, memory.live_bytes(device)))
        self.overhead_seconds += time.perf_counter() - entered - seconds
        return result

    # ---- reading --------------------------------------------------------------------------------
    def events(self) -> list[Event]:
        """Every op run, in the order they ran."""
        return list(self._events)

    def totals(self, sort_by: str = "total") -> list[OpTotals]:
        """The events added up per op name, sorted by `sort_by` (one of SORT_KEYS)."""
        if sort_by not in SORT_KEYS:
            raise ValueError(f"profiler: sort_by must be one of {', '.join(SORT_KEYS)}, got {sort_by!r}")
        rows: dict[str, OpTotals] = {}
        for event in self._events:
            row = rows.setdefault(event.name, OpTotals(event.name))
            if event.phase == "forward":
                row.calls += 1
                row.forward_seconds += event.seconds
            else:
                row.backward_seconds += event.seconds
            row.bytes += event.bytes
        return sorted(rows.values(), key=SORT_KEYS[sort_by])

    def op_seconds(self) -> float:
        """Seconds spent inside ops (forward and backward), at most the block's wall time."""
        return sum(event.seconds for event in self._events)

    def table(self, sort_by: str = "total", limit: int | None = None) -> str:
        """A compact text table: op, calls, forward/backward/total ms, % of the block, bytes allocated."""
        rows = self.totals(sort_by)
        shown = rows if limit is None else rows[:limit]
        wall = self.wall_seconds or 1e-12
        width = max([len("op")] + [len(row.name) for row in shown])
        header = (f"{'op':<{width}}  {'calls':>6}  {'fwd ms':>9}  {'bwd ms':>9}  {'total ms':>9}  {'%':>5}  "
                  f"{'bytes':>9}")
        lines = [header, "-" * len(header)]
        for row in shown:
            lines.append(f"{row.name:<{width}}  {row.calls:>6}  {row.forward_seconds * 1e3:>9.2f}  "
                         f"{row.backward_seconds * 1e3:>9.2f}  {row.seconds * 1e3:>9.2f}  "
                         f"{100 * row.seconds / wall:>5.1f}  {format_bytes(row.bytes):>9}")
        if len(shown) < len(rows):
            rest = rows[len(shown):]
            seconds = sum(row.seconds for row in rest)
            lines.append(f"{f'({len(rest)} more ops)':<{width}}  {sum(r.calls for r in rest):>6}  {'':>9}  {'':>9}  "
                         f"{seconds * 1e3:>9.2f}  {100 * seconds / wall:>5.1f}  "
                         f"{format_bytes(sum(r.bytes for r in rest)):>9}")
        inside = self.op_seconds()
        lines.append("-" * len(header))
        outside = max(self.wall_seconds - inside - self.overhead_seconds, 0.0)
        lines.append(f"wall {self.wall_seconds * 1e3:.2f} ms = in ops {inside * 1e3:.2f} ms ({100 * inside / wall:.1f}%)"
                     f" + outside ops {outside * 1e3:.2f} ms (optimizer, clipping, host reads, Python)"
                     f" + profiler {self.overhead_seconds * 1e3:.2f} ms (its syncs and records)")
        peaks = ", ".join(f"{name} {format_bytes(peak)} (+{format_bytes(peak - self.start_live.get(name, 0))} "
                          f"over the start)" for name, peak in sorted(self.peak.items()) if peak)
        if peaks:
            lines.append(f"peak live bytes during the block: {peaks}")
        return "\n".join(lines)


def profile() -> Profile:
    """A profile of the ops run in a `with` block (or between `start()` and `stop()`)."""
    return Profile()


def format_bytes(count: int) -> str:
    """1536 -> '1.5 KiB': a byte count short enough for a table column."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

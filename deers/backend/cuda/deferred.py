"""Errors found by kernels, raised at the next sync point instead of stalling every launch.

An indexing kernel (indexing.cu) or the cross-entropy target check (cross_entropy.cu) that meets an
index outside [0, size) writes [1, value, call] into the backend's 3-int64 device flag
(`flag_index_error` in common.cuh: the first offender wins). Reading that flag after each launch
would make the host wait for the GPU on every embedding lookup; instead each such launch is given
a call number, its op name and dimension size are remembered here, and the flag is read when the
host waits for the device anyway — `to_numpy` (so `.item()` and `.numpy()`) and `synchronize` —
where the IndexError is raised with the op's name and the offending value. Like PyTorch's device
asserts, the error surfaces after the launch; unlike them the backend stays usable afterwards.
"""
from __future__ import annotations

import numpy as np

MAX_PENDING = 4096  # calls remembered between sync points; past that the flag is checked (one sync)


class DeferredErrors:
    """The device error flag of one CUDA backend and the launches that may have set it."""

    def __init__(self, backend):
        self.backend = backend
        self.flag = backend._zeros(3, np.dtype(np.int64))  # [set, offending value, call number]
        self.pending: dict[int, tuple[str, int]] = {}  # call number -> (op, size of the indexed dim)
        self.calls = 0

    def call(self, op: str, size: int) -> np.int64:
        """The number to pass to a checking kernel launch of `op` over a dim of `size` entries."""
        if len(self.pending) >= MAX_PENDING:
            self.raise_pending()
        self.calls += 1
        self.pending[self.calls] = (op, size)
        return np.int64(self.calls)

    def raise_pending(self) -> None:
        """Raise the IndexError a kernel recorded since the last check, if any (reads the flag)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        flag = self.backend.rt.download(self.flag)
        if not flag[0]:
            return
        self.backend._fill(self.flag, 0)
        op, size = pending.get(int(flag[2]), ("an indexing op", -1))
        raise IndexError(f"{op}: index {int(flag[1])} is out of range for a dimension of size {size} "
                         f"(on {self.backend.name}; found by the kernel, raised at the next sync point)")

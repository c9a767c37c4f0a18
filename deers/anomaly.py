"""Anomaly detection: find the first op whose forward output or backward gradient holds NaN or inf.

    with deers.detect_anomaly(model):          # model optional: it names the module an op ran in
        loss = model.loss(idx, targets)
        grads = loss.backward()
    # AnomalyError: Log's forward gave nan in its output (4, 8) f32 on cpu, in module blocks.0.mlp,
    # called at train.py:42 in step: y = h.log()

How it hooks in: like the profiler, it is the per-thread `profiling.session` that `apply` and
`run_backward` hand every forward and backward to (so outside this block nothing is paid). Each
forward output is checked on the host; infinities count only where they are new (an op given an
inf, such as a -inf attention mask, may pass it on). The forward records where the op was called
(the first frame outside deers) and, with a model, the path of the module it ran in, so an anomaly
found in backward names the line of user code whose op made it. Checking moves every result to
the host: a debugging tool, many times slower than training.
"""
from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from .array import NDArray
from .errors import DeersError
from .profiler import profiling

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class AnomalyError(DeersError, RuntimeError):
    """An op produced NaN or inf under detect_anomaly; the message names the op and where it ran."""


def _as_array(value: Any) -> NDArray | None:
    """The NDArray in a forward result or an input gradient (a view's gradient may be wrapped)."""
    if isinstance(value, NDArray):
        return value
    inner = getattr(value, "grad", None)  # a gradient region: the values are its .grad
    return inner if isinstance(inner, NDArray) else None


def _nonfinite(array: NDArray | None) -> str | None:
    """"nan", "inf" or None for an array's values (integers and bools are always finite)."""
    if array is None or not array.dtype.is_float or array.numel == 0:
        return None
    values = array.numpy()
    if np.isnan(values).any():
        return "nan"
    return "inf" if np.isinf(values).any() else None


def _describe(array: NDArray) -> str:
    return f"{array.shape} {array.dtype.name} on {array.device}"


def _call_site() -> str:
    """The innermost frame of user code (outside the deers package) on the current stack."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR + os.sep):
            code = f": {frame.line.strip()}" if frame.line else ""
            return f"{frame.filename}:{frame.lineno} in {frame.name}{code}"
    return "an unknown line"


class detect_anomaly:
    """Within this block, raise AnomalyError at the first op whose forward output or backward
    gradient holds NaN or inf (new inf only, see the module docstring), naming the op, its shapes,
    dtypes and device, the module path it ran in (when `model` is given) and the user code line
    that called it in the forward pass."""

    def __init__(self, model: Any = None):
        self.model = model
        self._modules: list[str] = []  # the module path stack, while model's forward runs
        self._handles: list[Any] = []

    def __enter__(self) -> "detect_anomaly":
        if profiling.session is not None:
            raise RuntimeError("detect_anomaly: a profile or another detect_anomaly is already watching this thread")
        if self.model is not None:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._enter_module(name)))
                self._handles.append(module.register_forward_hook(self._leave_module))
        profiling.session = self
        return self

    def __exit__(self, *exc_info: Any) -> None:
        profiling.session = None
        for handle in self._handles:
            handle.remove()
        self._handles, self._modules = [], []

    def _enter_module(self, name: str) -> Callable:
        def hook(module, args):
            self._modules.append(name or type(module).__name__)
        return hook

    def _leave_module(self, module, args, output) -> None:
        if self._modules:
            self._modules.pop()

    def run(self, phase: str, op: Any, call: Callable, arrays: Sequence) -> Any:
        """Run an op's forward or backward (called by apply / run_backward) and check what it gave."""
        if phase == "forward":
            op.anomaly_origin = (self._modules[-1] if self._modules else None, _call_site())
            result = call(*arrays)
            found = _nonfinite(result)
            if found == "inf" and any(_nonfinite(a) is not None for a in arrays if isinstance(a, NDArray)):
                found = None  # an inf it was given, passed on
            if found:
                self._raise(op, f"forward gave {found} in its output {_describe(result)}")
            return result
        result = call(*arrays)
        for i, grad in enumerate(result):
            found = _nonfinite(_as_array(grad))
            if found:
                self._raise(op, f"backward gave {found} in the gradient of its input {i} "
                                f"{_describe(_as_array(grad))} (incoming gradient {_describe(_as_array(arrays[0]))})")
        return result

    @staticmethod
    def _raise(op: Any, what: str) -> None:
        module, site = getattr(op, "anomaly_origin", (None, "an op recorded before detect_anomaly began"))
        where = f", in module {module}" if module else ""
        raise AnomalyError(f"{type(op).__name__}'s {what}{where}, called at {site}")

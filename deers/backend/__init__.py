"""Backends: where the numbers are computed. Every op in Deers is written over this contract.

A backend stores data in flat *buffers* (a 1-D array of one dtype) and reads them through a
`Layout` (shape, strides, offset, all in elements). Every primitive takes `(buffer, layout)`
pairs — the fused ones too — and returns a fresh contiguous buffer unless it says otherwise.
The numbered list below is the whole contract, written as the typed `Backend` Protocol.

The reference backend (`reference.py`, `ReferenceBackend`) writes every item as the plain NumPy
expression of its math; it is the oracle every other backend is tested against
(tests/test_backend_contract.py). The default CPU backend (`cpu.py`, `CPUBackend`) is a subclass
of it that overrides single primitives where that pays (threaded GEMMs, blocked fused kernels,
numba loops); CUDA (`cuda/`) and MLX (`mlx.py`) implement the contract on their devices.

Only `deers/array.py` (NDArray) calls a backend. Everything above it — ops, optimizers, losses,
distributed, examples — goes through NDArray's methods, so a backend never sees autograd.

`backend_for(device)` returns the one backend object of a device (created on first use);
`use_backend(device, backend)` installs another one — the reference backend, or one you wrote —
after checking it implements the contract, and returns the previous one:

    from deers.backend import use_backend
    from deers.backend.reference import ReferenceBackend
    previous = use_backend("cpu", ReferenceBackend())   # tensors made from now on compute on it
    ...
    use_backend("cpu", previous)

Duties every backend keeps (the NDArray layer relies on them):
- Buffers: a 1-D array object with `.size` (elements) and `.dtype` (its NumPy dtype, or the
  backend's own with `.itemsize`); `buffer[start:stop]` is a 1-D buffer that *aliases* the same
  storage (collectives write into it in place); on the CPU buffers are NumPy arrays, so
  `.view(np.uint8)` gives their bytes.
- Layouts may be anything `Layout` can express: permuted, narrowed, offset, stride 0
  (broadcast). A primitive that needs a contiguous operand makes it so itself.
- Results are fresh buffers the caller owns; `out=` (when a primitive takes it) is written and
  returned, and may alias an input of the same layout (element-wise ops: out[i] = f(a[i])).
- Indices must be in [0, size): anything outside [0, size) — a negative index included — raises
  IndexError before any output is visible (nothing wraps; Python-level negatives like x[-1] are
  resolved above the backend). An asynchronous backend may raise it at its next synchronisation
  point (`synchronize`, `to_numpy`), before any host read sees the output.
- gather accepts an index smaller than the input along the other dims (as torch.gather).
- reduce("sum") of integer or bool data returns int64; f16/bf16 compute in f32 and round once.
- Integer floor_divide / remainder never trap: the most negative i64 // -1 wraps. A zero integer
  divisor raises ZeroDivisionError on the CPU and MLX backends (as PyTorch's CPU); CUDA gives an
  unspecified value instead (as PyTorch's CUDA).
- `name` is unique per device ("cpu", "mps", "cuda:0", "cuda:1"): random-number states are
  saved and restored by it.
- `unary_names` lists the UnaryFn names the backend computes; any other name raises
  `NotImplementedOnDevice` ("softplus is not implemented on cuda:0"). The reference backend has
  them all, so a new unary function runs on the CPU as soon as it is there.
- Asynchronous backends (CUDA, MLX) may return before the work is done; `to_numpy` waits.

Backends other than the CPU ones are imported only when asked for, so `import deers` works
without CuPy or MLX.
"""
from __future__ import annotations

import inspect
from enum import Enum
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..device import Device, as_device
from ..dtype import DType
from ..errors import BackendContractError, BackendUnavailable, NotImplementedOnDevice
from ..layout import Layout


# ---- the vocabulary: primitive names shared by the ops and every backend ------------------------
class UnaryFn(str, Enum):
    """Item 4: element-wise functions of one array (str values, so backends' tables key on them)."""

    NEG = "neg"
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    SIN = "sin"
    COS = "cos"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    RELU = "relu"
    ABS = "abs"
    SIGN = "sign"
    SOFTPLUS = "softplus"  # log(1 + exp(x))
    BITWISE_NOT = "bitwise_not"  # integers and bool only (bool: logical not)


class BinaryFn(str, Enum):
    """Items 5-6: element-wise functions of two arrays (or an array and a number)."""

    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POW = "pow"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    FLOOR_DIVIDE = "floor_divide"  # floor(a / b), Python's //
    REMAINDER = "remainder"  # a - floor(a / b) * b: the divisor's sign, Python's %
    BITWISE_AND = "bitwise_and"  # integers and bool only, like the other bitwise names
    BITWISE_OR = "bitwise_or"
    BITWISE_XOR = "bitwise_xor"
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"


class ReduceFn(str, Enum):
    """Item 9: reductions over axes."""

    SUM = "sum"
    MAX = "max"
    MIN = "min"
    ARGMAX = "argmax"


UNARY_NAMES = frozenset(f.value for f in UnaryFn)
BINARY_NAMES = frozenset(f.value for f in BinaryFn)
COMPARISONS = frozenset(("eq", "ne", "lt", "le", "gt", "ge"))  # binary functions whose result is bool
REDUCE_NAMES = frozenset(f.value for f in ReduceFn)


# ---- the contract ------------------------------------------------------------------------------
@runtime_checkable
class Backend(Protocol):
    """The numbered primitives a backend implements. `Buf` below is the backend's buffer type."""

    name: str  # unique per device: "cpu", "mps", "cuda:0", ...
    unary_names: frozenset  # the UnaryFn names item 4 computes; others raise NotImplementedOnDevice

    # 1. allocation: uninitialised / filled flat buffers of `numel` elements
    def empty(self, numel: int, dtype: DType) -> Any: ...
    def full(self, numel: int, value: float, dtype: DType) -> Any: ...

    # 2. host transfer: from_numpy copies (a tensor never aliases the caller's array); to_numpy
    #    returns a fresh host array of the layout's shape (and waits for asynchronous work)
    def from_numpy(self, array: np.ndarray, dtype: DType) -> Any: ...
    def to_numpy(self, buf: Any, layout: Layout) -> np.ndarray: ...

    # 3. random numbers from the backend's own generator, with a restorable state
    def seed(self, seed: int) -> None: ...
    def get_rng_state(self) -> Any: ...
    def set_rng_state(self, state: Any) -> None: ...
    def randn(self, numel: int, dtype: DType) -> Any: ...
    def rand(self, numel: int, dtype: DType) -> Any: ...
    def randint(self, numel: int, low: int, high: int) -> Any: ...

    # 4. y = f(a) for f in UnaryFn; bitwise_not on integers (two's complement ~a) and bool (not a)
    def unary(self, name: str, a: Any, la: Layout, out: Any = None) -> Any: ...

    # 5. y = f(a, b) for f in BinaryFn; la and lb have one shape (already broadcast); comparisons -> bool;
    #    floor_divide / remainder round the quotient down (Python's // and %: the remainder has b's
    #    sign) on integers and floats; bitwise_and / _or / _xor on integers and bool only
    def binary(self, name: str, a: Any, la: Layout, b: Any, lb: Layout, out: Any = None) -> Any: ...

    # 6. y = f(a, value) (reverse: f(value, a)) with a Python number, in a's dtype
    def scalar(self, name: str, a: Any, la: Layout, value: float, reverse: bool = False,
               out: Any = None) -> Any: ...

    # 7. c ? a : b, the three layouts of one shape
    def where(self, c: Any, lc: Layout, a: Any, la: Layout, b: Any, lb: Layout) -> Any: ...

    # 8. convert the element type
    def cast(self, a: Any, la: Layout, dtype: DType) -> Any: ...

    # 9. f over `axes` for f in ReduceFn, reduced dims kept as size 1 (argmax: one axis, i64)
    def reduce(self, name: str, a: Any, la: Layout, axes: tuple[int, ...]) -> Any: ...

    # 10. batched GEMM (..., m, k) @ (..., k, n); batch dims already broadcast (stride 0 allowed).
    #     With acc (a dense buffer of the result's size and a's dtype) the product is added into
    #     acc in place and acc is returned (cuBLAS beta = 1): a gradient summed over chunks needs
    #     no temporary and no add pass
    def matmul(self, a: Any, la: Layout, b: Any, lb: Layout, acc: Any = None) -> Any: ...

    # 11. a.index_select(dim, idx) / zeros(shape) with src's slices added at idx along dim
    def index_select(self, a: Any, la: Layout, dim: int, idx: Any, lidx: Layout) -> Any: ...
    def index_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: Any, lidx: Layout,
                  src: Any, lsrc: Layout) -> Any: ...

    # 12. a.gather(dim, idx) / zeros(shape).scatter_add_(dim, idx, src)
    def gather(self, a: Any, la: Layout, dim: int, idx: Any, lidx: Layout) -> Any: ...
    def scatter_add(self, shape: tuple[int, ...], dtype: DType, dim: int, idx: Any, lidx: Layout,
                    src: Any, lsrc: Layout) -> Any: ...

    # 13. write the view (src, lsrc) into the view (dst, ldst) in place (lsrc broadcast to ldst's shape)
    def copy(self, src: Any, lsrc: Layout, dst: Any, ldst: Layout) -> None: ...

    # ---- fused primitives: each could be written from 1-13; one kernel each for speed/memory ----
    # 14. (log-)softmax over the last dim of scale * a (attention passes 1/sqrt(head_dim), so the
    #     scaling costs no pass of its own). causal: la is (..., T, S) attention scores and query
    #     row t sees key columns s <= t + S - T only; the others get probability exactly 0 (log:
    #     -inf) and need not be read. softmax_backward gives d/da: scale y (g - sum(g y)), or
    #     scale (g - exp(y) sum(g)) for log; causal: the hidden entries get gradient 0 and their g
    #     is not summed (needed for log)
    def softmax(self, a: Any, la: Layout, log: bool, causal: bool = False, scale: float = 1.0) -> Any: ...
    def softmax_backward(self, y: Any, ly: Layout, g: Any, lg: Layout, log: bool, causal: bool = False,
                         scale: float = 1.0) -> Any: ...

    # 15. cross-entropy of logits (N, C) against i64 targets (N,), rows with ignore_index skipped:
    #     returns (loss_sum, count, grad) — loss_sum a 1-element buffer (f64 for f64 logits, else
    #     f32) of the summed row losses, count a 1-element i64 buffer of counted rows, grad (N, C)
    #     in the logits' dtype = (softmax - smoothed one_hot) / max(count, 1). With
    #     overwrite_logits the gradient may be written over the logits buffer (a memory hint).
    #     A target outside [0, C) that is not ignore_index raises IndexError.
    def cross_entropy(self, logits: Any, llogits: Layout, targets: Any, ltargets: Layout, ignore_index: int,
                      label_smoothing: float, overwrite_logits: bool = False) -> tuple[Any, Any, Any]: ...

    # 16. RMSNorm over the last dim: y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps) per row;
    #     returns (y like x, rstd (rows,): f32 for f16/bf16 x, else x's dtype);
    #     backward returns (gx like x, gw like w)
    def rmsnorm(self, x: Any, lx: Layout, w: Any, lw: Layout, eps: float) -> tuple[Any, Any]: ...
    def rmsnorm_backward(self, g: Any, lg: Layout, x: Any, lx: Layout, w: Any, lw: Layout,
                         rstd: Any, lrstd: Layout) -> tuple[Any, Any]: ...

    # 17. rotary embedding, rotate-half convention, x (..., T, hd) and tables cos, sin (T, hd):
    #     y = x cos + rotate_half(x) sin; inverse: y = x cos - rotate_half(x) sin (the transpose,
    #     which is the backward because the tables repeat [c, c] / [s, s] along hd)
    def rope(self, x: Any, lx: Layout, cos: Any, lcos: Layout, sin: Any, lsin: Layout,
             inverse: bool = False) -> Any: ...

    # 18. one AdamW step of many parameters at once (a GPU does them all in one launch), in place
    #     on each params[i], exp_avgs[i] and exp_avg_sqs[i] (all dense: offset 0, contiguous,
    #     covering their buffers); grads[i] any layout of params[i]'s shape. One call has one
    #     parameter dtype (its grads' too) and one moment dtype, and one step count
    def adamw_step(self, params: Sequence[tuple[Any, Layout]], grads: Sequence[tuple[Any, Layout]],
                   exp_avgs: Sequence[tuple[Any, Layout]], exp_avg_sqs: Sequence[tuple[Any, Layout]], lr: float,
                   beta1: float, beta2: float, eps: float, weight_decay: float, step: int) -> None: ...

    # 19. sum over all elements of all arrays of x^2 (gradient clipping's global norm): a 1-element
    #     buffer, f64 when any array is f64, else f32 (f16/bf16 are squared and summed in f32);
    #     the same inputs give the same bits on every run (no atomics in the sum)
    def sum_of_squares(self, arrays: Sequence[tuple[Any, Layout]]) -> Any: ...

    # 20. multiply every array in place by the one number in `factor` (a 1-element f32/f64
    #     buffer on this device, never read on the host); arrays dense, any float dtype (f16/bf16:
    #     multiplied in f32, rounded once)
    def scale_(self, arrays: Sequence[tuple[Any, Layout]], factor: Any) -> None: ...

    # 21. wait for queued work (a no-op on synchronous backends)
    def synchronize(self) -> None: ...

    # 22. causal attention of q (..., T, hd), k (..., S, hd), v (..., S, hv), S >= T, one batch
    #     shape (already broadcast), one float dtype: p = softmax(scale q k^T) where query row t
    #     sees keys s <= t + S - T (as item 14's causal), y = p v. Returns (y (..., T, hv), p
    #     (..., T, S) with exact zeros where a query sees no key, kept for the backward), which
    #     returns (dq, dk, dv) like q, k, v. attention.py writes it from items 10 and 14
    def causal_attention(self, q: Any, lq: Layout, k: Any, lk: Layout, v: Any, lv: Layout,
                         scale: float) -> tuple[Any, Any]: ...
    def causal_attention_backward(self, q: Any, lq: Layout, k: Any, lk: Layout, v: Any, lv: Layout, p: Any,
                                  lp: Layout, dy: Any, ldy: Layout, scale: float) -> tuple[Any, Any, Any]: ...


CONTRACT = tuple(name for name in Backend.__dict__ if not name.startswith("_") and callable(Backend.__dict__[name]))


def not_implemented(name: str, backend: Any) -> NotImplementedOnDevice:
    """The error a backend raises for a vocabulary name it has no kernel for."""
    return NotImplementedOnDevice(f"{name} is not implemented on {backend.name} ({type(backend).__name__}); "
                                  f"it computes {', '.join(sorted(backend.unary_names))}")


def check_backend(backend: Any) -> None:
    """Raise BackendContractError unless `backend` implements the contract: a str `name`, a
    `unary_names` set, and every CONTRACT item a method taking the Protocol's parameters in order
    (same names, same defaults; extra parameters only with defaults)."""
    kind = type(backend).__name__
    if not isinstance(getattr(backend, "name", None), str):
        raise BackendContractError(f"{kind} is not a backend: it needs a str `name` unique per device")
    if not isinstance(getattr(backend, "unary_names", None), (set, frozenset)):
        raise BackendContractError(f"{kind} is not a backend: it needs `unary_names`, the set of UnaryFn names "
                                   "its unary() computes")
    for item in CONTRACT:
        method = getattr(backend, item, None)
        if not callable(method):
            raise BackendContractError(f"{kind} is not a backend: it lacks contract item {item}{_signature(item)}")
        wanted = list(inspect.signature(getattr(Backend, item)).parameters.values())[1:]  # without self
        got = list(inspect.signature(method).parameters.values())
        mismatch = [p.name for p in got[:len(wanted)]] != [p.name for p in wanted] or any(
            want.default is not inspect.Parameter.empty and have.default != want.default
            for want, have in zip(wanted, got)) or any(
            extra.default is inspect.Parameter.empty for extra in got[len(wanted):])
        if mismatch:
            raise BackendContractError(f"{kind}.{item}{inspect.signature(method)} does not take the contract's "
                                       f"parameters {item}{_signature(item)}")


def _signature(item: str) -> str:
    """The Protocol's parameters of a contract item, without self: "(a, la, out=None)"."""
    params = list(inspect.signature(getattr(Backend, item)).parameters.values())[1:]
    return "(" + ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                           for p in params) + ")"


# ---- one backend instance per device ------------------------------------------------------------
_instances: dict = {}
_last_seed: dict = {"seed": None}  # set by seed_all, so a backend created later starts seeded too


def backend_for(device: "Device | str") -> Backend:
    """The backend object that computes on `device` (created on first use, then reused)."""
    device = as_device(device)
    backend = _instances.get(device)
    if backend is None:
        backend = _create(device)
        if _last_seed["seed"] is not None:
            backend.seed(_last_seed["seed"])
        _instances[device] = backend
    return backend


def use_backend(device: "Device | str", backend: "Backend | None") -> "Backend | None":
    """Install `backend` as the object that computes on `device` and return the one it replaces
    (None when none was created yet); None uninstalls, so the default is created on next use.

    The object is checked first (`check_backend`: BackendContractError names what is missing).
    Arrays keep the backend they were made with, so install it before making the model's tensors.
    """
    device = as_device(device)
    if backend is not None:
        check_backend(backend)
    previous = _instances.pop(device, None)
    if backend is not None:
        _instances[device] = backend
    return previous


def seed_all(seed: int) -> None:
    """Seed every backend created so far and, on creation, every backend created later.

    `manual_seed(0)` followed by the first `randn(..., device="mps")` must be reproducible even
    though the mps backend did not exist when the seed was set (PyTorch seeds CUDA lazily alike).
    """
    _last_seed["seed"] = seed
    for backend in _instances.values():
        backend.seed(seed)


def _create(device: Device) -> Backend:
    if device.kind == "cpu":
        from .cpu import CPUBackend

        return CPUBackend()  # the reference backend's fast subclass
    if device.kind == "cuda":
        try:
            from .cuda import CUDABackend
        except ImportError as exc:
            raise BackendUnavailable(
                f"device {device} needs CuPy: pip install 'deers[cuda12]' (or 'deers[cuda13]') ({exc})") from exc
        return CUDABackend(device.index)
    if device.kind == "mps":
        try:
            from .mlx import MLXBackend
        except ImportError as exc:
            raise BackendUnavailable(
                f"device mps needs MLX: pip install 'deers[mps]' (on Linux: pip install 'mlx[cpu]') ({exc})") from exc
        return MLXBackend()
    raise BackendUnavailable(f"no backend for device {device}")


def loaded_backends() -> list[Backend]:
    """Backends created so far (manual_seed seeds each of them)."""
    return list(_instances.values())

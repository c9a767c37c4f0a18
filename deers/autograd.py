"""The reverse-mode engine: Op base class, grad mode, Grads store, topological sort, backward.

An op's forward runs on NDArrays; when any input requires grad (and grad mode is on) the output
Tensor remembers the Op instance and its input Tensors. `run_backward` sorts that graph once,
walks it in reverse calling each op's backward, sums the gradients of tensors used more than
once, hands leaf gradients to a `Grads` store and frees what the ops saved. deers/view_grads.py
runs the same walk with fewer passes over view gradients; it is tested to give these gradients.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable

from .array import NDArray
from .hooks import run_grad_hooks
from .profiler import profiling


class Op:
    """One differentiable operation. Subclasses implement forward and backward.

    forward(*arrays) -> NDArray computes the result and saves on `self` what backward needs.
    backward(out_grad) -> one NDArray (or None for "no gradient") per forward input.
    `needs_input_grad` (set by `apply` before every forward) says which inputs want a gradient,
    so forward saves and backward computes only what is needed (PyTorch's ctx.needs_input_grad);
    an op that is not recorded (no_grad, or no input requires grad) sees all False.
    `graph_retained` (set by the engine before backward) says whether a later backward may run
    through this op again (`retain_graph=True`), so saved state must not be handed out.
    """

    name = "op"
    differentiable = True  # False: the output never has a gradient (comparisons, argmax, integer casts)
    fused = False  # True: forward or backward calls a fused backend primitive (items 14-22)
    needs_input_grad: tuple[bool, ...] = ()
    graph_retained = False

    def needs(self, i: int) -> bool:
        """Whether input `i` wants a gradient."""
        return i < len(self.needs_input_grad) and self.needs_input_grad[i]

    def hand_out(self, saved: "NDArray | None", g: NDArray) -> "NDArray | None":
        """A gradient that forward already computed (fused ops), times the incoming gradient g.

        The one way fused ops give out saved gradients: when g is the engine's implicit 1
        (`loss.backward()`) and the graph is being freed, the saved array itself goes out — no
        copy, no pass over it; the optimizer may then scale it in place. Otherwise the result is a
        fresh array (g * saved), so a retained graph can run backward again with the same values.
        """
        if saved is None:
            return None
        if isinstance(g, UnitGrad):
            return saved.copy() if self.graph_retained else saved
        return saved * g  # g is 0-d here: a loss's gradient

    def forward(self, *inputs: NDArray) -> NDArray:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, out_grad: NDArray) -> tuple["NDArray | None", ...]:
        raise NotImplementedError(f"{type(self).__name__} has no backward")


class UnitGrad(NDArray):
    """The implicit gradient 1 that `loss.backward()` starts from (a 0-d or one-element array of
    ones); ops may skip multiplying by it. Arithmetic on it gives plain NDArrays."""

    __slots__ = ()


class _GradMode(threading.local):
    """Whether ops record the graph; per thread, like PyTorch's grad mode."""

    enabled = True


grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    return grad_mode.enabled


class set_grad_enabled:
    """Turn graph recording on or off, like torch.set_grad_enabled: at once as a plain call
    (`set_grad_enabled(False)`), for a block as a context manager (`with set_grad_enabled(training):`)
    after which the mode before comes back, or for every call of a function as a decorator."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self.previous = grad_mode.enabled
        grad_mode.enabled = self.mode

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info) -> None:
        grad_mode.enabled = self.previous

    def __call__(self, fn: Callable) -> Callable:
        grad_mode.enabled = self.previous  # decorating is not running: the mode outside fn stays as it was
        mode = self.mode

        @functools.wraps(fn)
        def in_mode(*args, **kwargs):
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)
        return in_mode


class _SwitchOnEnter(set_grad_enabled):
    """A set_grad_enabled with a fixed mode whose switch waits for the block to start, so making
    one changes nothing (as in PyTorch) and `@no_grad()` switches when the function runs."""

    mode = True

    def __init__(self):
        self.previous = grad_mode.enabled

    def __enter__(self) -> None:
        set_grad_enabled.__init__(self, self.mode)


class no_grad(_SwitchOnEnter):
    """No graph is recorded inside `with no_grad():` (inference, optimizer updates) or in a function
    decorated `@no_grad()`."""

    mode = False


class enable_grad(_SwitchOnEnter):
    """Record the graph again inside `with enable_grad():`, even within no_grad (like torch.enable_grad)."""

    mode = True


class Grads:
    """Gradients of leaf tensors, keyed by tensor identity: grads[w] is a Tensor shaped like w."""

    def __init__(self):
        self._store: dict[int, tuple] = {}  # id(tensor) -> (tensor, NDArray gradient)

    def accumulate(self, tensor, grad: NDArray) -> None:
        """Add `grad` to the gradient of `tensor` (a tensor used twice gets the sum)."""
        key = id(tensor)
        entry = self._store.get(key)
        if entry is None:
            self._store[key] = (tensor, grad)
        else:
            self._store[key] = (tensor, entry[1] + grad)

    def add(self, other: "Grads") -> "Grads":
        """Accumulate every gradient of `other` into this store (returns self)."""
        for tensor, grad in other._store.values():
            self.accumulate(tensor, grad)
        return self

    def array(self, tensor) -> NDArray | None:
        """The gradient's NDArray (for the layers under Tensor: optimizers, clipping, collectives)."""
        entry = self._store.get(id(tensor))
        return None if entry is None else entry[1]

    def set_array(self, tensor, grad: NDArray) -> None:
        """Store an NDArray as the gradient of `tensor` (for the layers under Tensor)."""
        self._store[id(tensor)] = (tensor, grad)

    def set(self, tensor, grad) -> None:
        """Make the Tensor `grad` the gradient of `tensor` (same shape), replacing any it had."""
        if tuple(grad.shape) != tuple(tensor.shape):
            raise ValueError(f"Grads.set: gradient of shape {tuple(grad.shape)} for a tensor of shape "
                             f"{tuple(tensor.shape)}")
        self._store[id(tensor)] = (tensor, grad.data)

    def get(self, tensor, default=None):
        from .tensor import Tensor

        entry = self._store.get(id(tensor))
        return default if entry is None else Tensor(entry[1])

    def __getitem__(self, tensor):
        grad = self.get(tensor)
        if grad is None:
            raise KeyError(f"no gradient for tensor of shape {tuple(tensor.shape)} (not used by the loss, "
                           "or it does not require grad)")
        return grad

    def __contains__(self, tensor) -> bool:
        return id(tensor) in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self):
        from .tensor import Tensor

        for tensor, grad in list(self._store.values()):
            yield tensor, Tensor(grad)

    def items(self):
        return iter(self)

    def remove(self, tensor) -> None:
        self._store.pop(id(tensor), None)


def topo_sort(root, every_input: bool = False) -> list:
    """Tensors that `root` depends on and that require grad, inputs before outputs.

    Iterative (a deep graph would pass Python's recursion limit). every_input: also the inputs
    that need no gradient (data, constants), each node's first input walked first (deers.viz
    draws the whole graph in that order).
    """
    order: list = []
    visited: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in (reversed(node._inputs) if every_input else node._inputs):
            if (every_input or parent.requires_grad) and id(parent) not in visited:
                stack.append((parent, False))
    return order


def run_backward(root, out_grad: NDArray, grads: Grads, retain_graph: bool) -> Grads:
    """Propagate `out_grad` from `root` to every leaf that requires grad, into `grads`.

    Reverse topological order means a node's gradient is complete (every use of it has added its
    part) before its op's backward runs. A leaf's gradient is stored dense in a buffer of its own,
    shared with no other leaf and not the caller's out_grad, since optimizers scale it in place.
    """
    pending = {id(root): out_grad}  # node -> the sum of the gradients its uses have sent so far
    claimed = {out_grad.storage_id()}  # buffers a leaf (or the caller) holds: another leaf copies
    session = profiling.session  # None unless inside deers.profiler.profile()
    order = topo_sort(root)
    while order:
        node = order.pop()  # popped, not iterated: a visited node's output is freed once nothing else holds it
        grad = pending.pop(id(node), None)
        if grad is None:  # no path from root's gradient reaches this node
            continue
        if node._grad_hooks is not None:  # Tensor.register_hook
            grad = run_grad_hooks(node, grad)
        if node._op is None:  # a leaf: hand its gradient to the store
            if grad.storage_id() in claimed or not grad.is_dense():
                grad = grad.copy()
            claimed.add(grad.storage_id())
            grads.accumulate(node, grad)
            continue
        op = node._op
        op.graph_retained = retain_graph
        input_grads = op.backward(grad) if session is None else session.run("backward", op, op.backward, [grad])
        for parent, parent_grad in zip(node._inputs, input_grads):
            if parent_grad is None or not parent.requires_grad:
                continue
            previous = pending.get(id(parent))
            pending[id(parent)] = parent_grad if previous is None else previous + parent_grad  # used twice: sum
        if not retain_graph:  # free saved activations now, as PyTorch does
            node._op = _FreedOp(type(op).__name__)
            node._inputs = ()
    return grads


class _FreedOp(Op):
    """Stands in for an op whose saved tensors were freed by an earlier backward."""

    def __init__(self, original: str):
        self.original = original

    def backward(self, out_grad):
        raise RuntimeError(f"backward through {self.original} a second time: its saved tensors were freed; "
                           "pass retain_graph=True to the first backward")

"""The reverse-mode engine: Op base class, grad mode, topological sort, Grads store.

An op's forward runs on NDArrays; when any input requires grad (and grad mode is on) the output
Tensor remembers the Op instance and its input Tensors. `backward` sorts that graph once
(iteratively, so deep graphs don't hit Python's recursion limit), walks it in reverse, sums the
gradients of tensors used more than once and hands leaf gradients to a `Grads` store.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from .array import NDArray


class Op:
    """One differentiable operation. Subclasses implement forward and backward.

    forward(*arrays) -> NDArray computes the result and saves on `self` what backward needs.
    backward(out_grad) -> one NDArray (or None for "no gradient") per forward input.
    `needs_input_grad` (set by `apply` before forward when the op is recorded) says which inputs
    want a gradient, so backward can skip work for the others (PyTorch's ctx.needs_input_grad).
    """

    name = "op"
    needs_input_grad: tuple[bool, ...] | None = None  # None: not recorded, treat every input as needed

    def needs(self, i: int) -> bool:
        """Whether input `i` wants a gradient."""
        return self.needs_input_grad is None or self.needs_input_grad[i]

    def forward(self, *inputs: NDArray) -> NDArray:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, out_grad: NDArray) -> tuple["NDArray | None", ...]:
        raise NotImplementedError(f"{type(self).__name__} has no backward")


class _GradMode(threading.local):
    """Whether ops record the graph; per thread, like PyTorch's grad mode."""

    enabled = True


grad_mode = _GradMode()


@contextmanager
def no_grad() -> Iterator[None]:
    """Inside this block no graph is recorded (inference, optimizer updates)."""
    previous = grad_mode.enabled
    grad_mode.enabled = False
    try:
        yield
    finally:
        grad_mode.enabled = previous


def is_grad_enabled() -> bool:
    return grad_mode.enabled


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
        entry = self._store.get(id(tensor))
        return None if entry is None else entry[1]

    def set_array(self, tensor, grad: NDArray) -> None:
        self._store[id(tensor)] = (tensor, grad)

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


def topo_sort(root) -> list:
    """Tensors that `root` depends on and that require grad, inputs before outputs."""
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
        for parent in node._inputs:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def run_backward(root, out_grad: NDArray, grads: Grads, retain_graph: bool) -> Grads:
    """Propagate `out_grad` from `root` to every leaf that requires grad, into `grads`.

    A leaf's gradient is stored dense (contiguous, offset 0, its own buffer) and never shares a
    buffer with another leaf's or with `out_grad`: optimizers may read and scale it in place.
    """
    pending: dict[int, NDArray] = {id(root): out_grad}
    claimed = {id(out_grad.buffer)}  # buffers already handed out; a second claimant gets a copy
    for node in reversed(topo_sort(root)):
        grad = pending.pop(id(node), None)
        if grad is None:
            continue
        if node._op is None:
            if id(grad.buffer) in claimed or not grad.is_dense():
                grad = grad.copy()
            claimed.add(id(grad.buffer))
            grads.accumulate(node, grad)
            continue
        input_grads = node._op.backward(grad)
        for parent, parent_grad in zip(node._inputs, input_grads):
            if parent_grad is None or not parent.requires_grad:
                continue
            key = id(parent)
            previous = pending.get(key)
            pending[key] = parent_grad if previous is None else previous + parent_grad
        if not retain_graph:  # free saved activations now, as PyTorch does
            node._op = _FreedOp(type(node._op).__name__)
            node._inputs = ()
    return grads


class _FreedOp(Op):
    """Stands in for an op whose saved tensors were freed by an earlier backward."""

    def __init__(self, original: str):
        self.original = original

    def backward(self, out_grad):
        raise RuntimeError(f"backward through {self.original} a second time: its saved tensors were freed; "
                           "pass retain_graph=True to the first backward")

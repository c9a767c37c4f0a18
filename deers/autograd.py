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
    An op with `takes_region` (a view) may be given a `Region` as out_grad instead of an NDArray.
    """

    name = "op"
    differentiable = True  # False: the output never has a gradient (comparisons, argmax, integer casts)
    needs_input_grad: tuple[bool, ...] = ()
    graph_retained = False
    takes_region = False

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


@contextmanager
def enable_grad() -> Iterator[None]:
    """Record the graph again inside this block, even within no_grad (like torch.enable_grad)."""
    previous = grad_mode.enabled
    grad_mode.enabled = True
    try:
        yield
    finally:
        grad_mode.enabled = previous


class set_grad_enabled:
    """Turn graph recording on or off: at once as a call (`set_grad_enabled(False)`), or for a
    block as a context manager (`with set_grad_enabled(training): ...`), like PyTorch."""

    def __init__(self, mode: bool):
        self.previous = grad_mode.enabled
        grad_mode.enabled = bool(mode)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info) -> None:
        grad_mode.enabled = self.previous


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

    every_input: also the inputs that need no gradient (data, constants), each node's first input
    walked first (deers.viz draws the whole graph in that order).
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

    A leaf's gradient is stored dense (contiguous, offset 0, its own buffer) and never shares a
    buffer with another leaf's or with `out_grad`: optimizers may read and scale it in place.

    Gradients of a node used more than once are summed while they wait (`_accumulate`). A view's
    backward may give a `Region` (its gradient, placed in a zero array of the input's shape):
    the regions of one input wait as a list and become one zero buffer with each region written
    in (`_write_regions`), so q, k and v narrowed from one qkv output cost 3 writes (they tile it:
    no fill), not 3 zero arrays, 3 copies and 2 full additions; a single region goes on to a view's
    backward, so a reshape's gradient is written through the narrow before it in one copy. The engine adds in place only into a sum it made
    itself (`owned`): an array an op returned may be a saved activation, a gradient handed to
    another input too, or the caller's out_grad, and is never written to.
    """
    pending: dict[int, "NDArray | list[Region]"] = {id(root): out_grad}
    owned: set[int] = set()  # nodes whose pending gradient is a buffer the engine made and no one else holds
    claimed = {out_grad.storage_id()}  # buffers already handed out; a second claimant gets a copy
    session = profiling.session  # None unless inside deers.profiler.profile()
    order = topo_sort(root)
    while order:
        node = order.pop()  # popped, not iterated: a visited node's output is freed once nothing else holds it
        grad = pending.pop(id(node), None)
        owned.discard(id(node))
        if grad is None:
            continue
        if isinstance(grad, list):  # one region goes on to a view's backward; otherwise they are written now
            passes_on = len(grad) == 1 and node._op is not None and node._op.takes_region
            grad = grad[0] if passes_on else _write_regions(grad)
        if node._op is None:
            if grad.storage_id() in claimed or not grad.is_dense():
                grad = grad.copy()
            claimed.add(grad.storage_id())
            grads.accumulate(node, grad)
            continue
        node._op.graph_retained = retain_graph
        op = node._op
        input_grads = op.backward(grad) if session is None else session.run("backward", op, op.backward, [grad])
        for parent, parent_grad in zip(node._inputs, input_grads):
            if parent_grad is None or not parent.requires_grad:
                continue
            _accumulate(pending, owned, id(parent), parent_grad)
        if not retain_graph:  # free saved activations now, as PyTorch does
            node._op = _FreedOp(type(node._op).__name__)
            node._inputs = ()
    return grads


class Region:
    """The gradient of a strided sub-view (narrow, slicing): zero everywhere except in the
    region the view read, where it is `grad`. The engine writes it into a gradient buffer
    (`_write_regions`, `_accumulate`) instead of adding a mostly-zero array.

    `make_layout` maps the layout of the whole array (`shape`) to the region's layout, as the
    view did in forward. `span` (dim, start, stop), when known, says the region is exactly a
    narrow along one dim, so regions with disjoint spans on the same dim do not overlap, and
    spans that tile the dim (q, k, v; split) leave no element to zero. A `whole`
    region covers every element: a reshape's gradient whose layout cannot be reshaped as a
    view, left for a view before the reshape to write into its window in one copy.
    """

    __slots__ = ("grad", "shape", "dtype", "device", "make_layout", "span", "whole")

    def __init__(self, grad: NDArray, shape: tuple[int, ...], dtype, device, make_layout,
                 span: "tuple[int, int, int] | None" = None, whole: bool = False):
        self.grad, self.shape, self.dtype, self.device = grad, shape, dtype, device
        self.make_layout, self.span, self.whole = make_layout, span, whole

    def materialize(self) -> NDArray:
        """This gradient as a dense array of `shape`."""
        return _write_regions([self])

    def synchronize(self) -> None:
        """Wait for the device (the profiler times the op that receives a region)."""
        self.grad.synchronize()

    def write(self, out: NDArray, add: bool) -> None:
        """Write (or, where earlier writes may lie, add) grad into this region of `out`, in place."""
        view = out.as_layout(self.make_layout(out.layout))
        if add:
            view.add_(self.grad)
        else:
            view.assign(self.grad)


def _write_regions(regions: "list[Region]") -> NDArray:
    """One zero array with every region's gradient in it: 1 fill (none when they tile), 1 write each.

    A region is assigned when it cannot overlap what is already written (a narrow beside the
    span written so far, along the same dim, as split and q/k/v give), otherwise added. Regions
    that tile one dim between them need no fill: each is written into an empty array."""
    first = regions[0]
    if _tile(regions):
        out = NDArray.empty(first.shape, first.dtype, first.device)
        for region in regions:
            region.write(out, add=False)
        return out
    out = NDArray.empty(first.shape, first.dtype, first.device) if first.whole else \
        NDArray.full(first.shape, 0, first.dtype, first.device)
    covered = first.span  # a span holding every region written so far; None when unknown
    first.write(out, add=False)
    for region in regions[1:]:
        span = region.span
        apart = (span is not None and covered is not None and span[0] == covered[0]
                 and (span[2] <= covered[1] or span[1] >= covered[2]))
        region.write(out, add=not apart)
        same_dim = span is not None and covered is not None and span[0] == covered[0]
        covered = (span[0], min(span[1], covered[1]), max(span[2], covered[2])) if same_dim else None
    return out


def _tile(regions: "list[Region]") -> bool:
    """Whether the regions are narrows along one dim that cover it once between them."""
    spans = [region.span for region in regions]
    if any(span is None for span in spans) or len({span[0] for span in spans}) != 1:
        return False
    end = 0
    for _, start, stop in sorted(spans, key=lambda span: span[1]):
        if start != end:
            return False
        end = stop
    return end == regions[0].shape[spans[0][0]]


def _accumulate(pending: dict, owned: "set[int]", key: int, grad: "NDArray | Region") -> None:
    """Add `grad` (an NDArray or a Region) to the gradient waiting for node `key`.

    Regions wait in a list until the node's turn. Otherwise the first sum is a fresh buffer the
    engine owns, and later gradients are added into it in place."""
    previous = pending.get(key)
    if previous is None:
        pending[key] = [grad] if isinstance(grad, Region) else grad
    elif isinstance(previous, list) and isinstance(grad, Region):
        previous.append(grad)
    else:
        if isinstance(previous, list):
            previous = pending[key] = _write_regions(previous)
            owned.add(key)
        if key in owned:
            if isinstance(grad, Region):
                grad.write(previous, add=True)
            else:
                previous.add_(grad)
        else:
            pending[key] = previous + (grad.materialize() if isinstance(grad, Region) else grad)
            owned.add(key)


class _FreedOp(Op):
    """Stands in for an op whose saved tensors were freed by an earlier backward."""

    def __init__(self, original: str):
        self.original = original

    def backward(self, out_grad):
        raise RuntimeError(f"backward through {self.original} a second time: its saved tensors were freed; "
                           "pass retain_graph=True to the first backward")

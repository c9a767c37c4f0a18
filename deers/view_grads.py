"""An optional backward engine that writes the gradients of views into one buffer.

The plain engine (`deers.autograd.run_backward`) takes each view's gradient from its op's
`backward`: a narrow gives a zero array of its input's shape with g written into the window it
read, and the engine adds those arrays up. When n narrows tile one input, that is n zero fills,
n copies and n - 1 additions over the whole input, where n copies would do.

This engine walks the same graph in the same order, but asks the two view ops for a `Region`
instead ("g, in this window of a zero array of shape S") and writes all the regions an input
receives into one buffer: one copy each, and no fill when they tile it. A reshape whose gradient
cannot be viewed back gives a region covering all of its input, so a narrow before it writes
the gradient straight into its window in one copy. A sum this engine made itself is added to
in place; an array an op returned (a saved activation, a gradient handed to two inputs, the
caller's out_grad) is never written to.

`Tensor.backward` runs this engine; `deers.autograd.run_backward` is the same walk without
regions, and tests/test_view_grads.py checks that both give the same gradients. What it saves is
passes over memory and kernel launches, not memory: the peak of a backward is the same.
"""
from __future__ import annotations

from .array import NDArray
from .autograd import Grads, _FreedOp, topo_sort
from .hooks import run_grad_hooks
from .layout import Layout
from .ops.shape import Reshape, View
from .profiler import profiling


class Region:
    """The gradient of a strided sub-view: zero everywhere except in the region the view read,
    where it is `grad`.

    `make_layout` maps the layout of the whole array (`shape`) to the region's layout, as the
    view did in forward. `span` (dim, start, stop), when known, says the region is exactly a
    narrow along one dim, so regions with disjoint spans on one dim do not overlap, and spans
    that tile the dim leave no element to zero. A `whole` region covers every element: a
    reshape's gradient whose layout cannot be reshaped as a view.
    """

    __slots__ = ("grad", "shape", "dtype", "device", "make_layout", "span", "whole")

    def __init__(self, grad: NDArray, shape: tuple[int, ...], make_layout,
                 span: "tuple[int, int, int] | None" = None, whole: bool = False):
        self.grad, self.shape, self.dtype, self.device = grad, shape, grad.dtype, grad.device
        self.make_layout, self.span, self.whole = make_layout, span, whole

    def materialize(self) -> NDArray:
        """This gradient as a dense array of `shape`."""
        return write_regions([self])

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


def view_backward(op: View, g: "NDArray | Region") -> Region:
    """A narrow's (or slice's) gradient as a region of its input; a region of its output is
    composed with this view, so a chain of views is written in one copy."""
    shape = op.input[0]
    if isinstance(g, Region):
        inner, outer = g.make_layout, op.make_layout
        through = lambda whole: inner(outer(whole))  # noqa: E731
        if through(Layout(shape)) is not None:  # the span holds exactly when g covered this view's output
            return Region(g.grad, shape, through, op.span if g.whole else None)
        g = g.materialize()
    return Region(g, shape, op.make_layout, op.span)


def reshape_backward(op: Reshape, g: NDArray) -> "NDArray | Region":
    """Reshape back as a view; where g's strides do not allow one, a region covering the whole
    input, copied only when written (into a view's window, if a view comes before)."""
    layout = g.layout.reshape(op.input_shape)
    if layout is not None:
        return g.as_layout(layout)
    return Region(g, op.input_shape, lambda whole: whole.reshape(op.shape), whole=True)


def write_regions(regions: "list[Region]") -> NDArray:
    """One array with every region's gradient in it: one fill (none when they tile), one write each.

    A region is assigned when it cannot overlap what is already written (a narrow beside the span
    written so far, on the same dim, as split gives), otherwise added."""
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
        same_dim = span is not None and covered is not None and span[0] == covered[0]
        apart = same_dim and (span[2] <= covered[1] or span[1] >= covered[2])
        region.write(out, add=not apart)
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
    engine owns (`owned`), and later gradients are added into it in place."""
    previous = pending.get(key)
    if previous is None:
        pending[key] = [grad] if isinstance(grad, Region) else grad
    elif isinstance(previous, list) and isinstance(grad, Region):
        previous.append(grad)
    else:
        if isinstance(previous, list):
            previous = pending[key] = write_regions(previous)
            owned.add(key)
        if key in owned:
            if isinstance(grad, Region):
                grad.write(previous, add=True)
            else:
                previous.add_(grad)
        else:
            pending[key] = previous + (grad.materialize() if isinstance(grad, Region) else grad)
            owned.add(key)


def run_backward(root, out_grad: NDArray, grads: Grads, retain_graph: bool) -> Grads:
    """`deers.autograd.run_backward` with view gradients kept as regions (the module docstring)."""
    pending: dict[int, "NDArray | list[Region]"] = {id(root): out_grad}
    owned: set[int] = set()  # nodes whose pending gradient is a buffer this engine made and no one else holds
    claimed = {out_grad.storage_id()}  # buffers a leaf (or the caller) holds: another leaf copies
    session = profiling.session  # None unless inside deers.profiler.profile()
    order = topo_sort(root)
    while order:
        node = order.pop()
        grad = pending.pop(id(node), None)
        owned.discard(id(node))
        if grad is None:
            continue
        op = node._op
        if isinstance(grad, list):  # a single region goes on to a view's backward; otherwise they are written now
            grad = grad[0] if len(grad) == 1 and type(op) is View else write_regions(grad)
        if node._grad_hooks is not None:  # Tensor.register_hook: the hooks see a plain array
            grad = run_grad_hooks(node, grad.materialize() if isinstance(grad, Region) else grad)
        if op is None:
            if grad.storage_id() in claimed or not grad.is_dense():
                grad = grad.copy()
            claimed.add(grad.storage_id())
            grads.accumulate(node, grad)
            continue
        op.graph_retained = retain_graph
        backward = _backward_of(op)
        input_grads = backward(grad) if session is None else session.run("backward", op, backward, [grad])
        for parent, parent_grad in zip(node._inputs, input_grads):
            if parent_grad is not None and parent.requires_grad:
                _accumulate(pending, owned, id(parent), parent_grad)
        if not retain_graph:
            node._op = _FreedOp(type(op).__name__)
            node._inputs = ()
    return grads


def _backward_of(op):
    """The backward this engine runs for `op`: the region form for the two view ops, else its own."""
    if type(op) is View:
        return lambda g: (view_backward(op, g),)
    if type(op) is Reshape:
        return lambda g: (reshape_backward(op, g),)
    return op.backward

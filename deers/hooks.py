"""Hooks, with PyTorch's names: look at (or replace) a module's input and output, or a gradient.

    handle = block.register_forward_hook(lambda module, args, output: print(output.shape))
    model(idx)        # prints each time `block` runs
    handle.remove()
    h.register_hook(lambda grad: grad * 0.5)   # backward hands h's gradient, halved, to h's inputs

Nothing is paid without hooks: `Module.__call__` runs `forward` directly while its `_hooks` is
None, and the engine looks at a tensor's `_grad_hooks` only to find None.
"""
from __future__ import annotations

from typing import Any, Callable


class RemovableHandle:
    """What a `register_*_hook` call returns: `.remove()` unregisters the hook (also as `with`)."""

    def __init__(self, table: dict, key: object):
        self.table, self.key = table, key

    def remove(self) -> None:
        """Unregister the hook; removing it twice is harmless."""
        self.table.pop(self.key, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


def add_hook(table: dict, fn: Callable) -> RemovableHandle:
    """Put fn last in `table` (kept in registration order) under a key of its own."""
    if not callable(fn):
        raise TypeError(f"register hook: expected a callable, got {type(fn).__name__}")
    key = object()
    table[key] = fn
    return RemovableHandle(table, key)


def run_grad_hooks(tensor: Any, grad: Any) -> Any:
    """The gradient (an NDArray) of `tensor` after its hooks: each gets it as a Tensor and may
    return a replacement of the same shape (called by the engine once the gradient is complete)."""
    from .tensor import Tensor

    for fn in list(tensor._grad_hooks.values()):
        new = fn(Tensor(grad))
        if new is not None:
            if not isinstance(new, Tensor) or new.shape != tensor.shape:
                raise ValueError(f"register_hook: a hook on a tensor of shape {tensor.shape} returned "
                                 f"{getattr(new, 'shape', type(new).__name__)}; return None or a Tensor of that shape")
            grad = new.data
    return grad


class ModuleHooks:
    """The hooks of one module, each table in registration order.

    pre:  fn(module, args) -> None, or new args (a tuple, or one value that becomes a 1-tuple)
    post: fn(module, args, output) -> None, or a new output
    """

    def __init__(self) -> None:
        self.pre: dict[object, Callable] = {}
        self.post: dict[object, Callable] = {}

    def add(self, table: dict, fn: Callable) -> RemovableHandle:
        return add_hook(table, fn)

    def call(self, module: Any, args: tuple, kwargs: dict) -> Any:
        """Run the pre-hooks, `module.forward`, then the forward hooks, as PyTorch does."""
        for fn in list(self.pre.values()):  # a copy: a hook may remove itself
            new_args = fn(module, args)
            if new_args is not None:
                args = new_args if isinstance(new_args, tuple) else (new_args,)
        output = module.forward(*args, **kwargs)
        for fn in list(self.post.values()):
            new_output = fn(module, args, output)
            if new_output is not None:
                output = new_output
        return output

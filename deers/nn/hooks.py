"""Forward hooks on modules, with PyTorch's names: look at (or replace) a module's input and output.

    handle = block.register_forward_hook(lambda module, args, output: print(output.shape))
    model(idx)        # prints each time `block` runs
    handle.remove()

A module without hooks pays nothing: `Module.__call__` runs `forward` directly while its
`_hooks` is None, and the hooks below exist only once one is registered.
"""
from __future__ import annotations

from typing import Any, Callable


class RemovableHandle:
    """What a `register_*_hook` call returns: `.remove()` unregisters the hook (also as `with`)."""

    def __init__(self, table: dict[int, Callable], key: int):
        self.table, self.key = table, key

    def remove(self) -> None:
        """Unregister the hook; removing it twice is harmless."""
        self.table.pop(self.key, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


class ModuleHooks:
    """The hooks of one module, each table in registration order.

    pre:  fn(module, args) -> None, or new args (a tuple, or one value that becomes a 1-tuple)
    post: fn(module, args, output) -> None, or a new output
    """

    def __init__(self) -> None:
        self.pre: dict[int, Callable] = {}
        self.post: dict[int, Callable] = {}
        self.next_key = 0

    def add(self, table: dict[int, Callable], fn: Callable) -> RemovableHandle:
        if not callable(fn):
            raise TypeError(f"register hook: expected a callable, got {type(fn).__name__}")
        key, self.next_key = self.next_key, self.next_key + 1
        table[key] = fn
        return RemovableHandle(table, key)

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

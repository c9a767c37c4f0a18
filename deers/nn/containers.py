"""Containers: ModuleList (children "0", "1", ...) and Sequential (a ModuleList that chains calls)."""
from __future__ import annotations

from typing import Any, Iterator

from .module import Module


class ModuleList(Module):
    """A list of modules whose children are named "0", "1", ... (`blocks.0.attn.qkv.weight`)."""

    def __init__(self, modules: "list[Module] | tuple[Module, ...]" = ()):
        super().__init__()
        self._items: list[Module] = []
        for module in modules:
            self.append(module)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, module in enumerate(self._items):
            yield str(i), module

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: expected a Module, got {type(module).__name__}")
        self._items.append(module)
        return self

    def __getitem__(self, i: int) -> Module:
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)


class Sequential(ModuleList):
    """Calls its modules in order: Sequential(Linear(784, 256), ReLU(), Linear(256, 10)).

    Parameters are named by position, as in PyTorch: "0.weight", "0.bias", "2.weight", ...
    """

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x: Any) -> Any:
        for module in self._items:
            x = module(x)
        return x

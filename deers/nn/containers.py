"""Containers like PyTorch's: ModuleList, ModuleDict, ParameterList, ParameterDict, and Sequential.

Each keeps its items in one private list or dict and names them by position ("0", "1", ...) or by
key, so a model's parameters get the names PyTorch gives them (`blocks.0.attn.qkv.weight`,
`heads.q.weight`, `scales.1`). They override `Module._fields`, the one place a module says what it
holds; parameters(), named_parameters(), to_device and state_dict then need nothing special.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from ..errors import describe
from ..tensor import Tensor, Var
from .module import ContainerError, Module


def _check_key(owner: str, key: Any) -> str:
    if not isinstance(key, str) or not key or "." in key:
        raise ContainerError(f"{owner}: keys must be non-empty str without '.', got {key!r}")
    return key


def _as_module(owner: str, value: Any) -> Module:
    if not isinstance(value, Module):
        raise TypeError(f"{owner}: expected a Module, got {type(value).__name__}")
    return value


def _as_var(owner: str, value: Any) -> Var:
    """A Var as it is; a plain float Tensor becomes a Var over the same buffer (torch's Parameter)."""
    if isinstance(value, Var):
        return value
    if isinstance(value, Tensor):
        if not value.dtype.is_float:
            raise TypeError(f"{owner}: parameters are floating point, got {describe(value)}")
        return Var(value.detach())
    raise TypeError(f"{owner}: expected a Var or Tensor, got {type(value).__name__}")


class ModuleList(Module):
    """A list of modules whose children are named "0", "1", ... (`blocks.0.attn.qkv.weight`)."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self._items: list[Module] = []
        self.extend(modules)

    def _fields(self) -> Iterator[tuple[str, Any]]:
        for i, module in enumerate(self._items):
            yield str(i), module

    def append(self, module: Module) -> "ModuleList":
        self._items.append(_as_module(type(self).__name__, module))
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        self._items.insert(index, _as_module(type(self).__name__, module))

    def __getitem__(self, i: "int | slice") -> "Module | ModuleList":
        if isinstance(i, slice):
            return ModuleList(self._items[i])
        return self._items[i]

    def __setitem__(self, i: int, module: Module) -> None:
        self._items[i] = _as_module(type(self).__name__, module)

    def __delitem__(self, i: "int | slice") -> None:
        del self._items[i]

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


class _NamedItems(Module):
    """What ModuleDict and ParameterDict share: a dict `_items` of named entries read like a
    mapping (`d[key]`, `key in d`, `len`, iteration over keys, keys/values/items, `del d[key]`)."""

    _items: dict

    def _fields(self) -> Iterator[tuple[str, Any]]:
        return iter(self._items.items())

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()


class ModuleDict(_NamedItems):
    """Modules by name, in insertion order: `heads["q"]`; parameters named "q.weight", ..."""

    def __init__(self, modules: "Mapping[str, Module] | Iterable[tuple[str, Module]] | None" = None):
        super().__init__()
        self._items: dict[str, Module] = {}
        if modules is not None:
            self.update(modules)

    def update(self, modules: "Mapping[str, Module] | Iterable[tuple[str, Module]]") -> None:
        pairs = modules.items() if isinstance(modules, Mapping) else modules
        for key, module in pairs:
            self[key] = module

    def __setitem__(self, key: str, module: Module) -> None:
        owner = type(self).__name__
        self._items[_check_key(owner, key)] = _as_module(owner, module)



class ParameterList(Module):
    """A list of Vars named "0", "1", ... (a plain float Tensor is made a Var over its buffer)."""

    def __init__(self, values: Iterable["Var | Tensor"] = ()):
        super().__init__()
        self._items: list[Var] = []
        for value in values:
            self.append(value)

    def _fields(self) -> Iterator[tuple[str, Any]]:
        for i, var in enumerate(self._items):
            yield str(i), var

    def append(self, value: "Var | Tensor") -> "ParameterList":
        self._items.append(_as_var(type(self).__name__, value))
        return self

    def extend(self, values: Iterable["Var | Tensor"]) -> "ParameterList":
        for value in values:
            self.append(value)
        return self

    def __getitem__(self, i: int) -> Var:
        return self._items[i]

    def __setitem__(self, i: int, value: "Var | Tensor") -> None:
        self._items[i] = _as_var(type(self).__name__, value)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Var]:
        return iter(self._items)

    def extra_repr(self) -> str:
        return ", ".join(f"({i}): {describe(v)}" for i, v in enumerate(self._items))


class ParameterDict(_NamedItems):
    """Vars by name, in insertion order; parameters named by their keys."""

    def __init__(self, values: "Mapping[str, Var | Tensor] | None" = None):
        super().__init__()
        self._items: dict[str, Var] = {}
        for key, value in (values or {}).items():
            self[key] = value

    def __setitem__(self, key: str, value: "Var | Tensor") -> None:
        owner = type(self).__name__
        self._items[_check_key(owner, key)] = _as_var(owner, value)


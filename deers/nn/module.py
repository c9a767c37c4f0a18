"""Module: the base class of layers and models (forward, parameters, state_dict, train/eval).

A Module finds its parameters and sub-modules by looking at its own attributes, in the order they
were assigned: a `Var` attribute is a parameter, a `Module` attribute is a child, and Modules and
Vars inside plain lists, tuples and dicts (nested too, mixed with other items) are found under
"<attr>.0", "<attr>.1", "<attr>.<key>", ... A container whose members cannot get a stable name (a
set, a dict key that is not a str or int or that holds a '.') is refused with ContainerError
rather than skipped. No `__setattr__` hook and no registration step: what you assign is what you
get. ModuleList, ModuleDict, ParameterList and ParameterDict (deers/nn/containers.py) name their
members "0", "1", ... or by key, as in PyTorch. Names join with dots ("blocks.0.attn.qkv.weight"),
and a parameter reached twice (tied weights) is listed once.

Buffers are the one thing registered by name: state that is not trained but is saved, such as
batch norm's running statistics (PyTorch's `register_buffer`). `self.register_buffer("running_mean",
zeros(C))` sets the attribute and records its name, because a plain Tensor attribute (a RoPE
table, a causal mask) is not saved. Buffers are listed in `state_dict()` after their module's
parameters (with the module's prefix), loaded in place by `load_state_dict`, moved by
`to_device`, and never handed to an optimizer (`parameters()` lists Vars only).
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

from ..array import NDArray
from ..device import Device, as_device
from ..errors import DeersError
from ..tensor import Tensor, Var
from ..hooks import ModuleHooks, RemovableHandle


class StateDictError(DeersError, ValueError):
    """A state dict does not fit the module: missing, unexpected or wrongly shaped parameters."""


class ContainerError(DeersError, TypeError):
    """A Module attribute holds Modules or Vars in a container that gives them no stable name."""


class LoadResult(NamedTuple):
    """What `load_state_dict(strict=False)` skipped, like PyTorch's result."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class: subclasses assign Vars and Modules as attributes and implement `forward`."""

    training: bool = True  # a class default, so subclasses need not call super().__init__()
    _hooks: ModuleHooks | None = None  # created by the first register_*_hook (deers/hooks.py)

    def __init__(self) -> None:
        self.training = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._hooks is None:
            return self.forward(*args, **kwargs)
        return self._hooks.call(self, args, kwargs)

    # ---- hooks (deers/hooks.py) ---------------------------------------------------------------------
    def register_forward_pre_hook(self, fn: Any) -> RemovableHandle:
        """Call fn(module, args) before every forward; a non-None result replaces args."""
        hooks = self._hooks = self._hooks or ModuleHooks()
        return hooks.add(hooks.pre, fn)

    def register_forward_hook(self, fn: Any) -> RemovableHandle:
        """Call fn(module, args, output) after every forward; a non-None result replaces output."""
        hooks = self._hooks = self._hooks or ModuleHooks()
        return hooks.add(hooks.post, fn)

    # ---- the tree ----------------------------------------------------------------------------------
    def _fields(self) -> Iterator[tuple[str, Any]]:
        """(name, value) pairs that hold this module's members: its attributes, in assignment order
        (the containers of deers/nn/containers.py give their items instead)."""
        return iter(vars(self).items())

    def _members(self) -> Iterator[tuple[str, Any]]:
        """Every Module and Var directly held by this module (through plain containers too), named."""
        for name, value in self._fields():
            yield from _walk(value, name, type(self).__name__)

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """Direct sub-modules with their attribute names, in assignment order."""
        for name, value in self._members():
            if isinstance(value, Module):
                yield name, value

    def children(self) -> Iterator["Module"]:
        for _, child in self.named_children():
            yield child

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """This module ("" or prefix) and every descendant, depth first, each once."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            kids = [(f"{name}.{child_name}" if name else child_name, child)
                    for child_name, child in module.named_children()]
            stack.extend(reversed(kids))

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def _own_parameters(self) -> Iterator[tuple[str, Var]]:
        for name, value in self._members():
            if isinstance(value, Var):
                yield name, value

    def named_parameters(self) -> list[tuple[str, Var]]:
        """(dotted name, Var) for every parameter of this module and its descendants, each once."""
        out: list[tuple[str, Var]] = []
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for attr, var in module._own_parameters():
                if id(var) not in seen:
                    seen.add(id(var))
                    out.append((f"{module_name}.{attr}" if module_name else attr, var))
        return out

    def parameters(self) -> list[Var]:
        return [var for _, var in self.named_parameters()]

    # ---- buffers -----------------------------------------------------------------------------------
    def register_buffer(self, name: str, tensor: "Tensor | None", persistent: bool = True) -> None:
        """Set attribute `name` to `tensor` (a plain Tensor, or None for "not kept") and record it as a
        buffer: saved in state_dict (unless persistent=False), moved by to_device, never trained."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"register_buffer: a buffer name must be a non-empty str without '.', got {name!r}")
        if isinstance(tensor, Var) or (tensor is not None and not isinstance(tensor, Tensor)):
            raise TypeError(f"register_buffer({name!r}): expected a plain Tensor or None, got {type(tensor).__name__} "
                            f"(a Var is a parameter)")
        if "_buffer_names" not in vars(self):
            self._buffer_names: dict[str, bool] = {}  # buffer name -> persistent
        self._buffer_names[name] = persistent
        setattr(self, name, tensor)

    def _own_buffers(self, persistent_only: bool = False) -> Iterator[tuple[str, Tensor]]:
        for name, persistent in vars(self).get("_buffer_names", {}).items():
            value = getattr(self, name, None)
            if value is not None and (persistent or not persistent_only):
                yield name, value

    def named_buffers(self) -> list[tuple[str, Tensor]]:
        """(dotted name, Tensor) for every buffer of this module and its descendants."""
        return [(f"{module_name}.{attr}" if module_name else attr, buffer)
                for module_name, module in self.named_modules() for attr, buffer in module._own_buffers()]

    def buffers(self) -> list[Tensor]:
        return [buffer for _, buffer in self.named_buffers()]

    def num_parameters(self) -> int:
        return sum(var.numel() for var in self.parameters())

    # ---- modes -------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (Dropout active) on this module and every descendant."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ---- device moves ------------------------------------------------------------------------------
    def to_device(self, device: "Device | str") -> "Module":
        """Move every parameter (and plain Tensor attribute) to `device`, in place.

        A Var keeps its identity: its `.data` is replaced by a copy on the new device, so an
        optimizer or a Grads store built before the move still refers to the same objects.
        """
        device = as_device(device)
        for module in self.modules():
            for attr, value in list(vars(module).items()):
                moved = _moved_tree(value, device)
                if moved is not value:
                    setattr(module, attr, moved)
        return self

    def to(self, device: "Device | str") -> "Module":
        """Alias of `to_device` (PyTorch spelling)."""
        return self.to_device(device)

    # ---- state dicts -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Name -> Tensor (detached, sharing the parameter's or buffer's memory): module by module,
        each module's parameters then its persistent buffers, as in PyTorch."""
        return {name: tensor.detach() for name, tensor in self._named_state()}

    def _named_state(self) -> list[tuple[str, Tensor]]:
        """The (name, Var or buffer Tensor) pairs that state_dict saves, in its order."""
        out: list[tuple[str, Tensor]] = []
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for attr, var in module._own_parameters():
                if id(var) not in seen:
                    seen.add(id(var))
                    out.append((prefix + attr, var))
            out.extend((prefix + attr, buffer) for attr, buffer in module._own_buffers(persistent_only=True))
        return out

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy values (Tensors or NumPy arrays) into the parameters and buffers, in place.

        Names and shapes are checked: with strict=True a missing or unexpected name raises, and a
        shape mismatch always raises; each error names the offending parameters. With
        strict=False the skipped names are returned.
        """
        return load_named(self._named_state(), state, strict, type(self).__name__)

    # ---- printing ----------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not kids:
            return head + ")"
        lines = [head]
        for name, child in kids:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def _walk(value: Any, name: str, owner: str) -> Iterator[tuple[str, Any]]:
    """The Modules and Vars in `value` (itself, or inside nested lists, tuples and dicts), named
    "name", "name.0", "name.key", ...; other items (numbers, strings, plain tensors) are not members."""
    if isinstance(value, (Module, Var)):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(item, f"{name}.{i}", owner)
    elif isinstance(value, dict):
        for key, item in value.items():
            found = list(_walk(item, f"{name}.{key}", owner))
            if found and (not isinstance(key, (str, int)) or isinstance(key, bool) or "." in str(key) or key == ""):
                raise ContainerError(f"{owner}.{name}: key {key!r} holds {type(item).__name__}; parameter names "
                                     "need str (or int) keys without '.'")
            yield from found
    elif isinstance(value, (set, frozenset)):
        if any(isinstance(item, (Module, Var)) for item in value):
            raise ContainerError(f"{owner}.{name}: a set of Modules or Vars has no stable order, so its "
                                 "parameters would have no stable names; use a list or nn.ModuleList")


def _moved_tree(value: Any, device: Device) -> Any:
    """`value` with every tensor on `device`: Vars keep their identity (their .data moves), plain
    Tensors are replaced, lists and dicts are updated in place, tuples rebuilt (a new tuple)."""
    if isinstance(value, Var):
        if value.device != device:
            value.data = _moved(value.data, device)
        return value
    if isinstance(value, Tensor):
        return value if value.device == device else Tensor(_moved(value.data, device))
    if isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _moved_tree(item, device)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _moved_tree(item, device)
        return value
    if isinstance(value, tuple):
        items = [_moved_tree(item, device) for item in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # a named tuple stays one
    return value


def _write_buffer(buffer: Tensor, value: NDArray) -> None:
    """Copy `value` into a buffer's memory in place (cast to the buffer's dtype, moved to its device)."""
    if value.device != buffer.device:
        value = NDArray.from_numpy(value.numpy(), buffer.dtype, buffer.device)
    buffer.data.assign(value)


def _moved(a: NDArray, device: Device) -> NDArray:
    """A contiguous copy of `a` on `device` (host round trip: device moves are explicit and rare)."""
    return NDArray.from_numpy(a.numpy(), a.dtype, device)


def load_named(named: "list[tuple[str, Tensor]]", state: Mapping[str, Any], strict: bool, owner: str) -> LoadResult:
    """Check `state` against the (name, Var or buffer) pairs, then copy each value into its tensor in
    place (a buffer keeps its own dtype: an i64 step count stays i64)."""
    params = dict(named)
    missing = [name for name in params if name not in state]
    unexpected = [name for name in state if name not in params]
    problems = []
    for name, var in params.items():
        if name in state:
            value = state[name]
            shape = value.shape if isinstance(value, Tensor) else tuple(np.shape(value))
            if tuple(shape) != var.shape:
                problems.append(f"size mismatch for {name}: the state has shape {tuple(shape)}, "
                                f"the model has shape {var.shape}")
    if strict:
        if missing:
            problems.append(f"missing parameters: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected parameters: {', '.join(unexpected)}")
    if problems:
        raise StateDictError(f"load_state_dict into {owner}: " + "; ".join(problems))
    for name, var in params.items():
        if name in state:
            value = state[name]
            if not isinstance(value, Tensor):
                value = NDArray.from_numpy(np.asarray(value), var.dtype, var.device)
            if isinstance(var, Var):
                var.set_data(value)
            else:  # a buffer
                _write_buffer(var, value.data if isinstance(value, Tensor) else value)
    return LoadResult(missing, unexpected)

"""Module: the base class of layers and models (forward, parameters, state_dict, train/eval).

A Module finds its parameters and sub-modules by looking at its own attributes, in the order they
were assigned: a `Var` attribute is a parameter, a `Module` attribute is a child, and a list or
tuple of Modules gives children named "<attr>.0", "<attr>.1", ... No `__setattr__` hook and no
registration step: what you assign is what you get. Names join with dots, as in PyTorch
("blocks.0.attn.qkv.weight"), and a parameter reached twice (tied weights) is listed once.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

from ..array import NDArray
from ..device import Device, as_device
from ..errors import DeersError
from ..tensor import Tensor, Var


class StateDictError(DeersError, ValueError):
    """A state dict does not fit the module: missing, unexpected or wrongly shaped parameters."""


class LoadResult(NamedTuple):
    """What `load_state_dict(strict=False)` skipped, like PyTorch's result."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class: subclasses assign Vars and Modules as attributes and implement `forward`."""

    training: bool = True  # a class default, so subclasses need not call super().__init__()

    def __init__(self) -> None:
        self.training = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---- the tree ----------------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """Direct sub-modules with their attribute names, in assignment order."""
        for attr, value in vars(self).items():
            if isinstance(value, Module):
                yield attr, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                for i, child in enumerate(value):
                    yield f"{attr}.{i}", child

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
        for attr, value in vars(self).items():
            if isinstance(value, Var):
                yield attr, value

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
                if isinstance(value, Var):
                    if value.device != device:
                        value.data = _moved(value.data, device)
                elif isinstance(value, Tensor) and value.device != device:
                    setattr(module, attr, Tensor(_moved(value.data, device)))
        return self

    def to(self, device: "Device | str") -> "Module":
        """Alias of `to_device` (PyTorch spelling)."""
        return self.to_device(device)

    # ---- state dicts -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Name -> Tensor (detached, sharing the parameter's buffer), in parameter order."""
        return {name: var.detach() for name, var in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy values (Tensors or NumPy arrays) into the parameters, in place.

        Names and shapes are checked: with strict=True a missing or unexpected name raises, and a
        shape mismatch always raises; each error names the offending parameters. With
        strict=False the skipped names are returned.
        """
        return load_named(self.named_parameters(), state, strict, type(self).__name__)

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


def _moved(a: NDArray, device: Device) -> NDArray:
    """A contiguous copy of `a` on `device` (host round trip: device moves are explicit and rare)."""
    return NDArray.from_numpy(a.numpy(), a.dtype, device)


def load_named(named: "list[tuple[str, Var]]", state: Mapping[str, Any], strict: bool, owner: str) -> LoadResult:
    """Check `state` against the (name, Var) pairs, then copy each value into its Var in place."""
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
            var.set_data(value)
    return LoadResult(missing, unexpected)

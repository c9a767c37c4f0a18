"""Optimizer: the base class of SGD, AdamW and Muon (parameter groups, per-parameter state, state dicts).

An optimizer holds its parameters in groups, `opt.param_groups` as in PyTorch: each group a dict
of hyper-parameters plus "params", readable and writable (a schedule sets each group's "lr"),
and `add_param_group` appends one. For each parameter it keeps a small dict of state: arrays on
the parameter's device shaped like it (e.g. "exp_avg") and plain numbers (e.g. "step").
`step_with_grads(grads)` updates every parameter that has a gradient in place, on its own buffer,
so the Var objects (and their ids) never change and no graph is recorded.

State follows its parameter: after `model.to_device(...)` moves the Vars, the next step first
moves each parameter's state arrays to the parameter's device (one host round trip, as the move
itself), so the update continues with the same numbers instead of updating stale moments on the
old device. (PyTorch's load_state_dict moves state the same way; its step would raise instead.)
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..array import NDArray
from ..autograd import Grads, no_grad
from ..errors import DeviceError, ShapeError, describe
from ..tensor import Tensor, Var


class Optimizer:
    """Base class: subclasses set `defaults` and implement `_update(param, grad, group, state)`, or
    `_update_group(group, updates)` to update a whole group at once (AdamW: one fused call)."""

    def __init__(self, params: "Iterable[Var] | Iterable[dict]", defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.groups: list[dict[str, Any]] = _make_groups(params, self.defaults)
        self.params: list[Var] = [p for group in self.groups for p in group["params"]]
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(f"{type(self).__name__}: a parameter appears more than once")
        for p in self.params:
            _make_flat(p)
        self.state: list[dict[str, Any]] = [{} for _ in self.params]  # one dict per parameter, in order

    # ---- the update ------------------------------------------------------------------------------
    def step_with_grads(self, grads: Grads) -> None:
        """Update every parameter that has a gradient in `grads`, in place (parameters without one are skipped)."""
        with no_grad():
            index = 0
            for group in self.groups:
                updates = []  # (param, grad, state) of the group's parameters that have a gradient
                for p in group["params"]:
                    grad = grads.array(p)
                    if grad is not None:
                        state = self.state[index]
                        _follow(p, state)
                        updates.append((p, _grad_for(p, grad), state))
                    index += 1
                if updates:
                    self._update_group(group, updates)

    def step(self, grads: Grads) -> None:
        """Alias of `step_with_grads`."""
        self.step_with_grads(grads)

    def _update(self, param: Var, grad: NDArray, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError(type(self).__name__)

    def _update_group(self, group: dict[str, Any], updates: list[tuple[Var, NDArray, dict[str, Any]]]) -> None:
        """Update the (param, grad, state) triples of one group; by default one `_update` each."""
        for param, grad, state in updates:
            self._update(param, grad, group, state)

    # ---- parameter groups ------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The groups themselves (PyTorch's name): `opt.param_groups[1]["lr"] = 0.01` changes that group's lr."""
        return self.groups

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Append a group (as PyTorch): options it leaves out take the optimizer's defaults; its
        parameters must be new to this optimizer. Their state starts empty."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{type(self).__name__}.add_param_group: needs a dict with a 'params' entry, got "
                            f"{type(group).__name__}")
        new = _make_group(group, self.defaults)
        known = {id(p) for p in self.params}
        if any(id(p) in known for p in new["params"]) or len({id(p) for p in new["params"]}) != len(new["params"]):
            raise ValueError(f"{type(self).__name__}.add_param_group: a parameter appears in more than one group")
        for p in new["params"]:
            _make_flat(p)
        self.groups.append(new)
        self.params.extend(new["params"])
        self.state.extend({} for _ in new["params"])

    # ---- learning rate -----------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate of the first group (all groups share it unless set per group)."""
        return self.groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every group (what a schedule calls each step)."""
        for group in self.groups:
            group["lr"] = float(lr)

    # ---- state dicts -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A snapshot: {"type", "param_groups": [hyper-parameters + "params" indices], "state": {index: {slot: value}}}.

        Array slots are NumPy copies shaped like their parameter; numbers stay numbers.
        """
        groups, index = [], 0
        for group in self.groups:
            entry = {k: v for k, v in group.items() if k != "params"}
            entry["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(entry)
        state = {}
        for i, slots in enumerate(self.state):
            if slots:
                state[i] = {k: (v.numpy() if isinstance(v, NDArray) else v) for k, v in slots.items()}
        return {"type": type(self).__name__, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyper-parameters and per-parameter state saved by `state_dict` (checked for fit)."""
        name = type(self).__name__
        if state_dict.get("type") not in (None, name):
            raise ValueError(f"{name}.load_state_dict: the state belongs to a {state_dict['type']}")
        groups = state_dict["param_groups"] if "param_groups" in state_dict else state_dict["groups"]  # older name
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.groups]:
            raise ValueError(f"{name}.load_state_dict: parameter groups do not match "
                             f"(saved sizes {[len(g['params']) for g in groups]}, "
                             f"this optimizer {[len(g['params']) for g in self.groups]})")
        new_state: list[dict[str, Any]] = [{} for _ in self.params]
        for key, slots in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(self.params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {i}, but there are {len(self.params)}")
            param = self.params[i]
            for slot, value in slots.items():
                if isinstance(value, (np.ndarray, Tensor, NDArray)):
                    value = _state_array(param, value, f"{name}.load_state_dict: parameter {i} slot {slot!r}")
                new_state[i][slot] = value
        for group, saved in zip(self.groups, groups):
            group.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k != "params"})
        self.state = new_state

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.groups[0].items() if k != "params")
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


def _make_groups(params, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Accept Vars, a Module or ParamStore (anything with .parameters()), or PyTorch-style group dicts."""
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    params = list(params)
    if params and all(isinstance(p, dict) for p in params):
        return [_make_group(spec, defaults) for spec in params]
    group = dict(defaults)
    group["params"] = _check_vars(params)
    return [group]


def _make_group(spec: dict, defaults: dict[str, Any]) -> dict[str, Any]:
    """One group from a PyTorch-style dict: the defaults, overridden by the dict's options."""
    unknown = set(spec) - set(defaults) - {"params", "initial_lr"}  # initial_lr: what a schedule scales
    if unknown:
        raise ValueError(f"parameter group has unknown options {sorted(unknown)}; known: {sorted(defaults)}")
    group = dict(defaults)
    group.update({k: v for k, v in spec.items() if k != "params"})
    params = spec["params"]
    group["params"] = _check_vars([params] if isinstance(params, Tensor) else list(params))
    return group


def _check_vars(params: list) -> list[Var]:
    for p in params:
        if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
            raise TypeError(f"optimizers update Vars (trainable leaf tensors), got {type(p).__name__}"
                            + (f" {describe(p)}" if isinstance(p, Tensor) else ""))
    return params


def _make_flat(p: Var) -> None:
    """Give `p` a dense buffer of its own (offset 0, contiguous, nothing else in it), which the
    fused updates require. Only a Var made over a view of another array (`Var(x.narrow(...))`)
    is affected: it gets a copy, so its updates no longer show through the array it viewed."""
    if not p.data.is_dense():
        p.data = p.data.copy()


def _follow(p: Var, state: dict[str, Any]) -> None:
    """Move the parameter's state arrays to its device (after a to_device) and keep it dense."""
    _make_flat(p)
    for slot, value in state.items():
        if isinstance(value, NDArray) and value.device != p.device:
            state[slot] = NDArray.from_numpy(value.numpy(), value.dtype, p.device)


def _grad_for(p: Var, grad: NDArray) -> NDArray:
    """The gradient as a contiguous array of the parameter's shape, dtype and device."""
    if grad.shape != p.shape:
        raise ShapeError(f"optimizer: gradient of shape {grad.shape} for a parameter {describe(p)}")
    if grad.device != p.device:
        raise DeviceError(f"optimizer: gradient on {grad.device} for a parameter {describe(p)}")
    return grad.cast(p.dtype).dense()


def zeros_like_param(p: Var) -> NDArray:
    """A zero state buffer shaped like `p` on its device."""
    return NDArray.full(p.shape, 0, p.dtype, p.device)


def copy_array(a: NDArray) -> NDArray:
    """A fresh contiguous copy of `a` (state must never alias a gradient or a parameter)."""
    return a.copy()


def write_into(p: Var, value: NDArray) -> None:
    """Overwrite the parameter's buffer with `value` (same shape), keeping the Var and its buffer."""
    p.data.assign(value)


def _state_array(p: Var, value, where: str) -> NDArray:
    if isinstance(value, Tensor):
        value = value.data
    array = value.numpy() if isinstance(value, NDArray) else np.asarray(value)
    if tuple(array.shape) != p.shape:
        raise ShapeError(f"{where}: shape {tuple(array.shape)} does not match the parameter {describe(p)}")
    return NDArray.from_numpy(array, p.dtype, p.device)

"""SGD with momentum, Nesterov momentum, dampening and (coupled) weight decay, as torch.optim.SGD.

    g = grad + weight_decay * p
    buf = g (first step) or momentum * buf + (1 - dampening) * g
    g = g + momentum * buf (nesterov) or buf
    p = p - lr * g
"""
from __future__ import annotations

from typing import Any, Iterable

from ..array import NDArray
from ..tensor import Var
from .optimizer import Optimizer, copy_array, write_into


class SGD(Optimizer):
    """Stochastic gradient descent; state per parameter: "momentum_buffer" (when momentum > 0)."""

    def __init__(self, params: "Iterable[Var] | Iterable[dict]", lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")
        super().__init__(params, dict(lr=float(lr), momentum=float(momentum), dampening=float(dampening),
                                      weight_decay=float(weight_decay), nesterov=bool(nesterov)))

    def _update(self, param: Var, grad: NDArray, group: dict[str, Any], state: dict[str, Any]) -> None:
        momentum = group["momentum"]
        if group["weight_decay"]:
            grad = grad + param.data * group["weight_decay"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = copy_array(grad)
            else:
                buf = buf * momentum + grad * (1.0 - group["dampening"])
            state["momentum_buffer"] = buf
            grad = grad + buf * momentum if group["nesterov"] else buf
        write_into(param, param.data - grad * group["lr"])

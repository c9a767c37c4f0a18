"""AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, as torch.optim.AdamW.

Per parameter and step t (bias-corrected moments, decay applied to the weights directly):

    p = p * (1 - lr * weight_decay)
    m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

A whole parameter group is one fused call (deers/fused/adamw.py: the backend's multi-tensor
`adamw_step`, contract item 18) on the parameters, their gradients and their moments, so a GPU
backend updates every parameter of the group in one kernel launch.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..array import NDArray
from ..fused.adamw import adamw_update
from ..tensor import Var
from .optimizer import Optimizer, zeros_like_param


class AdamW(Optimizer):
    """AdamW; state per parameter: "step" (int), "exp_avg" and "exp_avg_sq" (shaped like the parameter).

    Defaults follow PyTorch: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
    """

    def __init__(self, params: "Iterable[Var] | Iterable[dict]", lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        beta1, beta2 = betas
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"AdamW: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=float(lr), betas=(float(beta1), float(beta2)), eps=float(eps),
                                      weight_decay=float(weight_decay)))

    def _update_group(self, group: dict[str, Any], updates: list[tuple[Var, NDArray, dict[str, Any]]]) -> None:
        by_step: dict[int, list] = {}  # parameters at the same step count share one fused call
        for param, grad, state in updates:
            if not state:
                state["step"] = 0
                state["exp_avg"] = zeros_like_param(param)
                state["exp_avg_sq"] = zeros_like_param(param)
            state["step"] += 1
            by_step.setdefault(state["step"], []).append((param.data, grad, state["exp_avg"], state["exp_avg_sq"]))
        beta1, beta2 = group["betas"]
        for step, members in by_step.items():
            params, grads, exp_avgs, exp_avg_sqs = (list(column) for column in zip(*members))
            adamw_update(params, grads, exp_avgs, exp_avg_sqs, group["lr"], beta1, beta2, group["eps"],
                         group["weight_decay"], step)

    def _update(self, param: Var, grad: NDArray, group: dict[str, Any], state: dict[str, Any]) -> None:
        self._update_group(group, [(param, grad, state)])


class AdamWConfig:
    """A builder for AdamW: `AdamWConfig(3e-4).weight_decay(0.1).betas(0.9, 0.95).build(params)`."""

    def __init__(self, lr: float = 1e-3):
        self.options: dict[str, Any] = {"lr": float(lr), "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}

    def lr(self, value: float) -> "AdamWConfig":
        self.options["lr"] = float(value)
        return self

    def betas(self, beta1: float, beta2: float) -> "AdamWConfig":
        self.options["betas"] = (float(beta1), float(beta2))
        return self

    def eps(self, value: float) -> "AdamWConfig":
        self.options["eps"] = float(value)
        return self

    def weight_decay(self, value: float) -> "AdamWConfig":
        self.options["weight_decay"] = float(value)
        return self

    def build(self, params: "Iterable[Var] | Iterable[dict]") -> AdamW:
        return AdamW(params, **self.options)

    def __repr__(self) -> str:
        return f"AdamWConfig({self.options})"

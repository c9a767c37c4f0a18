"""Fused AdamW update: one backend call (contract item 18) updates many parameters and their two
moments in place — one kernel launch for a whole parameter group on a GPU — where the same step
written from core array ops (`adamw_update_reference`) makes about a dozen passes and
temporaries over every parameter.

Per step t (bias-corrected moments, decay applied to the weights directly, as torch.optim.AdamW):

    p = p * (1 - lr * weight_decay)
    m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
"""
from __future__ import annotations

from typing import Sequence

from ..array import NDArray


def adamw_update(params: Sequence[NDArray], grads: Sequence[NDArray], exp_avgs: Sequence[NDArray],
                 exp_avg_sqs: Sequence[NDArray], lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, step: int) -> None:
    """One AdamW step of dense parameter arrays and their moments, in place (the backend's kernel,
    one call per device and dtype pair)."""
    NDArray.adamw_steps_(params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps, weight_decay, step)


def adamw_update_reference(params: Sequence[NDArray], grads: Sequence[NDArray], exp_avgs: Sequence[NDArray],
                           exp_avg_sqs: Sequence[NDArray], lr: float, beta1: float, beta2: float, eps: float,
                           weight_decay: float, step: int) -> None:
    """The same step from core array ops (element-wise arithmetic and `assign`), in place, one parameter at a time."""
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        grad = grad.cast(param.dtype)
        exp_avg.assign(exp_avg * beta1 + grad * (1.0 - beta1))
        exp_avg_sq.assign(exp_avg_sq * beta2 + grad * grad * (1.0 - beta2))
        decayed = param * (1.0 - lr * weight_decay)
        denom = (exp_avg_sq * (1.0 / (1.0 - beta2 ** step))).sqrt() + eps
        param.assign(decayed - exp_avg * (lr / (1.0 - beta1 ** step)) / denom)

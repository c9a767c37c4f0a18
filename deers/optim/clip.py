"""Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_."""
from __future__ import annotations

import math
from typing import Iterable

from ..autograd import Grads
from ..dtype import f32
from ..tensor import Var


def clip_grad_norm(params: Iterable[Var], grads: Grads, max_norm: float, eps: float = 1e-6) -> float:
    """Scale the gradients of `params` in `grads` so their global L2 norm is at most `max_norm`.

    total = sqrt(sum over params of sum(g^2)); when total > max_norm every gradient is multiplied
    by max_norm / (total + eps) (in `grads`, in place). Returns the total norm before clipping, as
    a float (nan or inf when a gradient is not finite; the gradients then become non-finite too,
    as in PyTorch).
    """
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    present = [(p, grads.array(p)) for p in params]
    present = [(p, g) for p, g in present if g is not None]
    if not present:
        return 0.0
    per_device: dict = {}  # device -> running sum of squares on that device (one transfer per device)
    for _, g in present:
        if g.dtype.is_half:  # f16 / bf16: square and sum in f32
            g = g.cast(f32)
        square_sum = (g * g).sum()
        per_device[g.device] = square_sum if g.device not in per_device else per_device[g.device] + square_sum
    total = math.sqrt(sum(float(s.numpy()) for s in per_device.values()))
    coef = max_norm / (total + eps)
    if coef < 1.0:
        for p, g in present:
            grads.set_array(p, g * coef)
    return total

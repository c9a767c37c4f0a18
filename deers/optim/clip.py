"""Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_."""
from __future__ import annotations

import math
from typing import Iterable

from ..array import NDArray
from ..autograd import Grads
from ..dtype import f32, f64
from ..tensor import Tensor, Var


def clip_grad_norm(params: Iterable[Var], grads: Grads, max_norm: float, eps: float = 1e-6) -> Tensor:
    """Scale the gradients of `params` in `grads` so their global L2 norm is at most `max_norm`.

    total = sqrt(sum over params of sum(g^2)); every gradient is multiplied by
    min(1, max_norm / (total + eps)) (in `grads`, in place). Returns the total norm before
    clipping as a 0-d Tensor, like PyTorch (nan or inf when a gradient is not finite; the gradients
    then become non-finite too, as in PyTorch). On one device nothing is read back to the host:
    the norm and the factor stay on the device (`float(norm)` reads it when wanted). Sums of
    squares are f32 (f64 when a gradient is f64); f16/bf16 gradients are squared in f32.
    """
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    present = [(p, grads.array(p)) for p in params]
    present = [(p, g) for p, g in present if g is not None]
    if not present:
        return Tensor(NDArray.full((), 0.0, f32, "cpu"))
    acc = f64 if any(g.dtype is f64 for _, g in present) else f32
    per_device: dict = {}  # device -> running sum of squares on that device
    for _, g in present:
        wide = g.cast(acc) if g.dtype is not acc else g  # f16 / bf16: square and sum in f32
        square_sum = (wide * wide).sum()  # 0-d
        per_device[g.device] = square_sum if g.device not in per_device else per_device[g.device] + square_sum
    if len(per_device) > 1:  # several devices: combine on the host (one read per device)
        host = math.sqrt(sum(float(s.numpy()) for s in per_device.values()))
        total = NDArray.full((), host, acc, "cpu")
        factors = {device: min(1.0, max_norm / (host + eps)) for device in per_device}
    else:
        (device, square_sum), = per_device.items()
        total = square_sum.sqrt()
        factor = (total + eps).scalar("div", max_norm, reverse=True).scalar("minimum", 1.0)  # min(1, m / (t + eps))
        factors = {device: factor}
    cast: dict = {}  # (device, dtype) -> the factor in the gradients' dtype, cast once
    for p, g in present:
        factor = factors[g.device]
        if not isinstance(factor, NDArray):  # several devices: a host number
            grads.set_array(p, g * factor)
            continue
        if factor.dtype is not g.dtype:
            factor = cast.setdefault((g.device, g.dtype), factor.cast(g.dtype))
        g.mul_(factor)  # in place: gradients are the optimizer's to scale (no fresh buffer per parameter)
    return Tensor(total)

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

    Per device the work is a handful of backend calls whatever the number of parameters: one
    sum of squares over all gradients (contract item 19), four scalar ops on the 0-d norm, and
    one in-place scale of all gradients (item 20) — on a GPU, each one launch.
    """
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    present = [(p, grads.array(p)) for p in params]
    present = [(p, g) for p, g in present if g is not None]
    if not present:
        return Tensor(NDArray.full((), 0.0, f32, "cpu"))
    per_device: dict = {}  # device -> that device's gradients
    for p, g in present:
        if not g.is_dense():  # the engine hands out dense gradients; a user's may not be
            g = g.copy()
            grads.set_array(p, g)
        per_device.setdefault(g.device, []).append(g)
    square_sums = {device: NDArray.sum_of_squares(gs) for device, gs in per_device.items()}  # 0-d each
    if len(per_device) > 1:  # several devices: combine on the host (one read per device)
        acc = f64 if any(s.dtype is f64 for s in square_sums.values()) else f32
        host = math.sqrt(sum(float(s.numpy()) for s in square_sums.values()))
        total = NDArray.full((), host, acc, "cpu")
        factor = min(1.0, max_norm / (host + eps))
        for device, gs in per_device.items():
            NDArray.scale_(gs, NDArray.full((), factor, acc, device))
        return Tensor(total)
    (device, gs), = per_device.items()
    total = square_sums[device].sqrt()
    factor = (total + eps).scalar("div", max_norm, reverse=True).scalar("minimum", 1.0)  # min(1, m / (t + eps))
    NDArray.scale_(gs, factor)  # in place: gradients are the optimizer's to scale
    return Tensor(total)

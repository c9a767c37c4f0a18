"""Batch normalization, PyTorch's F.batch_norm, nn.BatchNorm1d and nn.BatchNorm2d.

    y = (x - mean) / sqrt(var + eps) * weight + bias,   per channel (dim 1)

In training the mean and (biased) variance are the batch's, over every dim but the channel, and
the gradient flows through them (the composite below is written from core ops, so autograd
derives it). The running statistics are buffers (Module.register_buffer): after each training
batch, running = (1 - momentum) running + momentum batch, with the UNBIASED batch variance, and
momentum=None gives the cumulative average (momentum 1 / num_batches_tracked). In eval mode the
running statistics normalize instead. `affine=False` drops weight and bias;
`track_running_stats=False` keeps no buffers and always uses the batch's statistics.
"""
from __future__ import annotations

from ..autograd import no_grad
from ..creation import tensor, zeros, ones
from ..device import Device
from ..dtype import DType, i64
from ..errors import DeviceError, ShapeError, describe
from ..ops.operands import require_float
from ..tensor import Tensor
from .layers import _path
from .module import Module
from .params import Constant, ParamPath


def batch_norm(x: Tensor, running_mean: "Tensor | None", running_var: "Tensor | None",
               weight: "Tensor | None" = None, bias: "Tensor | None" = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """PyTorch's F.batch_norm over x (N, C, *): batch statistics when `training` (updating the
    running ones in place when given), else the running statistics."""
    require_float("batch_norm", x)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: expected an input (N, C, *), got {describe(x)}")
    channels = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (channels,):
            raise ShapeError(f"batch_norm: {name} {describe(t)} must be ({channels},) for input {describe(x)}")
        if t is not None and t.device != x.device:
            raise DeviceError(f"batch_norm: {name} {describe(t)} is not on the device of input {describe(x)}")
    axes = (0,) + tuple(range(2, x.ndim))  # every dim but the channel
    per_channel = (1, channels) + (1,) * (x.ndim - 2)  # (C,) seen as (1, C, 1, ...)
    if training:
        count = x.numel() // channels
        if count <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got {describe(x)}")
        mean = x.mean(dim=axes, keepdim=True)  # (1, C, 1, ...)
        centered = x - mean
        var = (centered * centered).mean(dim=axes, keepdim=True)  # biased: what normalizes the batch
        y = centered * (var + eps).rsqrt()
        with no_grad():
            if running_mean is not None:
                _blend(running_mean, mean, momentum)
            if running_var is not None:
                _blend(running_var, var * (count / (count - 1)), momentum)  # the unbiased variance
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: eval mode (training=False) needs running_mean and running_var")
        y = (x - running_mean.reshape(per_channel)) * (running_var.reshape(per_channel) + eps).rsqrt()
    if weight is not None:
        y = y * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return y


def _blend(running: Tensor, batch: Tensor, momentum: float) -> None:
    """running = (1 - momentum) running + momentum batch, in place (a buffer: no graph)."""
    update = batch.data.reshape(running.shape).cast(running.dtype)
    running.data.assign(running.data * (1.0 - momentum) + update * momentum)


class _BatchNorm(Module):
    """What BatchNorm1d and BatchNorm2d share; subclasses say which input ranks they take."""

    ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: "float | None" = 0.1, affine: bool = True,
                 track_running_stats: bool = True, vb: ParamPath | None = None,
                 device: "Device | str | None" = None, dtype: "DType | str | None" = None):
        super().__init__()
        vb = _path(vb, device, dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = vb.get((num_features,), "weight", init=Constant(1.0)) if affine else None
        self.bias = vb.get((num_features,), "bias", init=Constant(0.0)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=vb.dtype, device=vb.device))
            self.register_buffer("running_var", ones(num_features, dtype=vb.dtype, device=vb.device))
            self.register_buffer("num_batches_tracked", tensor(0, dtype=i64, device=vb.device))  # 0-d i64
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if x.ndim not in self.ranks:
            ranks = " or ".join(f"{r}-d" for r in self.ranks)
            raise ShapeError(f"{name}({self.num_features}): expected a {ranks} input, got {describe(x)}")
        if x.shape[1] != self.num_features:
            raise ShapeError(f"{name}({self.num_features}): input {describe(x)} has {x.shape[1]} channels in dim 1, "
                             f"expected {self.num_features}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data.assign(self.num_batches_tracked.data + 1)
            if self.momentum is None:  # the cumulative average: batch k weighs 1/k
                factor = 1.0 / self.num_batches_tracked.item()
        keep = not self.training or self.track_running_stats  # PyTorch: eval always reads them, if any
        use_batch = self.training or self.running_mean is None
        return batch_norm(x, self.running_mean if keep else None, self.running_var if keep else None,
                          self.weight, self.bias, use_batch, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L), per channel C."""

    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W), per channel C."""

    ranks = (4,)

"""Conv1d and Conv2d layers, PyTorch's nn.Conv1d / nn.Conv2d: the same arguments, weight layout
(out_channels, in_channels/groups, *kernel), bias (out_channels,) and default initialisation.

The arithmetic is deers.ops.conv (im2col as a strided view plus one GEMM); a layer only holds its
weight and bias and its settings. Default init is PyTorch's: weight and bias ~ U(-1/sqrt(fan_in),
1/sqrt(fan_in)) with fan_in = in_channels/groups * kernel area (kaiming_uniform with a = sqrt(5)).
"""
from __future__ import annotations

from math import prod

from ..device import Device
from ..dtype import DType
from ..ops.conv import as_tuple, conv1d, conv2d
from ..tensor import Tensor
from .layers import _path
from .module import Module
from .params import Constant, Init, ParamPath, kaiming_uniform


class _ConvNd(Module):
    """What Conv1d and Conv2d share: arguments, parameters, printing."""

    op_name = "conv"
    spatial = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", vb: ParamPath | None = None,
                 init: Init | None = None, bias_init: Init | None = None,
                 device: "Device | str | None" = None, dtype: "DType | str | None" = None):
        super().__init__()
        name = type(self).__name__
        if padding_mode != "zeros":
            raise NotImplementedError(f"{name}: padding_mode={padding_mode!r} is not implemented (only 'zeros')")
        if not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: groups={groups!r} must be a positive int dividing in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = as_tuple(kernel_size, self.spatial, name, "kernel_size", 1)
        self.stride = as_tuple(stride, self.spatial, name, "stride", 1)
        self.dilation = as_tuple(dilation, self.spatial, name, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be an int, ints, 'same' or 'valid', got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = as_tuple(padding, self.spatial, name, "padding", 0)
        vb = _path(vb, device, dtype)
        default = kaiming_uniform(in_channels // groups * prod(self.kernel_size))
        self.weight = vb.get((out_channels, in_channels // groups) + self.kernel_size, "weight", init=init or default)
        if bias:
            self.bias = vb.get((out_channels,), "bias", init=bias_init or (default if init is None else Constant(0.0)))
        else:
            self.bias = None

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self.spatial:
            text += f", padding={self.padding}"
        if self.dilation != (1,) * self.spatial:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + ("" if self.bias is not None else ", bias=False")


class Conv2d(_ConvNd):
    """2-d convolution: (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, OH, OW)."""

    spatial = 2

    def forward(self, x: Tensor) -> Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(_ConvNd):
    """1-d convolution: (N, C_in, L) or (C_in, L) -> (N, C_out, OL)."""

    spatial = 1

    def forward(self, x: Tensor) -> Tensor:
        return conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

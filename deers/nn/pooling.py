"""MaxPool2d and AvgPool2d layers, PyTorch's nn.MaxPool2d / nn.AvgPool2d (no parameters): the
window arithmetic is deers.ops.pooling."""
from __future__ import annotations

from ..ops.pooling import avg_pool2d, max_pool2d
from ..tensor import Tensor
from .module import Module


class MaxPool2d(Module):
    """The largest element of each kernel_size window; stride defaults to kernel_size, padding is -inf."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        if ceil_mode:
            raise NotImplementedError("MaxPool2d: ceil_mode=True is not implemented (the output size rounds down)")
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class AvgPool2d(Module):
    """The mean of each kernel_size window; padded zeros count in the mean (count_include_pad=True)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__()
        if ceil_mode:
            raise NotImplementedError("AvgPool2d: ceil_mode=True is not implemented (the output size rounds down)")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

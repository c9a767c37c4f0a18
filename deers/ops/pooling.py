"""max_pool2d and avg_pool2d, PyTorch's F.max_pool2d / F.avg_pool2d on (N, C, H, W) or (C, H, W).

Both read the windows of the padded input as a strided view (deers/ops/windows.py) and reduce
each window; both backwards send each window's gradient back with col2im. Max pooling pads with
-inf (padding never wins), average pooling with zeros that count in the divisor
(count_include_pad=True, PyTorch's default). The output size rounds down (ceil_mode=False), and
the padding is at most half the kernel, as PyTorch requires.
"""
from __future__ import annotations

import math

from ..array import NDArray
from ..autograd import Op
from ..dtype import i64
from ..errors import DTypeError, ShapeError, describe
from ..tensor import Tensor, apply
from .conv import as_tuple
from .shape import reshape
from .windows import Padding, Pair, col2im, crop, output_size, pad, window_at, windows


class MaxPool2d(Op):
    """y[n, c, oh, ow] = the largest element of window (oh, ow); its gradient goes to that element
    (the first one, in row-major window order, when several tie, as in PyTorch).

    The windows are walked one kernel offset (i, j) at a time: each offset's elements for every
    output position are one strided view, so the running maximum and the offset that holds it
    are kh*kw element-wise passes over (N, C, OH, OW) arrays, with no window copy."""

    name = "max_pool2d"

    def __init__(self, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair):
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation

    def forward(self, x):
        kh, kw = self.kernel
        xp = pad(x, self.padding, -math.inf)  # (N, C, Hp, Wp)
        self.x_shape, self.padded_shape = x.shape, xp.shape
        oh, ow = windows(xp, self.kernel, self.stride, self.dilation).shape[4:]
        best = window_at(xp, (0, 0), (oh, ow), self.stride, self.dilation).copy()  # (N, C, OH, OW)
        where = NDArray.full(best.shape, 0, i64, x.device)  # the offset i * kw + j holding the maximum
        for k in range(1, kh * kw):
            candidate = window_at(xp, divmod(k, kw), (oh, ow), self.stride, self.dilation)
            larger = candidate.binary("gt", best)  # strictly: on a tie the earlier offset stays
            best = larger.where(candidate, best)
            if self.needs(0):
                where = larger.where(NDArray.full((), k, i64, x.device), where)
        self.where = where if self.needs(0) else None
        return best

    def backward(self, grad):  # dy/dx = 1 at each window's (first) maximum, 0 elsewhere
        kh, kw = self.kernel
        n, c, oh, ow = grad.shape
        zero = NDArray.full((), 0, grad.dtype, grad.device)
        spread = NDArray.empty((n, c, kh, kw, oh, ow), grad.dtype, grad.device)
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            won = self.where.binary("eq", NDArray.full((), k, i64, grad.device))  # (N, C, OH, OW) bool
            spread.select(2, i).select(2, j).assign(won.where(grad, zero))
        return (crop(col2im(spread, self.padded_shape, self.stride, self.dilation), self.padding, self.x_shape),)


class AvgPool2d(Op):
    """y[n, c, oh, ow] = sum(window (oh, ow)) / divisor: kh*kw, or with count_include_pad=False the
    number of the window's elements that are not padding. Each element of a window gets grad / divisor."""

    name = "avg_pool2d"

    def __init__(self, kernel: Pair, stride: Pair, padding: Padding, count_include_pad: bool):
        self.kernel, self.stride, self.padding, self.count_include_pad = kernel, stride, padding, count_include_pad

    def forward(self, x):
        xp = pad(x, self.padding, 0.0)  # (N, C, Hp, Wp)
        self.x_shape, self.padded_shape = x.shape, xp.shape
        sums = windows(xp, self.kernel, self.stride, (1, 1)).reduce("sum", (2, 3), keepdim=False)  # (N, C, OH, OW)
        if self.count_include_pad:
            self.divisor = NDArray.full((), self.kernel[0] * self.kernel[1], x.dtype, x.device)
        else:  # how many real elements each window holds: the same pooling over ones, padded with zeros
            ones = pad(NDArray.full((1, 1) + x.shape[2:], 1, x.dtype, x.device), self.padding, 0.0)
            self.divisor = windows(ones, self.kernel, self.stride, (1, 1)).reduce("sum", (2, 3), keepdim=False)
        return sums / self.divisor  # (N, C, OH, OW)

    def backward(self, grad):  # y = sum(window) / divisor: d y / d x = 1 / divisor for every element of the window
        n, c, oh, ow = grad.shape
        kh, kw = self.kernel
        share = (grad / self.divisor).reshape((n, c, 1, 1, oh, ow)).broadcast_to((n, c, kh, kw, oh, ow))  # stride 0
        return (crop(col2im(share, self.padded_shape, self.stride, (1, 1)), self.padding, self.x_shape),)


def pool_arguments(op: str, x: Tensor, kernel_size, stride, padding, dilation=1) -> tuple:
    """(kernel, stride, padding (top, bottom, left, right), dilation, output (OH, OW)), checked."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ShapeError(f"{op}: expected a 3-d (C, H, W) or 4-d (N, C, H, W) input, got {describe(x)}")
    if not x.dtype.is_float:
        raise DTypeError(f"{op}: needs a floating-point tensor, got {describe(x)}")
    kernel = as_tuple(kernel_size, 2, op, "kernel_size", 1)
    stride = kernel if stride is None or stride == [] or stride == () else as_tuple(stride, 2, op, "stride", 1)
    pads = as_tuple(padding, 2, op, "padding", 0)
    dilation = as_tuple(dilation, 2, op, "dilation", 1)
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ShapeError(f"{op}: padding {pads} must be at most half the kernel {kernel} (PyTorch's rule)")
    out = tuple(output_size(size, k, s, d, p, p) for size, k, s, d, p in zip(x.shape[-2:], kernel, stride, dilation, pads))
    if any(o < 1 for o in out):
        raise ShapeError(f"{op}: the kernel {kernel} (dilation {dilation}, padding {pads}) does not fit in "
                         f"input {describe(x)}: output size {out}")
    return kernel, stride, (pads[0], pads[0], pads[1], pads[1]), dilation


def _batched(x: Tensor, op: Op) -> Tensor:
    """Apply a pooling op to (N, C, H, W), or to (C, H, W) as a batch of one."""
    if x.ndim == 3:
        y = apply(op, reshape(x, (1,) + x.shape))  # (1, C, OH, OW)
        return reshape(y, y.shape[1:])
    return apply(op, x)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """PyTorch's F.max_pool2d: the largest element of each window; stride defaults to the kernel size."""
    if ceil_mode:
        raise NotImplementedError("max_pool2d: ceil_mode=True is not implemented (the output size rounds down)")
    kernel, stride, pads, dilation = pool_arguments("max_pool2d", x, kernel_size, stride, padding, dilation)
    return _batched(x, MaxPool2d(kernel, stride, pads, dilation))


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """PyTorch's F.avg_pool2d: the mean of each window, padded zeros counted unless count_include_pad=False."""
    if ceil_mode:
        raise NotImplementedError("avg_pool2d: ceil_mode=True is not implemented (the output size rounds down)")
    kernel, stride, pads, _ = pool_arguments("avg_pool2d", x, kernel_size, stride, padding)
    return _batched(x, AvgPool2d(kernel, stride, pads, bool(count_include_pad)))

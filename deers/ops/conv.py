"""conv2d and conv1d, PyTorch's F.conv2d / F.conv1d: NCHW / NCL layouts, weights (out, in/groups, kh, kw).

How it is computed: im2col plus one GEMM. Every output element is a dot product of a weight row
with one window of the (padded) input, so

    columns = the windows of x laid out as a matrix   (G, Cg*kh*kw, N*OH*OW)
    y       = W @ columns                             (G, Og, Cg*kh*kw) @ (G, Cg*kh*kw, N*OH*OW)

and the backward is two GEMMs and the adjoint of the window gathering (col2im):

    dW       = dY @ columns^T                         (G, Og, N*OH*OW) @ (G, N*OH*OW, Cg*kh*kw)
    dcolumns = W^T @ dY                               (G, Cg*kh*kw, Og) @ (G, Og, N*OH*OW)
    dx       = col2im(dcolumns): each window's gradient summed back where the window was read

Why this way: the windows are a strided VIEW of the input (deers/ops/windows.py), so the only new
code is index arithmetic on a Layout, and all the arithmetic is the GEMM every backend already
has tuned. A direct loop over (n, o, c, i, j) would be the same sums in an order no BLAS can run.
The one copy is the column matrix (kh*kw times the input's size): made right before its GEMM and
dropped right after, in forward and again in backward (rebuilt from the saved input rather than
kept alive between them). Groups are the leading batch dim G of the GEMMs (depthwise: G = C).
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..tensor import Tensor, apply
from .shape import reshape
from .windows import Padding, Pair, col2im, crop, output_size, pad, windows


def columns(xp: NDArray, kernel: Pair, stride: Pair, dilation: Pair, groups: int) -> NDArray:
    """The im2col matrix of a padded input xp (N, C, Hp, Wp): (G, Cg*kh*kw, N*OH*OW), one copy
    of the strided window view."""
    n, c = xp.shape[:2]
    view = windows(xp, kernel, stride, dilation)  # (N, C, kh, kw, OH, OW), no copy
    kh, kw, oh, ow = view.shape[2:]
    view = view.reshape((n, groups, c // groups, kh, kw, oh, ow))  # split C into (G, Cg): still a view
    view = view.permute((1, 2, 3, 4, 0, 5, 6))  # (G, Cg, kh, kw, N, OH, OW)
    return view.reshape((groups, c // groups * kh * kw, n * oh * ow))  # the copy: (G, Cg*kh*kw, N*OH*OW)


class Conv2d(Op):
    """y = conv2d(x, W) + b for x (N, C, H, W), W (O, C/groups, kh, kw) and an optional b (O,), by
    im2col and one GEMM. The bias is added to the GEMM's result before it is laid out as NCHW,
    and its gradient sums dY over N*OH*OW where that axis is the contiguous one."""

    name = "conv2d"

    def __init__(self, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair, groups: int):
        self.kernel, self.stride, self.padding, self.dilation, self.groups = kernel, stride, padding, dilation, groups

    def forward(self, x, w, b=None):
        n, c = x.shape[:2]
        o, cg, kh, kw = w.shape
        g = self.groups
        xp = pad(x, self.padding, 0.0)  # (N, C, Hp, Wp): x itself without padding
        self.x_shape, self.padded_shape = x.shape, xp.shape
        self.xp = xp if self.needs(1) else None  # dW reads the columns, rebuilt from the padded input
        self.w = w if self.needs(0) else None  # dx reads W
        cols = columns(xp, (kh, kw), self.stride, self.dilation, g)  # (G, Cg*kh*kw, N*L)
        oh = output_size(xp.shape[2], kh, self.stride[0], self.dilation[0], 0, 0)
        ow = output_size(xp.shape[3], kw, self.stride[1], self.dilation[1], 0, 0)
        self.out_hw = (oh, ow)
        y = w.reshape((g, o // g, cg * kh * kw)).matmul(cols)  # (G, Og, N*L)
        if b is not None:
            y.add_(b.reshape((g, o // g, 1)))  # one value per output channel, in place
        y = y.reshape((g, o // g, n, oh, ow)).permute((2, 0, 1, 3, 4))  # (N, G, Og, OH, OW), a view
        return y.reshape((n, o, oh, ow))  # a copy into NCHW

    def backward(self, grad):  # y = W cols + b: dW = dY cols^T, dcols = W^T dY, dx = col2im(dcols), db = sum dY
        n, c = self.x_shape[:2]
        g = self.groups
        (oh, ow), o = self.out_hw, grad.shape[1]
        dy = grad.reshape((n, g, o // g, oh, ow)).permute((1, 2, 0, 3, 4))  # (G, Og, N, OH, OW)
        dy = dy.reshape((g, o // g, n * oh * ow))  # (G, Og, N*L), a copy
        kh, kw = self.kernel
        dx = dw = db = None
        if self.needs(2):
            db = dy.sum((2,)).reshape((o,))  # (G, Og) -> (O,)
        if self.xp is not None:
            cols = columns(self.xp, (kh, kw), self.stride, self.dilation, g)  # (G, Cg*kh*kw, N*L)
            dw = dy.matmul(cols.transpose(1, 2))  # (G, Og, Cg*kh*kw)
            dw = dw.reshape((o, c // g, kh, kw))
        if self.w is not None:
            cg = c // g
            wg = self.w.reshape((g, o // g, cg * kh * kw))  # (G, Og, Cg*kh*kw)
            dcols = wg.transpose(1, 2).matmul(dy)  # (G, Cg*kh*kw, N*L)
            dcols = dcols.reshape((g, cg, kh, kw, n, oh, ow)).permute((4, 0, 1, 2, 3, 5, 6))  # (N, G, Cg, kh, kw, OH, OW)
            dcols = dcols.reshape((n, c, kh, kw, oh, ow))  # G and Cg merge: a view
            dx = crop(col2im(dcols, self.padded_shape, self.stride, self.dilation), self.padding, self.x_shape)
        return dx, dw, db


# ---- argument checks: PyTorch's arguments, a ShapeError naming the op before any arithmetic -------------
def as_tuple(value, n: int, op: str, name: str, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of n ints, each >= minimum, as an n-tuple."""
    values = (value,) * n if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if values is None or len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{op}: {name} must be an int or {n} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return values


def conv_padding(padding, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
                 op: str) -> list[tuple[int, int]]:
    """(before, after) per spatial dim for padding given as int(s), "valid" or "same". "same" pads
    dilation * (k - 1) in all, the odd one at the end, as PyTorch does; it needs stride 1."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * len(kernel)
        if padding != "same":
            raise ValueError(f"{op}: padding must be an int, ints, 'same' or 'valid', got {padding!r}")
        if any(s != 1 for s in stride):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (stride {stride})")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in as_tuple(padding, len(kernel), op, "padding", 0)]


def check_conv(op: str, x: Tensor, weight: Tensor, bias: "Tensor | None", groups: int, spatial: int) -> None:
    """Ranks, dtypes, devices, channels and groups of a convolution's operands (spatial: 1 or 2 dims)."""
    for what, t in (("input", x), ("weight", weight), ("bias", bias)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{op}: {what} must be a Tensor, got {type(t).__name__}")
    if x.ndim not in (spatial + 1, spatial + 2):
        raise ShapeError(f"{op}: expected a {spatial + 1}-d (unbatched) or {spatial + 2}-d (batched) input, "
                         f"got {describe(x)}")
    if weight.ndim != spatial + 2:
        raise ShapeError(f"{op}: weight must be {spatial + 2}-d (out_channels, in_channels/groups, *kernel), "
                         f"got {describe(weight)}")
    for t in (weight, bias):
        if t is not None and t.device != x.device:
            raise DeviceError(f"{op}: operands on different devices: input {describe(x)}, {describe(t)}")
        if t is not None and t.dtype is not x.dtype:
            raise DTypeError(f"{op}: mixed dtypes: input {describe(x)}, {describe(t)}")
    if not x.dtype.is_float:
        raise DTypeError(f"{op}: needs floating-point tensors, got input {describe(x)}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    channels, out_channels = x.shape[-spatial - 1], weight.shape[0]
    if out_channels % groups:
        raise ShapeError(f"{op}: groups={groups} does not divide the weight's {out_channels} out_channels "
                         f"(weight {describe(weight)})")
    if channels % groups:
        raise ShapeError(f"{op}: groups={groups} does not divide the input's {channels} channels ({describe(x)})")
    if weight.shape[1] * groups != channels:
        raise ShapeError(f"{op}: input {describe(x)} has {channels} channels, but weight {describe(weight)} with "
                         f"groups={groups} expects {weight.shape[1] * groups}")
    if bias is not None and bias.shape != (out_channels,):
        raise ShapeError(f"{op}: bias {describe(bias)} must be ({out_channels},), one per out_channel")


def convolve(op: str, x: Tensor, weight: Tensor, bias: "Tensor | None", stride: Pair,
             pads: "list[tuple[int, int]]", dilation: Pair, groups: int) -> Tensor:
    """The checked 2-d convolution of a batched x (N, C, H, W), plus the bias (O,) per channel when given."""
    _, _, h, w = x.shape
    kh, kw = weight.shape[2:]
    (top, bottom), (left, right) = pads
    for size, k, d, before, after, dim in ((h, kh, dilation[0], top, bottom, "height"),
                                           (w, kw, dilation[1], left, right, "width")):
        if size + before + after < d * (k - 1) + 1:
            raise ShapeError(f"{op}: the kernel (dilated extent {d * (k - 1) + 1}) is larger than the padded "
                             f"input's {dim} {size + before + after}: input {describe(x)}, weight {describe(weight)}")
    conv = Conv2d((kh, kw), stride, (top, bottom, left, right), dilation, groups)
    return apply(conv, x, weight) if bias is None else apply(conv, x, weight, bias)  # (N, O, OH, OW)


def conv2d(x: Tensor, weight: Tensor, bias: "Tensor | None" = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """PyTorch's F.conv2d: x (N, C, H, W) or unbatched (C, H, W), weight (O, C/groups, kh, kw),
    bias (O,) or None; stride, dilation: int or pair; padding: int, pair, "same" or "valid".
    Out: (N, O, OH, OW), OH = floor((H + 2 ph - dh (kh - 1) - 1) / sh) + 1."""
    check_conv("conv2d", x, weight, bias, groups, 2)
    stride2 = as_tuple(stride, 2, "conv2d", "stride", 1)
    dilation2 = as_tuple(dilation, 2, "conv2d", "dilation", 1)
    pads = conv_padding(padding, weight.shape[2:], stride2, dilation2, "conv2d")
    if x.ndim == 3:  # unbatched (C, H, W): a batch of one, dropped again
        y = convolve("conv2d", reshape(x, (1,) + x.shape), weight, bias, stride2, pads, dilation2, groups)
        return reshape(y, y.shape[1:])
    return convolve("conv2d", x, weight, bias, stride2, pads, dilation2, groups)


def conv1d(x: Tensor, weight: Tensor, bias: "Tensor | None" = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """PyTorch's F.conv1d: x (N, C, L) or unbatched (C, L), weight (O, C/groups, k): conv2d over
    a height of 1 (x as (N, C, 1, L), the weight as (O, C/groups, 1, k); views)."""
    check_conv("conv1d", x, weight, bias, groups, 1)
    (s,) = as_tuple(stride, 1, "conv1d", "stride", 1)
    (d,) = as_tuple(dilation, 1, "conv1d", "dilation", 1)
    pads = [(0, 0)] + conv_padding(padding, weight.shape[2:], (s,), (d,), "conv1d")
    batched = reshape(x, x.shape[:-1] + (1, x.shape[-1])) if x.ndim == 3 else reshape(x, (1, x.shape[0], 1, x.shape[1]))
    w4 = reshape(weight, weight.shape[:2] + (1, weight.shape[2]))  # (O, Cg, k) -> (O, Cg, 1, k)
    y = convolve("conv1d", batched, w4, bias, (1, s), pads, (1, d), groups)  # (N, O, 1, OL)
    return reshape(y, y.shape[:2] + y.shape[3:]) if x.ndim == 3 else reshape(y, (y.shape[1], y.shape[3]))

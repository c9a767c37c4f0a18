"""Sliding windows over (N, C, H, W) arrays, the pieces convolution and pooling are made of.

    pad         a copy with a border of `value` around H and W (zeros for convolution and
                average pooling, -inf for max pooling)
    windows     every kernel window as a strided VIEW (no copy): element [n, c, i, j, oh, ow] is
                x[n, c, oh * sh + i * dh, ow * sw + j * dw]. The windows overlap, so the view reads
                some elements many times; it is a Layout like any other (its strides come straight
                from the input's), which is what "im2col as a strided view" means.
    col2im      the adjoint of `windows`: sum a gradient shaped like the windows back into an array
                shaped like the padded input, one strided add per kernel offset (i, j). For a fixed
                offset the windows do not overlap, so each add writes every element at most once
                (and windows that never overlap, stride >= kernel, take one copy).
    crop        the inside of a padded array (a view): the gradient of `pad`

Each is written with NDArray views and primitives, so every backend runs them unchanged.
"""
from __future__ import annotations

from ..array import NDArray
from ..layout import Layout

Pair = tuple[int, int]
Padding = tuple[int, int, int, int]  # (top, bottom, left, right)


def output_size(size: int, kernel: int, stride: int, dilation: int, pad_before: int, pad_after: int) -> int:
    """Windows that fit along one dim: floor((size + pads - dilation (kernel - 1) - 1) / stride) + 1."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def pad(x: NDArray, padding: Padding, value: float) -> NDArray:
    """x (N, C, H, W) inside a border of `value`: (N, C, top + H + bottom, left + W + right).
    x itself (no copy) when there is no padding."""
    top, bottom, left, right = padding
    if not any(padding):
        return x
    n, c, h, w = x.shape
    out = NDArray.full((n, c, top + h + bottom, left + w + right), value, x.dtype, x.device)
    out.narrow(2, top, h).narrow(3, left, w).assign(x)
    return out


def crop(padded: NDArray, padding: Padding, shape: tuple[int, ...]) -> NDArray:
    """The (N, C, H, W) inside of a padded array: a view."""
    top, _, left, _ = padding
    return padded.narrow(2, top, shape[2]).narrow(3, left, shape[3])


def windows(x: NDArray, kernel: Pair, stride: Pair, dilation: Pair) -> NDArray:
    """Every window of x (N, C, H, W) as a view (N, C, kh, kw, OH, OW), no copy (see the module doc)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh = output_size(h, kh, sh, dh, 0, 0)
    ow = output_size(w, kw, sw, dw, 0, 0)
    s_n, s_c, s_h, s_w = x.layout.strides
    layout = Layout((n, c, kh, kw, oh, ow), (s_n, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w), x.layout.offset)
    return x.as_layout(layout)


def window_at(x: NDArray, offset: Pair, out_size: Pair, stride: Pair, dilation: Pair) -> NDArray:
    """The elements that kernel offset (i, j) reads for every output position: a view
    (N, C, OH, OW) of x (N, C, H, W), x[n, c, oh * sh + i * dh, ow * sw + j * dw]."""
    (i, j), (oh, ow), (sh, sw), (dh, dw) = offset, out_size, stride, dilation
    n, c = x.shape[:2]
    s_n, s_c, s_h, s_w = x.layout.strides
    return x.as_layout(Layout((n, c, oh, ow), (s_n, s_c, sh * s_h, sw * s_w),
                              x.layout.offset + i * dh * s_h + j * dw * s_w))


def col2im(grad: NDArray, padded_shape: tuple[int, ...], stride: Pair, dilation: Pair) -> NDArray:
    """Sum grad (N, C, kh, kw, OH, OW) (any layout) into zeros of padded_shape (N, C, Hp, Wp):
    the transpose of `windows`. Each input element gets the gradient of every window that read it."""
    n, c, kh, kw, oh, ow = grad.shape
    out = NDArray.full(tuple(padded_shape), 0, grad.dtype, grad.device)
    if all(d * (k - 1) < s for k, s, d in zip((kh, kw), stride, dilation)):  # windows that never overlap
        windows(out, (kh, kw), stride, dilation).assign(grad)  # (2x2 pooling, stride 2): one copy
        return out
    for i in range(kh):
        for j in range(kw):
            target = window_at(out, (i, j), (oh, ow), stride, dilation)  # (N, C, OH, OW), disjoint for one (i, j)
            target.add_(grad.select(2, i).select(2, j))
    return out

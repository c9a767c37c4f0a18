"""Gather-style ops; their backward is the matching scatter-add."""
from __future__ import annotations

from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..layout import normalize_dim
from ..tensor import Tensor, apply


def _check_index(name: str, x: Tensor, index: Tensor) -> None:
    if index.dtype.name != "i64":
        raise DTypeError(f"{name}: index must be i64, got {describe(index)}")
    if index.device != x.device:
        raise DeviceError(f"{name}: index {describe(index)} is not on the device of {describe(x)}")


class IndexSelect(Op):
    name = "index_select"

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, a, index):
        self.shape, self.index = a.shape, index
        return a.index_select(self.dim, index)  # (..., *index.shape, ...)

    def backward(self, g):  # rows picked several times receive the sum of their gradients
        g = g.reshape(self.shape[:self.dim] + (self.index.numel,) + self.shape[self.dim + 1:])  # index flattened
        flat_index = self.index.reshape((self.index.numel,))  # (n,)
        return g.index_add_into(self.shape, self.dim, flat_index), None


def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """Pick whole slices along `dim` by an i64 index tensor; a 0-d index counts as one index, shape
    (1,), as in PyTorch (which takes 0-d and 1-d indices), and an index of more dims puts its
    shape in place of `dim` (as embedding does at dim 0)."""
    if isinstance(index, Tensor) and index.ndim == 0 and x.ndim > 0:
        index = index.reshape(1)
    return select_positions(x, dim, index)


def select_positions(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """x's slices along `dim` at the positions `index` of any shape: (..., *index.shape, ...)."""
    _check_index("index_select", x, index)
    d = normalize_dim(dim, x.ndim, "index_select")
    if x.ndim == 0:  # as PyTorch: one index (0) picks the element, the result is 0-d
        if index.numel() != 1:
            raise ShapeError(f"index_select: a 0-d tensor ({describe(x)}) takes one index, got {describe(index)}")
        return apply(IndexSelect(0), x.reshape(1), index.reshape(1)).reshape(())
    return apply(IndexSelect(d), x, index)


def embedding(weight: Tensor, ids: Tensor, padding_idx: int | None = None) -> Tensor:
    """weight[ids]: (V, D) rows picked by ids of shape (...) -> (..., D), like torch.embedding.

    With `padding_idx` (negative counts from V), the row at that id gets no gradient: its looked-up
    vectors pass through `where(ids != padding_idx, out, out.detach())`, the same values with the
    gradient stopped there."""
    from .compare import where

    if not isinstance(weight, Tensor) or not isinstance(ids, Tensor):
        raise TypeError(f"embedding: expected Tensors (weight, ids), got {type(weight).__name__} and "
                        f"{type(ids).__name__}")
    if weight.ndim != 2:
        raise ShapeError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got {describe(weight)}")
    out = select_positions(weight, 0, ids)  # (..., D)
    if padding_idx is None:
        return out
    if not isinstance(padding_idx, int) or not -weight.shape[0] <= padding_idx < weight.shape[0]:
        raise IndexError(f"embedding: padding_idx must be an int in [-{weight.shape[0]}, {weight.shape[0]}) for "
                         f"weight {describe(weight)}, got {padding_idx!r}")
    padding_idx %= weight.shape[0]
    keep = ids.ne(padding_idx).reshape(ids.shape + (1,))  # (..., 1)
    return where(keep, out, out.detach())


class Gather(Op):
    name = "gather"

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, a, index):
        self.shape, self.index = a.shape, index
        return a.gather(self.dim, index)

    def backward(self, g):  # scatter the gradient back to the gathered positions
        return g.scatter_add_into(self.shape, self.dim, self.index), None


def gather(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """out[i][j] = x[i][index[i][j]] (for dim=1), like torch.gather."""
    _check_index("gather", x, index)
    d = normalize_dim(dim, x.ndim, "gather")
    if index.numel() == 0:  # as PyTorch: an empty index of any shape gives an empty result of its shape
        return x.flatten().narrow(0, 0, 0).reshape(index.shape)
    if x.ndim == 0 and index.ndim <= 1:  # as PyTorch: a 0-d input is read as the 1-element vector
        return apply(Gather(0), x.reshape(1), index.reshape(index.numel())).reshape(index.shape)
    if index.ndim != x.ndim or any(s > t for i, (s, t) in enumerate(zip(index.shape, x.shape)) if i != d):
        raise ShapeError(f"gather: index {describe(index)} does not fit {describe(x)} at dim {d}")
    return apply(Gather(d), x, index)

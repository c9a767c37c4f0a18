"""Tensor indices in getitem (NumPy's "advanced indexing"): x[i, j], x[:, mask], x[idx, :, jdx].

getitem (deers/ops/shape.py) first makes the view for the ints, slices and new axes, then hands
the tensor indices here as i64 positions on the dims of that view. One index is one
index_select. Several are broadcast together to a shape B, their dims are moved to the front and
merged into one (a reshape), and the merged position p_1 * (s_2 ... s_k) + ... + p_k picks along
it with a single index_select, so the gradient is index_select's (index_add). PyTorch's placement
rule: when the tensor entries of the key are adjacent (ints may stand between them), B replaces
them in place; when a slice or None separates them, B comes first (x[idx, :, jdx] has shape
(*B, x.shape[1])). Unlike NumPy, an int is not an indexing entry: x[0, :, idx] is x[0][:, idx].
"""
from __future__ import annotations

import numpy as np

from ..errors import describe
from ..layout import broadcast_shapes
from ..tensor import Tensor
from .indexing import select_positions
from .shape import broadcast_to, permute, reshape


def adjacent(key: tuple) -> bool:
    """Whether the key's tensor entries stand together, with only ints (no slice, None or bool) between."""
    positions = [i for i, k in enumerate(key) if isinstance(k, Tensor)]
    between = key[positions[0]:positions[-1] + 1]
    return all(isinstance(k, Tensor) or (hasattr(k, "__index__") and not isinstance(k, (bool, np.bool_)))
               for k in between)


def _check_range(positions: Tensor, size: int, dim: int, x: Tensor) -> None:
    """IndexError for a position outside [0, size): merged positions would otherwise hide it
    (two reads of one number each)."""
    if positions.numel() and (positions.amin().item() < 0 or positions.amax().item() >= size):
        raise IndexError(f"getitem: an index for dim {dim} is out of range [-{size}, {size}) for {describe(x)}")


def take(x: Tensor, view: Tensor, picked: "list[tuple[Tensor, int, bool]]", in_place: bool) -> Tensor:
    """view indexed by `picked` = [(i64 positions, dim of view, checked)]; `in_place`: NumPy's adjacent case."""
    if len(picked) == 1 and in_place:
        positions, dim, _ = picked[0]
        return select_positions(view, dim, positions)
    dims = [d for _, d, _ in picked]
    shape = ()
    for positions, _, _ in picked:
        shape = broadcast_shapes(shape, positions.shape)
        if shape is None:
            raise IndexError(f"getitem: the index tensors {', '.join(describe(p) for p, _, _ in picked)} do not "
                             f"broadcast together (indexing {describe(x)})")
    sizes = [view.shape[d] for d in dims]
    merged = None
    stride = 1
    for (positions, d, checked), size in reversed(list(zip(picked, sizes))):
        if not checked:
            _check_range(positions, size, d, x)
        term = broadcast_to(positions, shape) * stride if stride != 1 else broadcast_to(positions, shape)
        merged = term if merged is None else merged + term
        stride *= size
    rest = [d for d in range(view.ndim) if d not in dims]
    front = permute(view, tuple(dims + rest)) if dims + rest != list(range(view.ndim)) else view
    flat = reshape(front, (stride,) + tuple(view.shape[d] for d in rest))  # (s_1 ... s_k, *rest)
    out = select_positions(flat, 0, merged)  # (*B, *rest)
    if not in_place or dims[0] == 0:
        return out
    b, lead = len(shape), dims[0]  # B goes back to where the indexed dims were: (*rest[:lead], *B, *rest[lead:])
    order = tuple(range(b, b + lead)) + tuple(range(b)) + tuple(range(b + lead, out.ndim))
    return permute(out, order)

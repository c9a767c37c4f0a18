"""einsum, written from sum, mul, permute, reshape and batched matmuls.

    einsum("bij,bjk->bik", a, b)     einsum("...ij->...ji", x)     einsum("ii", x)     einsum("i,i,i", u, v, w)

The equation is first made plain: "..." becomes fresh letters (right-aligned across operands, as
broadcasting aligns dims), a letter repeated within one operand is replaced by its diagonal
(x * eye summed over the second copy), and a dim of size 1 that meets a larger size of the same
letter elsewhere is squeezed away (broadcasting). Operands are then contracted left to right in
pairs. For a pair, each letter plays one role: in both inputs and the result a batch dim, in both
inputs only a contracted dim, in one input and the result a kept dim, in one input only a summed
dim (summed out first). Then A is permuted to (batch, a_kept, contracted) and B to (batch,
contracted, b_kept), each reshaped to 3-D, multiplied with one matmul, and the result reshaped and
permuted to the output's letter order. Every step is a recorded op, so the gradient needs nothing
of its own.
"""
from __future__ import annotations

import math
import string

from ..creation import eye
from ..errors import ShapeError, describe
from ..tensor import Tensor
from .linalg import matmul
from .reduce import sum
from .shape import permute, reshape

_LETTERS = string.ascii_letters


def _parse(equation: str, operands: tuple[Tensor, ...]) -> tuple[list[str], str]:
    """(input terms, output term) with "..." written out as fresh letters, checked against the operands."""
    eq = equation.replace(" ", "")
    inputs, arrow, output = eq.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum: {equation!r} names {len(terms)} operands, got {len(operands)}")
    if not operands:
        raise ValueError("einsum: needs at least one operand")
    for term in terms + ([output] if arrow else []):
        if not all(c in _LETTERS for c in term.replace("...", "")) or term.count("...") > 1:
            raise ValueError(f"einsum: subscripts must be letters with at most one '...', got {term!r} in {equation!r}")
    fresh = [c for c in _LETTERS if c not in eq]
    widest = 0  # the most dims any "..." stands for
    for term, x in zip(terms, operands):
        named = len(term.replace("...", ""))
        if ("..." in term and x.ndim < named) or ("..." not in term and x.ndim != named):
            raise ShapeError(f"einsum: {term!r} names {named} dims for an operand of {describe(x)}")
        widest = max(widest, x.ndim - named if "..." in term else 0)
    ellipsis = "".join(fresh[:widest])
    terms = [t.replace("...", ellipsis[widest - (x.ndim - len(t) + 3):] if "..." in t else "")
             for t, x in zip(terms, operands)]
    if arrow:
        output = output.replace("...", ellipsis)
    else:  # implicit output: the "..." dims, then the letters used once, in alphabetical order
        once = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1 and c not in ellipsis)
        output = ellipsis + "".join(once)
    if len(set(output)) != len(output) or any(c not in "".join(terms) for c in output):
        raise ValueError(f"einsum: output {output!r} must use distinct letters of the inputs in {equation!r}")
    return terms, output


def _diagonal(x: Tensor, term: str) -> tuple[Tensor, str]:
    """x with each letter repeated in `term` reduced to its diagonal: x_ii -> d_i = sum_j x_ij eye_ij."""
    while len(set(term)) != len(term):
        letter = next(c for c in term if term.count(c) > 1)
        first, second = term.index(letter), term.index(letter, term.index(letter) + 1)
        n = x.shape[first]
        if x.shape[second] != n:
            raise ShapeError(f"einsum: the repeated {letter!r} in {term!r} has sizes {n} and {x.shape[second]} "
                             f"for {describe(x)}")
        mask_shape = tuple(n if i in (first, second) else 1 for i in range(x.ndim))
        x = sum(x * reshape(eye(n, dtype=x.dtype, device=x.device), mask_shape), second)  # the diagonal along `first`
        term = term[:second] + term[second + 1:]
    return x, term


def _sizes(terms: list[str], operands: list[Tensor], equation: str) -> dict[str, int]:
    """letter -> size; sizes of one letter must agree or be 1 (broadcast)."""
    sizes: dict[str, int] = {}
    for term, x in zip(terms, operands):
        for letter, size in zip(term, x.shape):
            known = sizes.setdefault(letter, size)
            if known != size and 1 not in (known, size):
                raise ShapeError(f"einsum: dim {letter!r} has size {known} and {size} in {equation!r}")
            sizes[letter] = max(known, size)
    return sizes


def _squeeze_broadcast(x: Tensor, term: str, sizes: dict[str, int]) -> tuple[Tensor, str]:
    """x without the size-1 dims whose letter is larger elsewhere (they broadcast: the letter lives on
    in the other operands)."""
    drop = [i for i, c in enumerate(term) if x.shape[i] == 1 and sizes[c] > 1]
    if not drop:
        return x, term
    kept = tuple(s for i, s in enumerate(x.shape) if i not in drop)
    return reshape(x, kept), "".join(c for i, c in enumerate(term) if i not in drop)


def _sum_out(x: Tensor, term: str, keep: str) -> tuple[Tensor, str]:
    """x with the dims whose letters are not in `keep` summed away, and its remaining letters."""
    axes = tuple(i for i, c in enumerate(term) if c not in keep)
    if not axes:
        return x, term
    return sum(x, axes), "".join(c for c in term if c in keep)


def _to_order(x: Tensor, term: str, order: str) -> Tensor:
    """x permuted so its letters read as `order` (a permutation of term)."""
    axes = tuple(term.index(c) for c in order)
    return x if axes == tuple(range(len(axes))) else permute(x, axes)


def _pair(a: Tensor, ta: str, b: Tensor, tb: str, output: str, sizes: dict[str, int]) -> tuple[Tensor, str]:
    """The contraction of two operands keeping the letters of `output`; returns the result and its letters."""
    a, ta = _sum_out(a, ta, tb + output)  # letters of A alone and not in the output: summed first
    b, tb = _sum_out(b, tb, ta + output)
    batch = "".join(c for c in ta if c in tb and c in output)
    contracted = "".join(c for c in ta if c in tb and c not in output)
    a_kept = "".join(c for c in ta if c not in tb)
    b_kept = "".join(c for c in tb if c not in ta)

    def size(letters: str) -> int:
        return math.prod(sizes[c] for c in letters)

    a3 = reshape(_to_order(a, ta, batch + a_kept + contracted), (size(batch), size(a_kept), size(contracted)))
    b3 = reshape(_to_order(b, tb, batch + contracted + b_kept), (size(batch), size(contracted), size(b_kept)))
    product = matmul(a3, b3)  # (batch, a_kept, b_kept) flattened
    letters = batch + a_kept + b_kept
    return reshape(product, tuple(sizes[c] for c in letters)), letters


def einsum(equation: str, *operands: Tensor) -> Tensor:
    """Sum of products over the letters not in the output, like torch.einsum."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    terms, output = _parse(equation, operands)
    pairs = [_diagonal(x, term) for x, term in zip(operands, terms)]
    tensors, terms = [p[0] for p in pairs], [p[1] for p in pairs]
    sizes = _sizes(terms, tensors, equation)
    pairs = [_squeeze_broadcast(x, term, sizes) for x, term in zip(tensors, terms)]
    x, term = pairs[0]
    for i, (b, tb) in enumerate(pairs[1:], start=1):
        later = output + "".join(t for _, t in pairs[i + 1:])  # letters still needed after this pair
        x, term = _pair(x, term, b, tb, later, sizes)
    x, term = _sum_out(x, term, output)
    return _to_order(x, term, output)

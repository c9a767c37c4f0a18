"""einsum for one or two operands, written from sum, permute, reshape and one batched matmul.

    einsum("bij,bjk->bik", a, b)     einsum("ij->ji", x)     einsum("i,i", u, v)

For two operands, each letter plays one role: in both inputs and the output a batch dim, in both
inputs only a contracted dim, in one input and the output a kept dim, in one input only a summed
dim (summed out first). Then A is permuted to (batch, a_kept, contracted) and B to (batch,
contracted, b_kept), each reshaped to 3-D, multiplied with one matmul, and the result reshaped and
permuted to the output's letter order. Every step is a recorded op, so the gradient needs nothing
of its own. Not supported (each a clear error): "..." and a letter repeated within one operand
(diagonals); a size-1 dim does not broadcast against a larger one.
"""
from __future__ import annotations

from ..errors import ShapeError, describe
from ..tensor import Tensor
from .linalg import matmul
from .reduce import sum
from .shape import permute, reshape


def _parse(equation: str, operands: tuple[Tensor, ...]) -> tuple[list[str], str, dict[str, int]]:
    """(input terms, output term, letter -> size), checked against the operands."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise ValueError(f"einsum: '...' is not supported in {equation!r}; name every dim with a letter")
    inputs, arrow, output = eq.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum: {equation!r} names {len(terms)} operands, got {len(operands)}")
    if len(operands) not in (1, 2):
        raise ValueError(f"einsum: one or two operands are supported, got {len(operands)}; contract in pairs")
    sizes: dict[str, int] = {}
    for term, x in zip(terms, operands):
        if not all(c.isalpha() for c in term):
            raise ValueError(f"einsum: subscripts must be letters, got {term!r} in {equation!r}")
        if len(term) != x.ndim:
            raise ShapeError(f"einsum: {term!r} names {len(term)} dims for an operand of {describe(x)}")
        if len(set(term)) != len(term):
            raise ValueError(f"einsum: a letter repeated within {term!r} (a diagonal) is not supported")
        for letter, size in zip(term, x.shape):
            if sizes.setdefault(letter, size) != size:
                raise ShapeError(f"einsum: dim {letter!r} has size {sizes[letter]} and {size} in {equation!r}")
    if not arrow:  # implicit output: the letters used once, in alphabetical order
        output = "".join(sorted(c for c in sizes if _uses(terms, c) == 1))
    if len(set(output)) != len(output) or any(c not in sizes for c in output):
        raise ValueError(f"einsum: output {output!r} must use distinct letters of the inputs in {equation!r}")
    return terms, output, sizes


def _uses(terms: list[str], letter: str) -> int:
    """How many input terms use `letter`."""
    return len([t for t in terms if letter in t])


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


def einsum(equation: str, *operands: Tensor) -> Tensor:
    """Sum of products over the letters not in the output, like torch.einsum (one or two operands)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    terms, output, sizes = _parse(equation, operands)
    if len(operands) == 1:
        x, term = _sum_out(operands[0], terms[0], output)
        return _to_order(x, term, output)
    (a, b), (ta, tb) = operands, terms
    a, ta = _sum_out(a, ta, tb + output)  # letters of A alone and not in the output: summed first
    b, tb = _sum_out(b, tb, ta + output)
    batch = "".join(c for c in ta if c in tb and c in output)
    contracted = "".join(c for c in ta if c in tb and c not in output)
    a_kept = "".join(c for c in ta if c not in tb)
    b_kept = "".join(c for c in tb if c not in ta)

    def size(letters: str) -> int:
        n = 1
        for c in letters:
            n *= sizes[c]
        return n

    a3 = reshape(_to_order(a, ta, batch + a_kept + contracted), (size(batch), size(a_kept), size(contracted)))
    b3 = reshape(_to_order(b, tb, batch + contracted + b_kept), (size(batch), size(contracted), size(b_kept)))
    product = matmul(a3, b3)  # (batch, a_kept, b_kept) flattened
    product = reshape(product, tuple(sizes[c] for c in batch + a_kept + b_kept))
    return _to_order(product, batch + a_kept + b_kept, output)

"""Bitwise ops on integer and bool tensors — &, |, ^, ~ — one class per primitive of the vocabulary
(`BinaryFn.BITWISE_AND/OR/XOR`, `UnaryFn.BITWISE_NOT`), and the logical ops written from them.

On bool tensors they are the logical ops (True & False is False), as in PyTorch; on integers they
act on the two's-complement bits (~5 is -6; for u8, ~5 is 250). Operands are promoted like every
binary op (`operands.result_type`: a bool tensor & 3 is i64, u8 | i64 is i64), and a result type
that is a float raises DTypeError, as in PyTorch. They have no gradient (`differentiable = False`:
`apply` never records them).

logical_and / _or / _xor / _not take any dtype and give bool, like torch.logical_and: each operand
is first the mask `x != 0`.
"""
from __future__ import annotations

from ..backend import BinaryFn, UnaryFn
from ..dtype import bool_
from ..errors import DTypeError, describe
from ..tensor import Tensor
from .binary import BinaryOp, binary
from .operands import check_number, result_type
from .unary import UnaryOp, unary


class BitwiseOp(BinaryOp):
    """a OP b on the bits of integers (on bool: the logical OP); no gradient."""

    differentiable = False


class BitwiseAnd(BitwiseOp):
    fn = BinaryFn.BITWISE_AND


class BitwiseOr(BitwiseOp):
    fn = BinaryFn.BITWISE_OR


class BitwiseXor(BitwiseOp):
    fn = BinaryFn.BITWISE_XOR


class BitwiseNot(UnaryOp):
    """~x: every bit flipped (two's complement: ~x = -x - 1); on bool, not x. No gradient."""

    fn = UnaryFn.BITWISE_NOT
    differentiable = False


def _what(x) -> str:
    return describe(x) if isinstance(x, Tensor) else f"the Python number {x!r}"


def _require_integers(name: str, *operands) -> None:
    """DTypeError unless the operands promote to an integer or bool dtype (TypeError for a non-number)."""
    for x in operands:
        if not isinstance(x, Tensor):
            check_number(name, x)
    if result_type(*operands).is_float:
        raise DTypeError(f"{name}: needs integer or bool operands, got {' and '.join(_what(x) for x in operands)} "
                         "(PyTorch has no bitwise ops on floating-point values); compare to make masks")


def _bitwise(op: "type[BitwiseOp]", a: Tensor, b) -> Tensor:
    _require_integers(op.fn.value, a, b)
    return binary(op, a, b)


def bitwise_and(a: Tensor, b) -> Tensor:
    """a & b: the bits set in both (bool: a and b); b a Tensor or a Python int or bool."""
    return _bitwise(BitwiseAnd, a, b)


def bitwise_or(a: Tensor, b) -> Tensor:
    """a | b: the bits set in either (bool: a or b)."""
    return _bitwise(BitwiseOr, a, b)


def bitwise_xor(a: Tensor, b) -> Tensor:
    """a ^ b: the bits set in exactly one (bool: a != b)."""
    return _bitwise(BitwiseXor, a, b)


def bitwise_not(x: Tensor) -> Tensor:
    """~x: every bit flipped (bool: not x)."""
    _require_integers("bitwise_not", x)
    return unary(BitwiseNot, x)


# ---- logical ops: any dtype, a bool result (x counts as true where x != 0) ---------------------------
def _mask(x):
    """x as a bool mask: a bool tensor as it is, another tensor as x != 0, a number as bool(x)."""
    if isinstance(x, Tensor):
        return x if x.dtype is bool_ else x != 0
    check_number("logical op", x)
    return bool(x)


def logical_and(a: Tensor, b) -> Tensor:
    """(a != 0) and (b != 0), element-wise, as bool."""
    return bitwise_and(_mask(a), _mask(b))


def logical_or(a: Tensor, b) -> Tensor:
    """(a != 0) or (b != 0), element-wise, as bool."""
    return bitwise_or(_mask(a), _mask(b))


def logical_xor(a: Tensor, b) -> Tensor:
    """(a != 0) != (b != 0), element-wise, as bool."""
    return bitwise_xor(_mask(a), _mask(b))


def logical_not(x: Tensor) -> Tensor:
    """x == 0, element-wise, as bool."""
    return bitwise_not(_mask(x))

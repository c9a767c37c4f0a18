"""The ops and the backend share one vocabulary: every primitive has exactly one op class, every op
class has a test, ops without a gradient are never recorded, and Python numbers are constants."""
import numpy as np
import pytest

import deers
from deers.backend import COMPARISONS, BinaryFn, ReduceFn, UnaryFn
from deers.backend.reference import ReferenceBackend
from deers.errors import DTypeError
from deers.layout import Layout
from deers.ops import binary, bitwise, compare, convert, reduce, unary
from test_ops import BINARY, UNARY

# Backend primitives the core ops compose instead of wrapping (x * x, 1 / sqrt(x)) or do not use.


def subclasses(base: type) -> list[type]:
    """Every class below `base` that names a primitive (`fn`), depth first."""
    found, stack = [], [base]
    while stack:
        for cls in stack.pop().__subclasses__():
            stack.append(cls)
            if "fn" in vars(cls):
                found.append(cls)
    return found


def test_every_unary_primitive_has_exactly_one_op_class():
    fns = [cls.fn for cls in subclasses(unary.UnaryOp)]
    assert len(fns) == len(set(fns)), "two op classes for one primitive"
    assert {f.value for f in fns} == {f.value for f in UnaryFn}
    assert {f.value for f in fns} <= set(UNARY), "every unary op class has a row in test_ops.UNARY"


def test_every_binary_primitive_has_exactly_one_op_class():
    fns = [cls.fn for cls in subclasses(binary.BinaryOp)]
    assert len(fns) == len(set(fns))
    assert {f.value for f in fns} == {f.value for f in BinaryFn} - COMPARISONS  # comparisons: compare.Compare
    assert {f.value for f in fns} <= set(BINARY)


def test_every_reduction_has_exactly_one_op_class():
    fns = [cls.fn for cls in subclasses(reduce.ReduceOp)]
    assert sorted(f.value for f in fns) == sorted(f.value for f in ReduceFn)


def test_min_and_max_are_two_classes_and_so_are_maximum_and_minimum():
    x, y = deers.randn(3).attach(), deers.randn(3)
    assert type(x.max()._op) is reduce.Max and type(x.min()._op) is reduce.Min
    assert type(x.maximum(y)._op) is binary.Maximum and type(x.minimum(y)._op) is binary.Minimum


@pytest.mark.parametrize("name, fn, op_class", [
    ("eq tensor", lambda x: x.eq(x * 2.0), compare.Compare),
    ("lt number", lambda x: x < 0.5, compare.Compare),
    ("ge reflected", lambda x: 0.5 <= x, compare.Compare),
    ("argmax", lambda x: x.argmax(), reduce.ArgMax),
    ("argmax dim", lambda x: x.argmax(1, keepdim=True), reduce.ArgMax),
    ("to i64", lambda x: x.to_dtype(deers.i64), convert.Cast),
    ("long", lambda x: x.long(), convert.Cast),
    ("to bool", lambda x: x.to_dtype(deers.bool_), convert.Cast),
    ("and masks", lambda x: (x > 0) & (x < 0.5), bitwise.BitwiseAnd),
    ("or int", lambda x: x.long() | 3, bitwise.BitwiseOr),
    ("xor reflected", lambda x: True ^ (x > 0), bitwise.BitwiseXor),
    ("not", lambda x: ~(x > 0), bitwise.BitwiseNot),
    ("logical_and", lambda x: x.logical_and(x - 0.5), bitwise.BitwiseAnd),
])
def test_ops_without_a_gradient_run_through_apply_and_are_not_recorded(monkeypatch, name, fn, op_class):
    ran = []
    forward = op_class.forward
    monkeypatch.setattr(op_class, "forward", lambda self, *arrays: ran.append(self) or forward(self, *arrays))
    x = deers.randn(2, 3).attach()
    out = fn(x)
    assert ran and all(op.needs_input_grad == (False,) * len(op.needs_input_grad) for op in ran)
    assert not out.requires_grad and out._op is None and out._inputs == ()
    assert not out.dtype.is_float


def test_a_cast_between_float_types_is_recorded():
    x = deers.randn(2).attach()
    y = x.to_dtype(deers.f64)
    assert y.requires_grad and type(y._op) is convert.Cast


def test_a_python_number_is_a_broadcast_0d_constant_that_needs_no_gradient():
    w = deers.Var(deers.randn(3, 4))
    for out in (w + 2.0, w * 2, 2 - w, 2 ** w, 3 / w):
        constants = [t for t in out._inputs if t is not w]
        assert len(constants) == 1 and not constants[0].requires_grad
        assert constants[0].data.layout.strides == (0, 0) and constants[0].data.buffer_size() == 1
    assert type((w * 2.0)._op) is binary.Mul and (w * 2.0)._op.a is None  # x is not kept: d(2x)/d2 is not needed
    assert (2 - w)._inputs[1] is w and type((2 - w)._op) is binary.Sub  # the reverse form: the constant first


@pytest.mark.parametrize("name, fn, recorded", [
    ("square", lambda x: x.square(), binary.Mul),
    ("rsqrt", lambda x: x.rsqrt(), binary.Div),
    ("clamp", lambda x: x.clamp(-0.5, 0.5), compare.Where),
    ("maximum number", lambda x: x.maximum(0.0), compare.Where),
    ("mean", lambda x: x.mean(), binary.Mul),
    ("logsumexp", lambda x: x.logsumexp(1), binary.Add),
    ("logsumexp keepdim", lambda x: x.logsumexp(1, keepdim=True), binary.Add),
])
def test_composite_ops_record_only_other_ops(name, fn, recorded):
    out = fn(deers.tensor(np.array([[0.5, 1.0, 2.0]])).attach())
    op = out._op
    while type(op).__name__ == "Reshape":  # keepdim=False squeezes after the last op
        op = out._inputs[0]._op
    assert type(op) is recorded


@pytest.mark.parametrize("cls", subclasses(unary.UnaryOp), ids=lambda cls: cls.fn.value)
def test_float_only_ops_say_so_in_their_class(cls):
    """An op class is float_only exactly when the reference backend's function of its primitive
    refuses integer data (exp of an i64 would be a float); such an op raises DTypeError first."""
    oracle = ReferenceBackend()
    try:
        oracle.unary(cls.fn.value, oracle.from_numpy(np.arange(-2, 3), deers.i64), Layout((5,)))
        refused = False
    except TypeError:
        refused = True
    assert cls.float_only == refused
    if cls.float_only:
        with pytest.raises(DTypeError, match=cls.fn.value):
            getattr(deers.tensor([1, 2, 3]), cls.fn.value)()


def test_division_promotes_and_other_binary_ops_keep_the_dtype():
    # issue 13: integer operands promote instead of raising; true division computes in the default float
    assert binary.Div.float_result and not binary.Pow.float_result and not binary.Mul.float_result


def test_bitwise_ops_are_one_class_each_beside_the_arithmetic_ones():
    x, y = deers.tensor([6, -3]), deers.tensor([3, 5])
    assert all(issubclass(cls, binary.BinaryOp) and not cls.differentiable
               for cls in (bitwise.BitwiseAnd, bitwise.BitwiseOr, bitwise.BitwiseXor))
    assert issubclass(bitwise.BitwiseNot, unary.UnaryOp) and not bitwise.BitwiseNot.differentiable
    assert binary.FloorDivide.differentiable and binary.Remainder.differentiable  # // has a zero gradient
    assert (x // y).numpy().tolist() == [2, -1] and (x % y).numpy().tolist() == [0, 2]

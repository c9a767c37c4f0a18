"""Data types: a small value object per dtype, mapped to NumPy's for host transfer.

NumPy itself has no bfloat16, so the CPU backend stores bf16 through the type of the optional
`ml_dtypes` package (extra `bf16`). `deers.bf16` is a DType object either way, so code that names
it never sees None; without ml_dtypes, the first use that needs its NumPy type (allocating on
the CPU, a host transfer, a cast) raises a DTypeError naming the extra, instead of silently
falling back to another dtype.
"""
from __future__ import annotations

import numpy as np

from .errors import DTypeError


class DType:
    """A tensor element type: its name, NumPy equivalent, whether it is floating point, and whether
    it is a 16-bit float (f16/bf16), which the backends compute in f32 and round once."""

    __slots__ = ("name", "_numpy", "is_float", "is_half", "itemsize", "missing")

    def __init__(self, name: str, numpy_dtype: "np.dtype | None", is_float: bool, itemsize: int = 0,
                 missing: str = ""):
        self.name = name
        self._numpy = None if numpy_dtype is None else np.dtype(numpy_dtype)
        self.is_float = is_float
        self.itemsize = self._numpy.itemsize if self._numpy is not None else itemsize
        self.is_half = is_float and self.itemsize == 2
        self.missing = missing  # why the NumPy type is unavailable ("" when it is available)

    @property
    def available(self) -> bool:
        """Whether this dtype can be used here (bf16 needs the optional ml_dtypes package)."""
        return self._numpy is not None

    @property
    def numpy(self) -> np.dtype:
        """The NumPy dtype that stores it on the host; DTypeError when its package is missing."""
        if self._numpy is None:
            raise DTypeError(self.missing)
        return self._numpy

    def __repr__(self) -> str:
        return f"deers.{self.name}"

    def __reduce__(self):
        return (as_dtype, (self.name,))


f16 = DType("f16", np.float16, True)
f32 = DType("f32", np.float32, True)
f64 = DType("f64", np.float64, True)
i64 = DType("i64", np.int64, False)
bool_ = DType("bool", np.bool_, False)
u8 = DType("u8", np.uint8, False)

BF16_MISSING = "dtype bf16 needs the optional package ml_dtypes: pip install 'deers[bf16]'"
try:
    import ml_dtypes

    bf16 = DType("bf16", ml_dtypes.bfloat16, True)
except ImportError:  # optional: pip install deers[bf16]; the object exists and says so when used
    bf16 = DType("bf16", None, True, itemsize=2, missing=BF16_MISSING)

ALL_DTYPES = [d for d in (f16, f32, f64, i64, bool_, u8, bf16) if d.available]  # the usable ones
_BY_NAME = {d.name: d for d in ALL_DTYPES}
_BY_NAME.update({"float16": f16, "float32": f32, "float64": f64, "int64": i64, "bool_": bool_,
                 "uint8": u8, "half": f16, "float": f32, "double": f64, "long": i64})
if bf16.available:
    _BY_NAME["bfloat16"] = bf16
_BY_NUMPY = {d.numpy: d for d in ALL_DTYPES}


def as_dtype(value: "DType | str | np.dtype | type") -> DType:
    """Accept a DType, a name ("f32", "float32", "bf16") or a NumPy dtype."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        if value in _BY_NAME:
            return _BY_NAME[value]
        if value in ("bf16", "bfloat16"):  # named as a string: say at once that it cannot be used
            raise DTypeError(BF16_MISSING)
        if value in ("cpu", "mps", "gpu") or value.startswith("cuda"):
            raise DTypeError(f"{value!r} is a device, not a dtype; expected one of {sorted(_BY_NAME)}")
        raise DTypeError(f"unknown dtype {value!r}; expected one of {sorted(_BY_NAME)}")
    npd = np.dtype(value)
    if npd in _BY_NUMPY:
        return _BY_NUMPY[npd]
    if npd.kind in "iu":
        return i64
    raise DTypeError(f"unsupported NumPy dtype {npd}")


def is_dtype_name(value: str) -> bool:
    """Whether a string names a dtype (bf16 included, even without its package)."""
    return value in _BY_NAME or value in ("bf16", "bfloat16")


def is_half_numpy(np_dtype: np.dtype) -> bool:
    """Whether a backend buffer's NumPy dtype is f16 or bf16 (the backends' "compute in f32" rule)."""
    return np_dtype.itemsize == 2 and np_dtype.kind not in "biu"


def default_float() -> DType:
    return f32


# ---- type promotion (PyTorch's): one table, read by operands.result_type for every op -----------
# Each dtype's category (bool < integer < floating) and rank inside it. Two dtypes of one category
# promote to the higher rank; across categories, to the one of the higher category. The only pair
# of equal rank is f16 and bf16, which meet in f32 (neither holds the other), as in PyTorch.
PROMOTION_ORDER: dict[str, tuple[int, int]] = {
    "bool": (0, 0),
    "u8": (1, 0), "i64": (1, 1),
    "f16": (2, 0), "bf16": (2, 0), "f32": (2, 1), "f64": (2, 2),
}


def promote_types(a: DType, b: DType) -> DType:
    """The dtype that both a and b convert to in an operation between two tensors (torch.promote_types)."""
    if a is b:
        return a
    ka, kb = PROMOTION_ORDER[a.name], PROMOTION_ORDER[b.name]
    if ka == kb:  # f16 with bf16
        return f32
    return a if ka > kb else b


def category(dtype: DType) -> int:
    """0 for bool, 1 for integers, 2 for floating point."""
    return PROMOTION_ORDER[dtype.name][0]


def can_cast(source: DType, target: DType) -> bool:
    """Whether an in-place op may write a result of `source` into a tensor of `target` (PyTorch's
    rule: never down a category, so no float into an integer tensor, no integer into a bool one)."""
    return category(source) <= category(target)

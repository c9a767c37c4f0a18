"""Data types: a small value object per dtype, mapped to NumPy's for host transfer.

bf16 is available when the optional `ml_dtypes` package is installed (extra `bf16`);
NumPy itself has no bfloat16, so the CPU backend stores it through ml_dtypes' type.
"""
from __future__ import annotations

import numpy as np


class DType:
    """A tensor element type: its name, NumPy equivalent, whether it is floating point, and whether
    it is a 16-bit float (f16/bf16), which the backends compute in f32 and round once."""

    __slots__ = ("name", "numpy", "is_float", "is_half", "itemsize")

    def __init__(self, name: str, numpy_dtype: np.dtype, is_float: bool):
        self.name = name
        self.numpy = np.dtype(numpy_dtype)
        self.is_float = is_float
        self.itemsize = self.numpy.itemsize
        self.is_half = is_float and self.itemsize == 2

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

try:
    import ml_dtypes

    bf16: DType | None = DType("bf16", ml_dtypes.bfloat16, True)
except ImportError:  # optional: pip install deers[bf16]
    bf16 = None

ALL_DTYPES = [d for d in (f16, f32, f64, i64, bool_, u8, bf16) if d is not None]
_BY_NAME = {d.name: d for d in ALL_DTYPES}
_BY_NAME.update({"float16": f16, "float32": f32, "float64": f64, "int64": i64, "bool_": bool_,
                 "uint8": u8, "half": f16, "float": f32, "double": f64, "long": i64})
if bf16 is not None:
    _BY_NAME["bfloat16"] = bf16
_BY_NUMPY = {d.numpy: d for d in ALL_DTYPES}


def as_dtype(value: "DType | str | np.dtype | type") -> DType:
    """Accept a DType, a name ("f32", "float32", "bf16") or a NumPy dtype."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        if value in _BY_NAME:
            return _BY_NAME[value]
        if value in ("bf16", "bfloat16"):
            raise TypeError("dtype bf16 needs the optional package ml_dtypes: pip install 'deers[bf16]'")
        raise TypeError(f"unknown dtype {value!r}; expected one of {sorted(_BY_NAME)}")
    npd = np.dtype(value)
    if npd in _BY_NUMPY:
        return _BY_NUMPY[npd]
    if npd.kind in "iu":
        return i64
    raise TypeError(f"unsupported NumPy dtype {npd}")


def is_half_numpy(np_dtype: np.dtype) -> bool:
    """Whether a backend buffer's NumPy dtype is f16 or bf16 (the backends' "compute in f32" rule)."""
    return np_dtype.itemsize == 2 and np_dtype.kind not in "biu"


def default_float() -> DType:
    return f32

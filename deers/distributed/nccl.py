"""The CUDA transport: NCCL collectives on CuPy device buffers.

One `NcclTransport` per GPU and process. Rank 0 asks NCCL for a unique id, MPI broadcasts it, and
every rank joins the NCCL communicator with it (ncclCommInitRank) — MPI only bootstraps, the
gradients themselves travel GPU to GPU. Collectives are enqueued on CuPy's current stream, the one
the CUDA backend computes on, so they are ordered after the kernels that produced the data.

Importing this module needs nothing beyond NumPy; CuPy is imported when a transport is created.
The pure mapping functions below (dtype and op names) are what the CPU-only tests check.
"""
from __future__ import annotations

from ..dtype import DType
from ..errors import DTypeError
from .comm import DistributedUnavailable

# deers dtype name -> the cupy.cuda.nccl constant (values from nccl.h's ncclDataType_t)
NCCL_DTYPES = {
    "f16": "NCCL_FLOAT16",
    "bf16": "NCCL_BFLOAT16",
    "f32": "NCCL_FLOAT32",
    "f64": "NCCL_FLOAT64",
    "i64": "NCCL_INT64",
    "u8": "NCCL_UINT8",
    "bool": "NCCL_UINT8",  # one byte per element; only broadcast uses it
}

# deers reduce op -> the cupy.cuda.nccl constant (ncclRedOp_t); mean is NCCL's average (NCCL >= 2.10)
NCCL_OPS = {"sum": "NCCL_SUM", "mean": "NCCL_AVG", "max": "NCCL_MAX", "min": "NCCL_MIN"}


def nccl_dtype_name(dtype: DType) -> str:
    """The NCCL data type that carries `dtype`, by its cupy.cuda.nccl constant name."""
    name = NCCL_DTYPES.get(dtype.name)
    if name is None:
        raise DTypeError(f"NCCL has no data type for deers.{dtype.name}")
    return name


def nccl_op_name(op: str) -> str:
    """The NCCL reduction for a deers reduce op ("sum", "mean", "max", "min")."""
    name = NCCL_OPS.get(op)
    if name is None:
        raise ValueError(f"NCCL all_reduce: op must be one of {tuple(NCCL_OPS)}, got {op!r}")
    return name


def _import_nccl():
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as exc:
        raise DistributedUnavailable(
            "all_reduce/broadcast of CUDA tensors needs CuPy with NCCL: pip install 'deers[cuda12]' "
            f"(or 'deers[cuda13]') ({exc})") from exc
    if not getattr(nccl, "available", True):
        raise DistributedUnavailable("CuPy was built without NCCL; install a CuPy wheel that ships NCCL")
    return cupy, nccl


def _constant(nccl, name: str) -> int:
    value = getattr(nccl, name, None)
    if value is None:
        raise DistributedUnavailable(f"this CuPy's NCCL bindings lack {name}; upgrade CuPy")
    return value


class NcclTransport:
    """An NCCL communicator for GPU `device_index` in a world of `size` ranks."""

    def __init__(self, mpi_comm, rank: int, size: int, device_index: int):
        self.cupy, self.nccl = _import_nccl()
        self.device_index = device_index
        unique_id = self.nccl.get_unique_id() if rank == 0 else None
        unique_id = mpi_comm.bcast(unique_id, root=0)  # a tuple of 128 ints, same on every rank
        with self.cupy.cuda.Device(device_index):
            self.comm = self.nccl.NcclCommunicator(size, unique_id, rank)

    def _stream(self) -> int:
        return self.cupy.cuda.get_current_stream().ptr

    def all_reduce(self, region, dtype: DType, op: str) -> None:
        """In-place allreduce of a contiguous 1-D CuPy array holding `dtype` elements."""
        datatype = _constant(self.nccl, nccl_dtype_name(dtype))
        reduction = _constant(self.nccl, nccl_op_name(op))
        ptr = region.data.ptr
        with self.cupy.cuda.Device(self.device_index):
            self.comm.allReduce(ptr, ptr, region.size, datatype, reduction, self._stream())

    def broadcast(self, region, dtype: DType, src: int) -> None:
        """In-place broadcast from rank `src` of a contiguous 1-D CuPy array."""
        datatype = _constant(self.nccl, nccl_dtype_name(dtype))
        ptr = region.data.ptr
        with self.cupy.cuda.Device(self.device_index):
            self.comm.bcast(ptr, region.size, datatype, src, self._stream())

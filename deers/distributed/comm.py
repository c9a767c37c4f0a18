"""The process group and its collectives: MPI for CPU tensors, NCCL (through CuPy) for CUDA tensors.

Each process of a job is one *rank* of a *world* of `world_size()` processes, started by an MPI
launcher (`mpirun -n 2 python train.py`). `init()` joins the world through mpi4py; without a
launcher it is a world of one, so the same script runs alone or under mpirun.

Collectives work in place, like `torch.distributed`: `all_reduce(t)` and `broadcast(t)` overwrite
the values of `t` (every rank ends with the same values) and return `t` itself. They act on values
only and are never recorded in the autograd graph. A contiguous tensor is reduced straight in its
backend buffer (zero-copy: NumPy for the CPU, CuPy device memory for CUDA); other views go through
one compact copy that is written back.

The group made by `init()` is kept in this module (the job-wide default group, as in
torch.distributed); before `init()` the process counts as rank 0 of a world of one.
"""
from __future__ import annotations

import numpy as np

from ..array import NDArray
from ..errors import DeersError, DTypeError, describe
from ..tensor import Tensor

REDUCE_OPS = ("sum", "mean", "max", "min")

INSTALL_HINT = ("pip install 'deers[distributed]' (mpi4py) and an MPI runtime, "
                "e.g. apt-get install openmpi-bin libopenmpi-dev")


class DistributedUnavailable(DeersError, RuntimeError):
    """mpi4py (or, for CUDA tensors, CuPy's NCCL) is not installed."""


class ProcessGroup:
    """The processes of one job: an MPI communicator plus, once a CUDA tensor is reduced, one NCCL
    communicator per GPU (created on first use; its unique id travels over MPI)."""

    def __init__(self, mpi_comm):
        self.mpi = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self.local_rank: int = _local_rank(mpi_comm)
        self._nccl: dict[int, object] = {}  # CUDA device index -> NcclTransport

    def nccl(self, device_index: int):
        """The NCCL transport for one GPU; every rank must reach this at the same point."""
        transport = self._nccl.get(device_index)
        if transport is None:
            from .nccl import NcclTransport

            transport = NcclTransport(self.mpi, self.rank, self.size, device_index)
            self._nccl[device_index] = transport
        return transport


def _local_rank(mpi_comm) -> int:
    """This process's index among the ranks on the same host (which GPU it should use).

    Splitting the communicator by shared memory is a collective, so it runs once, in init().
    """
    from mpi4py import MPI

    node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=mpi_comm.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


_state: dict[str, ProcessGroup | None] = {"group": None}  # set once by init()


def init() -> ProcessGroup:
    """Join the job's process group (MPI_Init through mpi4py); a second call returns the same group.

    Run under `mpirun -n N` this gives N ranks; run alone, a world of one.
    """
    if _state["group"] is not None:
        return _state["group"]
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedUnavailable(f"deers.distributed.init needs mpi4py: {INSTALL_HINT} ({exc})") from exc
    _state["group"] = ProcessGroup(MPI.COMM_WORLD)
    return _state["group"]


def is_initialized() -> bool:
    return _state["group"] is not None


def group() -> ProcessGroup:
    """The group made by `init()`; collectives need it."""
    if _state["group"] is None:
        raise RuntimeError("deers.distributed: call deers.distributed.init() before a collective")
    return _state["group"]


def rank() -> int:
    """This process's rank (0 before init())."""
    return 0 if _state["group"] is None else _state["group"].rank


def world_size() -> int:
    """How many processes the job has (1 before init())."""
    return 1 if _state["group"] is None else _state["group"].size


def is_main() -> bool:
    """True on rank 0: the one process that logs, samples text and writes checkpoints."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its host (0 before init()); use it to pick `cuda:{local_rank()}`."""
    return 0 if _state["group"] is None else _state["group"].local_rank


def barrier() -> None:
    """Wait until every rank reaches this call."""
    group().mpi.Barrier()


def all_reduce(tensor: Tensor, op: str = "mean") -> Tensor:
    """Reduce `tensor` across ranks *in place* (sum, mean, max or min) and return it.

    Every rank must call this with a tensor of the same shape and dtype.
    """
    all_reduce_array(tensor.data, op)
    return tensor


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite `tensor` on every rank *in place* with rank `src`'s values; returns it."""
    broadcast_array(tensor.data, src)
    return tensor


def broadcast_object(value, src: int = 0):
    """A picklable Python value from rank `src` (e.g. a run directory or a resume step)."""
    return group().mpi.bcast(value, root=src)


# ---- the array-level collectives (used by deers.distributed.ddp on its flat buckets) -----------
def all_reduce_array(array: NDArray, op: str = "mean") -> None:
    """In-place all-reduce of an NDArray's values: MPI on the CPU, NCCL on CUDA."""
    if op not in REDUCE_OPS:
        raise ValueError(f"all_reduce: op must be one of {REDUCE_OPS}, got {op!r}")
    if op == "mean" and not array.dtype.is_float:
        raise DTypeError(f"all_reduce(op='mean'): needs a floating-point tensor, got {describe(array)}")
    if array.dtype.name in ("bool", "u8"):
        raise DTypeError(f"all_reduce: cannot reduce {describe(array)}; cast it to i64 or a float first")
    g = group()
    _check_device(array, "all_reduce")
    region, write_back = _flat_region(array, "all_reduce")
    if array.device.kind == "cpu":
        _mpi_all_reduce(g.mpi, region, op, g.size)
    else:
        g.nccl(array.device.index).all_reduce(region, array.dtype, op)
    write_back()


def broadcast_array(array: NDArray, src: int = 0) -> None:
    """In-place broadcast of an NDArray's values from rank `src`."""
    g = group()
    if not 0 <= src < g.size:
        raise ValueError(f"broadcast: src must be a rank in [0, {g.size}), got {src}")
    _check_device(array, "broadcast")
    region, write_back = _flat_region(array, "broadcast")
    if array.device.kind == "cpu":
        g.mpi.Bcast(region.view(np.uint8), root=src)  # as bytes: any dtype, bf16 included
    else:
        g.nccl(array.device.index).broadcast(region, array.dtype, src)
    write_back()


def _check_device(array: NDArray, op_name: str) -> None:
    """CPU tensors go over MPI and CUDA tensors over NCCL; there is no transport for the others."""
    if array.device.kind not in ("cpu", "cuda"):
        raise DistributedUnavailable(f"{op_name}: no transport for {describe(array)}; move the tensor to cpu "
                                     "or cuda first")


def _flat_region(array: NDArray, op_name: str):
    """A 1-D backend array holding the values, and a function that writes it back into `array`.

    Contiguous arrays (any offset) give a slice of their own buffer (zero-copy, nothing to write
    back); other views go through one compact copy.
    """
    layout = array.layout
    if any(st == 0 and s > 1 for s, st in zip(layout.shape, layout.strides)):
        raise ValueError(f"{op_name}: cannot write in place into a broadcast view ({describe(array)}); "
                         "compact it first")
    region = array.flat_region()
    if region is not None:
        return region, _nothing
    region = array.compact().flat_region()

    def write_back() -> None:
        array.write_region(region)

    return region, write_back


def _nothing() -> None:
    return None


def _mpi_all_reduce(mpi_comm, region: np.ndarray, op: str, size: int) -> None:
    """Allreduce a contiguous NumPy array in place; f16/bf16 travel as f32 (MPI has no half sum)."""
    from mpi4py import MPI

    mpi_op = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    native = region.dtype in (np.float32, np.float64, np.int64)
    work = region if native else region.astype(np.float32)
    mpi_comm.Allreduce(MPI.IN_PLACE, work, op=mpi_op)
    if op == "mean":
        np.divide(work, work.dtype.type(size), out=work)
    if not native:
        region[...] = work.astype(region.dtype)

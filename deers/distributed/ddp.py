"""Data-parallel training: every rank holds a full replica, sees its own share of the data, and
averages gradients with the others before each optimizer step.

    dist.init()
    model = GPT(config)                                  # same seed on every rank ...
    dist.broadcast_parameters(model.parameters())        # ... and rank 0's values, to be sure
    deers.manual_seed(dist.seed_for_rank(seed))          # each rank now draws its own batches
    for step in range(steps):
        grads = loss_fn(model, *dataset.sample_batch(B, device)).backward()
        dist.all_reduce_grads(model.parameters(), grads)  # grads := mean over ranks
        optimizer.step(grads)                             # identical update on every rank

Averaging per-rank mean gradients over equal-sized local batches gives exactly the gradient of
the mean loss over the union of the batches, so W ranks with batch B train like one process with
batch W*B. Gradients are packed into a few flat buckets (one collective per bucket, not per
parameter) and the reduced values are handed back as views of the bucket.
"""
from __future__ import annotations

from contextlib import contextmanager
from math import prod
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from ..array import NDArray
from ..autograd import Grads
from ..creation import tensor
from ..device import Device
from ..dtype import DType, f64
from ..tensor import Tensor
from . import comm

DEFAULT_BUCKET_BYTES = 25 * 2**20  # as PyTorch's DDP: large enough to amortize latency, small enough to fit


@dataclass(frozen=True)
class Bucket:
    """Gradients packed back to back into one flat buffer: `indices` into the parameter list and
    each one's element `offsets` in the buffer."""

    dtype: DType
    device: Device
    indices: tuple[int, ...]
    offsets: tuple[int, ...]
    numel: int


def plan_buckets(entries: Sequence[tuple[int, DType, Device]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
                 ) -> list[Bucket]:
    """Group `(numel, dtype, device)` entries, in order, into buckets of one dtype and device.

    A bucket is closed when the next entry would take it past `bucket_bytes`; an entry bigger than
    that gets a bucket to itself. The plan depends only on the entries, so every rank (same model,
    same order) makes the same plan and the collectives line up.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"plan_buckets: bucket_bytes must be positive, got {bucket_bytes}")
    open_buckets: dict[tuple, list[int]] = {}  # (dtype name, device) -> indices of the bucket being filled
    groups: list[list[int]] = []  # every bucket, as its entry indices (open ones are filled in place)
    for index, (numel, dtype, device) in enumerate(entries):
        members = open_buckets.get((dtype.name, device))
        used = 0 if members is None else sum(entries[i][0] for i in members) * dtype.itemsize
        if members is None or used + numel * dtype.itemsize > bucket_bytes:  # open a new bucket
            members = open_buckets[(dtype.name, device)] = []
            groups.append(members)
        members.append(index)
    buckets = []
    for members in groups:  # ordered by first entry: the same order on every rank
        offsets, total = [], 0
        for i in members:
            offsets.append(total)
            total += entries[i][0]
        _, dtype, device = entries[members[0]]
        buckets.append(Bucket(dtype, device, tuple(members), tuple(offsets), total))
    return buckets


def all_reduce_grads(params: Iterable[Tensor], grads: Grads, op: str = "mean",
                     bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Grads:
    """Average (or sum) the gradients of `params` across ranks; `grads` is updated and returned.

    Parameters without a gradient are skipped: every rank must have gradients for the same
    parameters (as it does when every rank runs the same model). Each reduced gradient is stored
    back with `grads.set_array` as a view into its bucket's buffer. In a world of one `grads` is
    returned as it is (the mean over one rank is the identity).
    """
    if op not in comm.REDUCE_OPS:
        raise ValueError(f"all_reduce_grads: op must be one of {comm.REDUCE_OPS}, got {op!r}")
    if comm.group().size == 1:  # a world of one: every reduction is the identity, skip the copies
        return grads
    present = [p for p in params if grads.array(p) is not None]
    arrays = [grads.array(p) for p in present]
    plan = plan_buckets([(a.numel, a.dtype, a.device) for a in arrays], bucket_bytes)
    for bucket in plan:
        flat = _pack([arrays[i] for i in bucket.indices], bucket)
        comm.all_reduce_array(flat, op)
        for index, offset in zip(bucket.indices, bucket.offsets):
            shape = arrays[index].shape
            view = flat.narrow(0, offset, prod(shape)).reshape(shape)  # a view of the bucket, no copy
            grads.set_array(present[index], view)
    return grads


def _pack(arrays: list[NDArray], bucket: Bucket) -> NDArray:
    """Copy the arrays back to back into one fresh flat buffer (1 copy per gradient)."""
    flat = NDArray.empty((bucket.numel,), bucket.dtype, bucket.device)
    for array, offset in zip(arrays, bucket.offsets):
        flat.narrow(0, offset, array.numel).reshape(array.shape).assign(array)
    return flat


def broadcast_parameters(params: Iterable[Tensor], src: int = 0) -> None:
    """Give every rank rank `src`'s parameter values, in place (the Vars keep their buffers)."""
    for param in params:
        comm.broadcast_array(param.data, src)


def seed_for_rank(seed: int, rank: int | None = None) -> int:
    """The data seed of a rank: `seed + rank`, so each rank samples its own batches, reproducibly.

    Rank 0 keeps `seed`, so a single-process run with the same seed sees rank 0's stream.
    """
    return seed + (comm.rank() if rank is None else rank)


def shard_batch(batch: Tensor, rank: int | None = None, world_size: int | None = None) -> Tensor:
    """This rank's rows of a global batch: rows [r*B/W, (r+1)*B/W) of dim 0, as a view.

    The other way to split the data: every rank draws the same global batch (same seed) and
    keeps its shard, so the union of the shards is exactly what one process would see.
    """
    rank = comm.rank() if rank is None else rank
    world_size = comm.world_size() if world_size is None else world_size
    rows = batch.shape[0]
    if rows % world_size:
        raise ValueError(f"shard_batch: a global batch of {rows} rows does not split evenly over "
                         f"{world_size} ranks")
    local = rows // world_size
    return batch.narrow(0, rank * local, local)


def job_tokens_per_second(local_tokens: int, seconds: float) -> float:
    """Tokens per second of the whole job: every rank processed `local_tokens` in `seconds`."""
    return local_tokens * comm.world_size() / seconds


# ---- glue for a training loop: each works in a world of one too (no init() needed there) ------------
def device_for_rank(device: str) -> str:
    """Plain "cuda" becomes this rank's GPU, `cuda:{local_rank()}`; any other device is kept."""
    return f"cuda:{comm.local_rank()}" if device == "cuda" else device


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, tokenizes, writes caches), then the other ranks do,
    finding the files in place. Every rank must enter it."""
    if comm.world_size() > 1 and not comm.is_main():
        comm.barrier()  # wait for rank 0 to finish the block
    yield
    if comm.world_size() > 1 and comm.is_main():
        comm.barrier()  # release the others


def mean_over_ranks(value: float) -> float:
    """The mean of a number over all ranks (e.g. the training loss for the log line)."""
    if comm.world_size() == 1:
        return value
    return comm.all_reduce(tensor([value], dtype=f64), "mean").item()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank: ranks must agree to stop at the same step
    (Ctrl-C reaches each process at a slightly different time)."""
    if comm.world_size() == 1:
        return flag
    return comm.all_reduce(tensor([float(flag)], dtype=f64), "max").item() > 0

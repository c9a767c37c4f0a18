"""Data-parallel training across processes: MPI for CPU tensors, NCCL (through CuPy) for CUDA tensors.

    import deers.distributed as dist
    dist.init()                                   # mpirun -n 2 python train.py  (or alone: world of 1)
    dist.broadcast_parameters(model.parameters())
    grads = loss.backward()
    dist.all_reduce_grads(model.parameters(), grads)
    if dist.is_main(): print(...)

Importing this package needs neither mpi4py nor CuPy; `init()` needs mpi4py (the extra
`deers[distributed]`) and CUDA collectives need CuPy. See docs/distributed.md.
"""
from .comm import (DistributedUnavailable, ProcessGroup, all_reduce, all_reduce_array, barrier, broadcast,
                   broadcast_array, broadcast_object, group, init, is_initialized, is_main, local_rank, rank,
                   world_size)
from .ddp import (DEFAULT_BUCKET_BYTES, Bucket, all_reduce_grads, any_rank, broadcast_parameters, device_for_rank,
                  job_tokens_per_second, main_first, mean_over_ranks, plan_buckets, seed_for_rank, shard_batch)

__all__ = [
    "init", "is_initialized", "group", "ProcessGroup", "DistributedUnavailable",
    "rank", "world_size", "local_rank", "is_main",
    "all_reduce", "broadcast", "barrier", "broadcast_object", "all_reduce_array", "broadcast_array",
    "broadcast_parameters", "all_reduce_grads", "plan_buckets", "Bucket", "DEFAULT_BUCKET_BYTES",
    "seed_for_rank", "shard_batch", "job_tokens_per_second",
    "device_for_rank", "main_first", "mean_over_ranks", "any_rank",
]

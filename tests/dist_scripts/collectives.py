"""Run the collectives once per rank and save what each rank ends up with; tests/test_distributed.py
computes the expected values and compares.

    mpirun -n 2 python tests/dist_scripts/collectives.py OUT_DIR [--device cpu|cuda]

Every input is a known function of the rank, so the expected result of each reduction is known.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import deers
import deers.distributed as dist
from deers.array import NDArray
from deers.autograd import Grads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dist.init()
    r, world = dist.rank(), dist.world_size()
    device = f"cuda:{dist.local_rank()}" if args.device == "cuda" else args.device
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    results: dict[str, np.ndarray] = {"world": np.array(world), "rank": np.array(r),
                                      "local_rank": np.array(dist.local_rank())}

    def tensor(values, dtype):
        return deers.tensor(values, dtype=dtype, device=device)

    # sum and mean over rank-scaled inputs: rank r holds base * (r + 1)
    results["sum_f32"] = dist.all_reduce(tensor(base * (r + 1), deers.f32), "sum").numpy()
    results["mean_f64"] = dist.all_reduce(tensor(base * (r + 1), deers.f64), "mean").numpy()
    results["sum_i64"] = dist.all_reduce(tensor(base.astype(np.int64) * (r + 1), deers.i64), "sum").numpy()
    results["sum_f16"] = dist.all_reduce(tensor(base * (r + 1), deers.f16), "sum").numpy().astype(np.float64)
    results["max_f32"] = dist.all_reduce(tensor(base * (r + 1), deers.f32), "max").numpy()
    results["min_f32"] = dist.all_reduce(tensor(base * (r + 1), deers.f32), "min").numpy()

    # the tensor is reduced in place and returned: the same object, its own buffer changed
    same = tensor(base * (r + 1), deers.f32)
    results["in_place"] = np.array(dist.all_reduce(same, "sum") is same)
    results["in_place_values"] = same.numpy()

    # a non-contiguous view (transpose) goes through a compact copy that is written back
    transposed = tensor(base * (r + 1), deers.f32).transpose(0, 1)  # (4, 3), strides (1, 4)
    results["mean_transposed"] = dist.all_reduce(transposed, "mean").numpy()

    # a contiguous narrow view with an offset is reduced in place; the rest of the buffer is untouched
    whole = tensor(np.arange(10, dtype=np.float64) * (r + 1), deers.f32)
    dist.all_reduce(whole.narrow(0, 2, 5), "sum")
    results["narrow_whole"] = whole.numpy()

    # broadcast from the last rank, of a float and of an integer tensor
    results["bcast_f32"] = dist.broadcast(tensor(base + 100 * r, deers.f32), src=world - 1).numpy()
    results["bcast_i64"] = dist.broadcast(tensor(base.astype(np.int64) + 100 * r, deers.i64), src=world - 1).numpy()
    if deers.bf16.available:
        bf = dist.broadcast(tensor(base + 100 * r, deers.bf16), src=world - 1)
        results["bcast_bf16"] = bf.numpy().astype(np.float64)
        results["sum_bf16"] = dist.all_reduce(tensor(base * (r + 1), deers.bf16), "sum").numpy().astype(np.float64)
    results["bcast_object"] = np.array(dist.broadcast_object({"rank": r, "word": "hello"}, src=world - 1)["rank"])

    # bucketed gradient all-reduce: rank r's gradient of parameter k is (k + 1) * (r + 1) * ones
    shapes = [(3, 4), (5,), (2, 3, 2), (7,), (1,)]
    for name, bucket_bytes in (("grads_small_buckets", 40), ("grads_one_bucket", dist.DEFAULT_BUCKET_BYTES)):
        params = [deers.Var(deers.zeros(*s, device=device)) for s in shapes]
        grads = Grads()
        for k, p in enumerate(params):
            values = np.full(p.shape, (k + 1) * (r + 1), np.float32)
            grads.accumulate(p, NDArray.from_numpy(values, deers.f32, p.device))
        extra = deers.Var(deers.zeros(2, device=device))  # no gradient: skipped
        dist.all_reduce_grads(params + [extra], grads, op="mean", bucket_bytes=bucket_bytes)
        results[name] = np.concatenate([grads[p].numpy().reshape(-1) for p in params])
        results[name + "_has_extra"] = np.array(extra in grads)

    # broadcast_parameters: every rank ends with rank 0's values, in its own Var buffers
    params = [deers.Var(tensor(base * (r + 1), deers.f32)), deers.Var(tensor(np.ones(3) * r, deers.f32))]
    buffers = [p.data.buffer for p in params]
    dist.broadcast_parameters(params)
    results["bcast_params"] = np.concatenate([p.numpy().reshape(-1) for p in params])
    results["bcast_params_same_buffers"] = np.array(all(p.data.buffer is b for p, b in zip(params, buffers)))

    # a device with no transport (MLX's "mps") is refused with the operand described
    try:
        on_mps = deers.ones(2, device="mps")
    except deers.BackendUnavailable:  # MLX not installed
        on_mps = None
    if on_mps is not None:
        try:
            dist.all_reduce(on_mps)
        except dist.DistributedUnavailable as exc:
            results["mps_refused"] = np.array("shape (2,) f32 mps" in str(exc))

    # the training-loop glue
    results["mean_over_ranks"] = np.array(dist.mean_over_ranks(float(r + 1)))
    results["any_rank_last"] = np.array(dist.any_rank(r == world - 1))
    results["any_rank_none"] = np.array(dist.any_rank(False))
    marker = os.path.join(args.out, "written_by_rank0")
    with dist.main_first():  # rank 0 writes the file before any other rank enters
        if dist.is_main():
            time.sleep(0.2)  # without the ordering the other ranks would look before the file exists
            with open(marker, "w") as f:
                f.write("ok")
        results["main_first_saw_file"] = np.array(os.path.exists(marker))

    dist.barrier()
    np.savez(os.path.join(args.out, f"rank{r}.npz"), **results)


if __name__ == "__main__":
    main()
